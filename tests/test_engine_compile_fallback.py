"""A compile failure cannot kill a run: ``FallbackCompiled`` retries without Inductor's coalescing tiling analysis,
then eager, with one warning naming the cause; ``pcmci train`` and the profiler's compiled step go through it.

The failure is mocked where Inductor fails on the GPU: its graph lowering raises the assertion of
``tiling_utils.solve_for_tiling`` while ``triton.coalesce_tiling_analysis`` is on (the C++ CPU backend never runs
that analysis, and upstream's function-level repro, pytorch#191603, passes on the torch installed here).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import tiny_run_overrides
from torch import nn
from torch._inductor.graph import GraphLowering

from pcmci.config import load_config
from pcmci.engine import compile as fallback
from pcmci.engine.train import train
from pcmci.profiling.timing import measure_train_step


@pytest.fixture(autouse=True)
def _no_compile_caches() -> Iterator[None]:
    """Lower every graph: one served from Inductor's on-disk caches (an earlier run) is never lowered again."""
    with torch._inductor.config.patch(force_disable_caches=True):
        yield


def _failing_lowering(monkeypatch: pytest.MonkeyPatch, always: bool) -> list[bool]:
    """Make Inductor's ``GraphLowering.compile_to_module`` raise the tiling assertion while the coalescing
    analysis is on (or ``always``); returns the analysis flag seen by each lowering."""
    seen: list[bool] = []
    real = GraphLowering.compile_to_module

    def lowering(self: GraphLowering, *args: Any, **kwargs: Any) -> Any:
        seen.append(torch._inductor.config.triton.coalesce_tiling_analysis)
        if always or seen[-1]:
            raise AssertionError("expected no ModularIndexing or FloorDiv in expr (tiling_utils.solve_for_tiling)")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(GraphLowering, "compile_to_module", lowering)
    torch._dynamo.reset()
    return seen


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 3))


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "pcmci.engine.compile"]


def test_falls_back_without_tiling_analysis_then_compiles(monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    seen = _failing_lowering(monkeypatch, always=False)
    net, x = _net(), torch.randn(4, 8, requires_grad=True)
    wrapped = fallback.FallbackCompiled(net)
    out = wrapped(x)
    out.square().sum().backward()
    assert wrapped.stage == "inductor without coalescing tiling analysis"
    assert seen[0] is True and seen[1:] and not any(seen[1:])  # forward and backward lowered without it
    torch.testing.assert_close(out, net(x), rtol=1e-5, atol=1e-6)  # fp32 CPU kernels: reassociation only
    wrapped(x)  # later calls: no new warning
    (message,) = _warnings(caplog)
    assert "InductorError" in message or "BackendCompilerFailed" in message
    assert "solve_for_tiling" in message and message.endswith("running inductor without coalescing tiling analysis")


def test_falls_back_to_eager_when_every_compile_fails(monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    seen = _failing_lowering(monkeypatch, always=True)
    net, x = _net(), torch.randn(4, 8)
    wrapped = fallback.FallbackCompiled(net)
    assert torch.equal(wrapped(x), net(x)) and wrapped.stage == "eager" and seen == [True, False]
    (message,) = _warnings(caplog)
    assert message.count("solve_for_tiling") == 2 and message.endswith("running eager")
    with pytest.raises(ValueError, match="last stage must be eager"):
        fallback.FallbackCompiled(net, stages=fallback.STAGES[:1])


def test_profiler_compiled_step_reports_its_fallback(monkeypatch: pytest.MonkeyPatch,
                                                     tiny_model: Callable[..., Any]) -> None:
    _failing_lowering(monkeypatch, always=True)
    model = tiny_model(stages=[])  # the fallback is under test: the baseline traces in a fraction of the stages' time
    frames = torch.rand(2, 8, 3, 64, 64)
    row = measure_train_step(model, frames, warmup=1, repeats=1, amp=False, compiled=True)
    assert row["compile_stage"] == "eager" and len(row["compile_failures"]) == 2 and row["clips_per_s"] > 0


def test_train_survives_a_failing_compile(synthetic_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          caplog: pytest.LogCaptureFixture) -> None:
    """``pcmci train`` with ``run.compile=true`` whose every Inductor compile fails trains eagerly to the end."""
    _failing_lowering(monkeypatch, always=True)
    caplog.set_level(logging.WARNING, logger="pcmci.engine.compile")
    ckpt = train(load_config("tiny", tiny_run_overrides(synthetic_set, tmp_path, "optim.epochs=1",
                                                        "run.compile=true", "model.stages=[]")))
    assert ckpt.is_file()
    (message,) = _warnings(caplog)
    assert message.endswith("running eager")

