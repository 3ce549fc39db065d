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


def tiny_run_overrides(manifest: Path, out: Path, *extra: str) -> list[str]:
    """``pcmci train tiny`` overrides for a short run (2 epochs of batch 6) on the synthetic set."""
    return [f"data.manifest={manifest}", f"run.out_dir={out}", "optim.epochs=2", "optim.batch_size=6",
            "run.progress=false", "model.dictionaries.clips=16", "model.dictionaries.refit_every=0", *extra]


@pytest.fixture(scope="session")
def tiny_run(synthetic_set: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted single-process run of ``tiny_run_overrides`` with one thread (as the subprocess runs it
    is compared with); returns its ``run.out_dir``."""
    from engine_runs import one_thread

    from pcmci.config import load_config
    from pcmci.engine.train import train

    out = tmp_path_factory.mktemp("tiny-run")
    with one_thread():
        train(load_config("tiny", tiny_run_overrides(synthetic_set, out)))
    return out
