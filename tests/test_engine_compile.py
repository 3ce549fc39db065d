"""``run.compile``: the tiny model's training step compiles with no graph break and trains like eager."""
from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_run_overrides
from engine_runs import step_losses

from pcmci.config import load_config
from pcmci.engine.train import train


@pytest.mark.slow
def test_compiled_training_has_no_graph_break_and_matches_eager(synthetic_set: Path, tiny_run: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    # fullgraph=True turns any graph break into an error; aot_eager traces forward and backward like inductor
    # but skips its C++ code generation, which takes minutes on a 2-core CPU.
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, fullgraph=True, backend="aot_eager"))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    caplog.set_level(logging.INFO, logger="pcmci.engine.train")
    train(load_config("tiny", tiny_run_overrides(synthetic_set, tmp_path, "optim.epochs=1", "run.compile=true")))
    assert not torch._dynamo.utils.counters["graph_break"]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    assert any("first training step took" in r.getMessage() and "0 graph break(s)" in r.getMessage()
               for r in caplog.records)
    # warm-up is the first epoch, so its 4 steps see the same learning rates in the 1- and the 2-epoch run
    np.testing.assert_allclose(step_losses(tmp_path), step_losses(tiny_run)[:4], rtol=0, atol=1e-5)
