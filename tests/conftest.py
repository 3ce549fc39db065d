"""Shared fixtures: a tiny model factory and one small synthetic dataset per test session."""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from pcmci.config import preset
from pcmci.model import PCMCI, build_model

CLASSES = ["make cereal", "make tea", "fry egg"]
ACTIONS = ["pour", "stir", "crack"]


@pytest.fixture(autouse=True)
def _quiet_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)


def _tiny_model(stages: list[str] | None = None, **head: float) -> PCMCI:
    """A tiny PCMCI with fitted dictionaries, for forward/backward checks."""
    torch.manual_seed(0)
    cfg = preset("tiny").model
    if stages is not None:
        cfg.stages = stages
    for key, value in head.items():
        setattr(cfg.head, key, value)
    model = build_model(cfg, CLASSES, ACTIONS)
    model.build_dictionaries([torch.rand(4, 8, 3, 64, 64) for _ in range(2)])
    return model


@pytest.fixture
def tiny_model() -> Callable[..., PCMCI]:
    """Factory: ``tiny_model(stages=[...], aux_weight=...)``."""
    return _tiny_model


@pytest.fixture(scope="session")
def synthetic_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic confounded set (VP9); returns its manifest path."""
    from pcmci.data.synthetic import synthesize

    return synthesize(tmp_path_factory.mktemp("synth"), seed=0, n_train=24, n_test=12, progress=False)
