"""Shared fixtures: a tiny model factory, one small synthetic dataset per test session, and the kernel tests'
device, dtypes and tolerances."""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from pcmci.config import preset
from pcmci.model import PCMCI, build_model

# The kernel tests' preamble: Triton runs on CUDA, or on CPU under TRITON_INTERPRET=1 (numpy, which has no bf16).
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
HALF = [torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
needs_triton = pytest.mark.skipif(
    DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1", reason="needs CUDA or TRITON_INTERPRET=1"
)

# (atol, rtol) of a kernel's result against the fp32 reference, by the dtype the kernel is fed. Both ops
# accumulate in fp32 whatever their inputs, so the error has two sources: fp32 rounding in the reductions and the
# rounding of inputs and stored results to the input dtype.
# - float32: unit roundoff u = 2^-24 = 6.0e-8. The longest reduction in the tests is a relation dot or key sum of
#   n <= 128 terms (d, e <= 64; N <= 70 keys), and a Sinkhorn log-sum-exp over <= 21 entries repeated for
#   <= 10 iterations (each iterate's error is damped, not amplified, by the next normalisation):
#   gamma_n = n u / (1 - n u) = 7.6e-6 relative, so rtol 1e-5. Entries that cancel to about zero need an
#   absolute bar: a plan entry is at most 1/max(R, S) <= 1/6 and its error at most 7.6e-6 of the row's mass
#   (1/R), i.e. about 1e-6 -> atol 1e-6.
# - float16: u = 2^-11 = 4.9e-4. A rounded cost C enters exp(-C/eps) with its error scaled by |C|/eps
#   (<= 2/0.3 = 6.7 in the half tests), a rounded q, k enter the softmax through q.k/sqrt(d) (|q.k|/sqrt(d)
#   <= ~5), so an entry carries up to about 2 * 6.7 * u = 6.5e-3 relative error from its inputs, plus u from the
#   stored result: rtol 2e-2 (3x margin). atol = 4u = 2e-3 for entries near zero.
# - bfloat16: u = 2^-8 = 3.9e-3, 8x float16's u: the same arithmetic gives 8x float16's bars.
TOLERANCES = {
    torch.float32: (1e-6, 1e-5),
    torch.float16: (2e-3, 2e-2),
    torch.bfloat16: (1.6e-2, 1.6e-1),
}
# A gradient through a recomputing (relation) or replaying (Sinkhorn) backward chains the forward's reductions
# with the backward's and subtracts nearly equal terms (p (dp - rowdot); the adjoint of a normalisation), which
# cancels about log2(10) bits: gradients are held to 10x the forward's bars.
GRADIENT = 10


def tolerance(dtype: torch.dtype, gradient: bool = False) -> dict[str, float]:
    """``atol``/``rtol`` keywords for ``torch.testing.assert_close`` from ``TOLERANCES`` (x ``GRADIENT``)."""
    atol, rtol = TOLERANCES[dtype]
    factor = GRADIENT if gradient else 1
    return {"atol": atol * factor, "rtol": rtol * factor}


CLASSES = ["make cereal", "make tea", "fry egg"]
ACTIONS = ["pour", "stir", "crack"]


@pytest.fixture(autouse=True)
def _quiet_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)


def _tiny_model(stages: list[str] | None = None, **head: float) -> PCMCI:
    """A tiny PCMCI with fitted dictionaries, for forward/backward checks."""
    torch.manual_seed(0)
    cfg = preset("tiny").model
    if stages is not None:
        cfg.stages = stages
    for key, value in head.items():
        setattr(cfg.head, key, value)
    model = build_model(cfg, CLASSES, ACTIONS)
    model.build_dictionaries([torch.rand(4, 8, 3, 64, 64) for _ in range(2)])
    return model


@pytest.fixture
def tiny_model() -> Callable[..., PCMCI]:
    """Factory: ``tiny_model(stages=[...], aux_weight=...)``."""
    return _tiny_model


@pytest.fixture(scope="session")
def synthetic_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic confounded set (VP9); returns its manifest path."""
    from pcmci.data.synthetic import synthesize

    return synthesize(tmp_path_factory.mktemp("synth"), seed=0, n_train=24, n_test=12, progress=False)


def tiny_run_overrides(manifest: Path, out: Path, *extra: str) -> list[str]:
    """``pcmci train tiny`` overrides for a short run (2 epochs of batch 6) on the synthetic set; IVC mediator-only,
    the former default that ``fixtures/pre_split_formats.json`` (the checkpoint format) was recorded with."""
    return [f"data.manifest={manifest}", f"run.out_dir={out}", "optim.epochs=2", "optim.batch_size=6",
            "run.progress=false", "model.dictionaries.clips=16", "model.dictionaries.refit_every=0",
            "model.ivc.mediator_only=true", *extra]


@pytest.fixture(scope="session")
def tiny_run(synthetic_set: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted single-process run of ``tiny_run_overrides`` with one thread (as the subprocess runs it
    is compared with); returns its ``run.out_dir``."""
    from engine_runs import one_thread

    from pcmci.config import load_config
    from pcmci.engine.train import train

    out = tmp_path_factory.mktemp("tiny-run")
    with one_thread():
        train(load_config("tiny", tiny_run_overrides(synthetic_set, out)))
    return out
