"""Run logging: TensorBoard scalars beside metrics.jsonl, throughput and data-wait share per epoch."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


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
