"""The training optimiser (``make bench``): AdamW on torch's fused kernel (``pcmci.engine.optimizers.adam``, what
every trainer uses) against torch's default AdamW (a per-tensor loop on CPU, for-each on CUDA), side by side in one run, on the ``tiny`` baseline's
parameters: the optimiser step alone and a whole training step (forward, CE, backward, clip, step) on a batch of 8.

    .venv/bin/python -P -m pytest bench/bench_optimizer.py --benchmark-json=bench/results/cpu-$(date +%F)-optimizer.json
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pytest_benchmark.fixture import BenchmarkFixture

from pcmci.config import preset
from pcmci.engine.optimizers import adam
from pcmci.model import build_model

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _setup(impl: str) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Tensor]:
    cfg = preset("tiny")
    cfg.model.stages = []
    torch.manual_seed(0)
    model = build_model(cfg.model, ["a", "b", "c", "d", "e"], []).to(DEVICE).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = (adam(params, 1e-4, 0.05) if impl == "fused"
                 else torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05))  # torch's default path for these tensors
    frames = torch.rand(8, cfg.data.frames, 3, cfg.data.image_size, cfg.data.image_size, device=DEVICE)
    return model, optimizer, frames, torch.arange(8, device=DEVICE) % 5


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_adamw_step(benchmark: BenchmarkFixture, impl: str) -> None:
    benchmark.group = "adamw-step-tiny"
    model, optimizer, frames, target = _setup(impl)
    F.cross_entropy(model(frames)["logits"], target).backward()
    assert (impl == "fused") == bool(optimizer.defaults.get("fused"))

    def step() -> None:
        optimizer.step()
        _sync()

    benchmark(step)


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_train_step(benchmark: BenchmarkFixture, impl: str) -> None:
    benchmark.group = "train-step-tiny-B8"
    model, optimizer, frames, target = _setup(impl)

    def step() -> None:
        loss = F.cross_entropy(model(frames)["logits"], target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        _sync()

    benchmark.pedantic(step, rounds=30, iterations=1, warmup_rounds=3)
