"""Run logging: TensorBoard scalars beside metrics.jsonl, throughput and data-wait share per epoch, resumed sinks."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pcmci.engine.sink import MetricsSink


def test_tensorboard_scalars_match_metrics_jsonl(tiny_run: Path) -> None:
    records = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "step" in r]
    epochs = [r for r in records if "train_loss" in r]
    board = EventAccumulator(str(tiny_run / "tensorboard"))
    board.Reload()
    scalars = board.Tags()["scalars"]
    for tag in ("train/loss", "train/lr", "train/grad_norm", "epoch/clips_per_s", "epoch/data_wait"):
        assert tag in scalars
    logged = board.Scalars("train/loss")
    assert [e.step for e in logged] == [r["step"] for r in steps]
    assert [e.value for e in logged] == pytest.approx([r["loss"] for r in steps], rel=1e-6)
    assert [e.value for e in board.Scalars("epoch/clips_per_s")] == pytest.approx([r["clips_per_s"] for r in epochs])
    for summary in epochs:
        assert summary["clips_per_s"] > 0 and 0.0 <= summary["data_wait"] < 1.0
        assert summary["clips_per_s"] == pytest.approx(24 / summary["seconds"])


def test_metrics_sink_resumes_after_the_last_complete_epoch_and_writes_on_rank_0_only(tmp_path: Path) -> None:
    """A resumed run's ``metrics.jsonl`` keeps the records of the epochs before it and drops the rest, a line torn
    by a kill included; another rank's sink writes nothing."""
    kept = ['{"step": 1, "epoch": 0, "loss": 2.0}', '{"epoch": 0, "train_loss": 2.0}']
    dropped = ['{"step": 2, "epoch": 1, "loss": 1.5}', '{"step": 3, "epo']
    (tmp_path / "metrics.jsonl").write_text("\n".join(kept + dropped))
    log = logging.getLogger("test")
    with MetricsSink(tmp_path, main=False, tensorboard=False, start_epoch=1, start_step=1, log=log) as other:
        other.step({"step": 2, "epoch": 1, "loss": 1.0, "lr": 0.1, "grad_norm": 3.0})
    assert (tmp_path / "metrics.jsonl").read_text() == "\n".join(kept + dropped)
    with MetricsSink(tmp_path, main=True, tensorboard=False, start_epoch=1, start_step=1, log=log) as sink:
        sink.step({"step": 2, "epoch": 1, "loss": 1.0, "lr": 0.1, "grad_norm": 3.0})
    assert (tmp_path / "metrics.jsonl").read_text().splitlines() == kept + [
        '{"step": 2, "epoch": 1, "loss": 1.0, "lr": 0.1, "grad_norm": 3.0}']
