"""What every engine command sets up before it touches a model: the device, the seeds, the label set and the
dataset of a split. ``train``, ``evaluate``, ``predict``, ``bench`` and the experiments all take them from here."""
from __future__ import annotations

import random
import re

import numpy as np
import torch

from ..config import Config, ConfigError
from ..data.datasets import VideoDataset, build_dataset
from ..data.records import LabelSet


def resolve_device(name: str) -> torch.device:
    """``run.device``: ``auto`` is CUDA when present, else CPU; ``cpu``, ``cuda`` or ``cuda:N`` otherwise (what
    the engine runs on); anything else, or CUDA without it, is a ``ConfigError``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise ConfigError(f"device {name!r} is not one of auto, cpu, cuda, cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available on this machine (use cpu or auto)")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (each draws its own stream)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_labels(cfg: Config) -> LabelSet | None:
    """The label file named by ``data.labels``; None lets the dataset find ``labels.json`` by the manifest."""
    return LabelSet.load(cfg.data.labels) if cfg.data.labels else None


def make_dataset(cfg: Config, split: str, train: bool, labels: LabelSet | None) -> VideoDataset:
    """The ``data.dataset`` adapter's ``split`` (manifest, breakfast, coin or charades)."""
    return build_dataset(cfg.data, split, train, seed=cfg.run.seed, labels=labels)
