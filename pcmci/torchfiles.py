"""Torch files written atomically and read errors told in one line: what checkpoints (``engine.checkpoint``) and
converted weights (``model.weights``) share, below both so the model layer never imports the engine."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointWriteError


def _stale_temporaries(path: Path) -> list[Path]:
    return list(path.parent.glob(f".{path.name}.*.tmp"))


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Atomically write ``state`` to ``path`` with ``torch.save``; leftovers of killed writes are removed."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in _stale_temporaries(path):
            stale.unlink(missing_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise CheckpointWriteError(f"cannot write checkpoint {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            kept = "the previous checkpoint is unchanged" if path.is_file() else "no checkpoint was written"
            raise CheckpointWriteError(f"cannot write checkpoint {path}: {exc.strerror or exc} ({kept})") from exc
        raise
    return path


def load_cause(exc: Exception) -> str:
    """One line of a loader's error: what ``torch.load``'s weights-only unpickler reports, else the first line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if "WeightsUnpickler error:" in line:
            detail = line.split("WeightsUnpickler error:", 1)[1].strip()
            return detail or (lines[i + 1] if i + 1 < len(lines) else line)
    return lines[0] if lines else type(exc).__name__
