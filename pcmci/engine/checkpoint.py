"""Safe, atomic checkpoints.

Writing: a temporary file in the same folder, fsync, then rename over the target, so a crash (even SIGKILL)
mid-write never leaves the last good checkpoint unreadable; a full disk or a read-only folder raises one
``CheckpointWriteError`` naming the cause. Reading: ``torch.load(weights_only=True)`` only, so a checkpoint can
hold tensors and plain data (dicts, lists, numbers, strings) but never executes pickled code.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, CheckpointNotFoundError, CheckpointWriteError
from ..torchfiles import load_cause
from ..torchfiles import save_checkpoint

__all__ = ["CheckpointWriteError", "load_checkpoint", "save_checkpoint"]


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
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupt: {load_cause(exc)}") from exc
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupt: {load_cause(exc)}") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a pcmci checkpoint")
    for key in ("model", "config", "epoch"):
        if key not in state:
            raise CheckpointError(f"checkpoint {path} lacks {key!r}; was it written by pcmci train?")
    problem = _contents_problem(state)
    if problem:
        raise CheckpointError(f"checkpoint {path}: {problem}; was it written by pcmci train?")
    return state
