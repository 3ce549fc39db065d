"""The trainers' optimiser (``pcmci.engine.optimizers``): fused where torch has the kernel, and the update it makes
against a float64 loop of the AdamW / Adam equations (Loshchilov & Hutter 2019; Kingma & Ba 2015)."""
from __future__ import annotations

import math

import pytest
import torch

from pcmci.engine.optimizers import adam, fusable


def _adam_loop(p0: list[list[float]], grads: list[list[list[float]]], lr: float, wd: float, decoupled: bool,
               b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> list[list[float]]:
    """Parameters after ``len(grads)`` steps, element by element in float64."""
    out = []
    for j, x0 in enumerate(p0):
        row = []
        for i, x in enumerate(x0):
            m = v = 0.0
            for t, g_step in enumerate(grads, start=1):
                g = g_step[j][i]
                if decoupled:
                    x -= lr * wd * x
                else:
                    g += wd * x
                m = b1 * m + (1 - b1) * g
                v = b2 * v + (1 - b2) * g * g
                x -= lr * (m / (1 - b1**t)) / (math.sqrt(v / (1 - b2**t)) + eps)
            row.append(x)
        out.append(row)
    return out


@pytest.mark.parametrize("kind", ["adamw", "adam"])
def test_update_matches_float64_loop(kind: str) -> None:
    torch.manual_seed(0)
    shapes = [(3, 4), (5,), (2, 2, 2)]
    params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    p0 = [p.detach().double().flatten().tolist() for p in params]
    grads = [[torch.randn(s) for s in shapes] for _ in range(5)]
    optimizer = adam(params, lr=1e-2, weight_decay=0.1, kind=kind)
    assert optimizer.defaults["fused"] is True  # CPU float32 tensors: the fused kernel
    assert isinstance(optimizer, torch.optim.AdamW if kind == "adamw" else torch.optim.Adam)
    for step in grads:
        for p, g in zip(params, step):
            p.grad = g.clone()
        optimizer.step()
    want = _adam_loop(p0, [[g.double().flatten().tolist() for g in step] for step in grads], 1e-2, 0.1,
                      kind == "adamw")
    for p, w in zip(params, want):
        # Each step moves a parameter by at most ~lr (|m_hat / sqrt(v_hat)| <= 1 for these gradients, 1e-2) and
        # float32 rounds every intermediate to 6e-8 relative: over 5 steps on values of order 1 the two paths
        # differ by a few float32 ulps of the parameter (~1e-7 each); 2e-6 is ten times that, while a wrong
        # bias correction or weight-decay placement moves a parameter by ~1e-3.
        torch.testing.assert_close(p.detach().double(), torch.tensor(w, dtype=torch.float64).view(p.shape),
                                   atol=2e-6, rtol=0)


def test_fusable() -> None:
    a = torch.zeros(2, requires_grad=True)
    assert fusable([a, torch.zeros(3, dtype=torch.float64)])
    assert not fusable([a, torch.zeros(3, dtype=torch.int64)])  # integer tensors have no Adam kernel
    assert not fusable([a, torch.zeros(2, device="meta")])  # two devices (and one without a fused kernel)
    assert not fusable([torch.zeros(2, device="meta")])


def test_unfused_device_falls_back() -> None:
    optimizer = adam([torch.nn.Parameter(torch.zeros(2, device="meta"))], lr=1e-3, weight_decay=0.0)
    assert not optimizer.defaults.get("fused")


def test_no_parameters_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match="no parameters to train"):
        adam([], lr=1e-3, weight_decay=0.0)
