"""What a resumed run must match or restore: the saved config (compared key by key), the RNG states as plain
data (so checkpoints load with ``weights_only=True``), and the ``run.compile`` default."""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

# Keys that may differ on --resume without changing what the run computes (or, for optim.epochs, that extend
# it on purpose: the cosine schedule then stretches over the new total).
RESUMABLE_CHANGES = frozenset({
    "optim.epochs", "run.out_dir", "run.progress", "run.device", "run.compile", "run.tensorboard",
    "data.num_workers", "data.decode_timeout",
})


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1}} -> {"optim.lr": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Every dotted key whose value differs between two ``to_dict`` configs, as ``key: saved -> current``,
    except the keys in ``RESUMABLE_CHANGES``."""
    old, new = flatten(saved), flatten(current)
    keys = sorted(set(old) | set(new))
    return [f"{key}: {old.get(key, '<absent>')!r} -> {new.get(key, '<absent>')!r}" for key in keys
            if old.get(key) != new.get(key) and key not in RESUMABLE_CHANGES]


def rng_state(device: torch.device) -> dict[str, Any]:
    """CPU, CUDA (when training on it), NumPy and Python RNG states as tensors and plain data."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, python_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "gauss": float(gauss)},
        "python": {"version": version, "state": list(internal), "gauss": python_gauss},
    }


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["gauss"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))


def use_compile(setting: bool | None, device: torch.device) -> bool:
    """``run.compile``: true/false, or None = on for CUDA, off for CPU."""
    return device.type == "cuda" if setting is None else setting
