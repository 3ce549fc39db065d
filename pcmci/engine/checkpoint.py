"""Safe, atomic checkpoints.

Writing: a temporary file in the same folder, fsync, then rename over the target, so a crash (even SIGKILL)
mid-write never leaves the last good checkpoint unreadable; a full disk or a read-only folder raises one
``CheckpointWriteError`` naming the cause. Reading: ``torch.load(weights_only=True)`` only, so a checkpoint can
hold tensors and plain data (dicts, lists, numbers, strings) but never executes pickled code.
"""
from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, CheckpointNotFoundError, CheckpointWriteError


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


def _cause(exc: Exception) -> str:
    """One line of a loader's error: what ``torch.load``'s weights-only unpickler reports, else the first line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if "WeightsUnpickler error:" in line:
            detail = line.split("WeightsUnpickler error:", 1)[1].strip()
            return detail or (lines[i + 1] if i + 1 < len(lines) else line)
    return lines[0] if lines else type(exc).__name__


def _contents_problem(state: dict[str, Any]) -> str | None:
    """What is wrong with the types of a checkpoint's entries (None: nothing), before any of them is used."""
    if not isinstance(state["model"], dict) or not all(isinstance(v, torch.Tensor) for v in state["model"].values()):
        return "'model' is not a dict of tensors"
    if not isinstance(state["config"], dict):
        return "'config' is not a dict"
    if not isinstance(state["epoch"], int) or isinstance(state["epoch"], bool):
        return "'epoch' is not an integer"
    if "labels" in state:
        labels = state["labels"]
        names = (labels.get("classes"), labels.get("actions")) if isinstance(labels, dict) else (None, None)
        if not all(isinstance(n, list) and all(isinstance(x, str) for x in n) for n in names) or not names[0]:
            return "'labels' is not {'classes': [names, ...], 'actions': [names, ...]}"
    return None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by ``save_checkpoint``; clear errors for missing, corrupt or unsafe files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint is a folder, not a file: {path}" if path.is_dir()
                                      else f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "unsupported global" in str(exc).lower() or "unsupported class" in str(exc).lower():
            raise CheckpointError(f"checkpoint {path} holds pickled Python objects beyond tensors and plain data; "
                                  "refusing to load it, since unpickling could run arbitrary code") from exc
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupt: {_cause(exc)}") from exc
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupt: {_cause(exc)}") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a pcmci checkpoint")
    for key in ("model", "config", "epoch"):
        if key not in state:
            raise CheckpointError(f"checkpoint {path} lacks {key!r}; was it written by pcmci train?")
    problem = _contents_problem(state)
    if problem:
        raise CheckpointError(f"checkpoint {path}: {problem}; was it written by pcmci train?")
    return state
