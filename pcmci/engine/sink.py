"""Where a training run's numbers go, in one place: ``metrics.jsonl``, TensorBoard and the log.

``metrics.jsonl`` holds one JSON line per optimiser step (``step, epoch, loss, lr, grad_norm``) and one per epoch
(``epoch, train_loss, train_acc, seconds, clips_per_s, data_wait, skipped_videos``); TensorBoard gets the same
numbers under ``train/`` and ``epoch/``. Only rank 0 writes; every other rank holds a sink that writes nothing,
so the training loop never asks which rank it is on.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

STEP_SCALARS = ("loss", "lr", "grad_norm")
EPOCH_SCALARS = ("train_loss", "train_acc", "clips_per_s", "data_wait")


class MetricsSink:
    """Writes under ``out`` when ``main``; ``start_epoch`` > 0 resumes a run: the records of the epochs from
    ``start_epoch`` on (a killed epoch's, possibly with a torn last line) are dropped, and so are the TensorBoard
    events after ``start_step``. Log lines go to ``log`` (the caller's logger, so they keep its name)."""

    def __init__(self, out: Path, main: bool, tensorboard: bool, start_epoch: int, start_step: int,
                 log: logging.Logger) -> None:
        self.log, self.main = log, main
        self.file: TextIO | None = None
        self.board: Any = None
        if not main:
            return
        path = out / "metrics.jsonl"
        kept = [line for line in complete_records(path) if json.loads(line)["epoch"] < start_epoch]
        path.write_text("".join(line + "\n" for line in kept))
        self.file = path.open("a", buffering=1)  # line-buffered: a kill loses at most the line being written
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.board = SummaryWriter(str(out / "tensorboard"), purge_step=start_step or None)

    def step(self, record: dict[str, Any]) -> None:
        """One optimiser step's record (``step`` is its global index)."""
        self._write(record)
        if self.board is not None:
            for key in STEP_SCALARS:
                self.board.add_scalar(f"train/{key}", record[key], record["step"])

    def epoch(self, summary: dict[str, Any], step: int, skipped: list[str]) -> None:
        """One epoch's summary (reduced over ranks), logged at global ``step``; ``skipped`` names the undecodable
        videos the epoch left out."""
        self._write(summary)
        if self.board is not None:
            for key in EPOCH_SCALARS:
                self.board.add_scalar(f"epoch/{key}", summary[key], step)
            self.board.flush()
        if not self.main:
            return
        if skipped:
            self.log.warning("epoch %d: skipped %d undecodable video(s):\n  %s", summary["epoch"], len(skipped),
                             "\n  ".join(sorted(skipped)))
        self.log.info("epoch %d: loss %.4f acc %.3f | %.1f clips/s, %.0f%% of the time waiting for data",
                      summary["epoch"], summary["train_loss"], summary["train_acc"], summary["clips_per_s"],
                      100 * summary["data_wait"])

    def _write(self, record: dict[str, Any]) -> None:
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.board is not None:
            self.board.close()

    def __enter__(self) -> MetricsSink:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()


def complete_records(path: Path) -> list[str]:
    """The complete JSON lines of ``metrics.jsonl`` (a line torn by a kill mid-write is dropped)."""
    lines = path.read_text().splitlines() if path.is_file() else []
    complete = []
    for line in lines:
        try:
            json.loads(line)
        except json.JSONDecodeError:
            continue
        complete.append(line)
    return complete
