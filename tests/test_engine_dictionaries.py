"""Confounder dictionaries during training: a random sample of the whole split, refits after warm-up and every n
epochs, saved in checkpoints."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch

from pcmci.config import load_config
from pcmci.engine.checkpoint import load_checkpoint
from pcmci.engine.dictionaries import refit_epochs, sample_indices
from pcmci.engine.train import train


def test_refit_schedule() -> None:
    cfg = load_config("tiny", ["optim.epochs=30", "optim.warmup_epochs=2", "model.dictionaries.refit_every=10"])
    assert refit_epochs(cfg) == {0, 2, 12, 22}
    cfg = load_config("tiny", ["optim.epochs=5", "model.dictionaries.refit_every=0"])
    assert refit_epochs(cfg) == {0}
    cfg = load_config("tiny", ["optim.epochs=3", "optim.warmup_epochs=0.5", "model.dictionaries.refit_every=1"])
    assert refit_epochs(cfg) == {0, 1, 2}


def test_sample_covers_the_whole_split_and_is_seeded() -> None:
    a = sample_indices(1000, 64, seed=0, epoch=0)
    assert len(a) == len(set(a)) == 64 and max(a) > 500  # not the first clips in file order
    assert a == sample_indices(1000, 64, seed=0, epoch=0)
    assert a != sample_indices(1000, 64, seed=0, epoch=1) and a != sample_indices(1000, 64, seed=1, epoch=0)
    assert sample_indices(10, 64, seed=0, epoch=0) == list(range(10))


def test_training_refits_the_dictionaries_and_saves_them(synthetic_set: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    common = [f"data.manifest={synthetic_set}", "optim.batch_size=6", "run.progress=false",
              "model.dictionaries.clips=12", "optim.warmup_epochs=1", "model.stages=[ivc]",
              "backdoor.reweight=false"]  # the dictionaries are under test, not the backdoor weights (references)
    once = load_config("tiny", [*common, "optim.epochs=1", f"run.out_dir={out}-once"])
    twice = load_config("tiny", [*common, "optim.epochs=2", "model.dictionaries.refit_every=1", f"run.out_dir={out}"])
    first = load_checkpoint(train(once))["model"]
    second = load_checkpoint(train(twice))["model"]
    assert torch.isclose(second["ivc.dictionary.prior"].sum(), torch.tensor(1.0))
    # the second run refitted at epoch 1 on features of the trained encoder: its atoms moved
    assert not torch.allclose(first["ivc.dictionary.atoms"], second["ivc.dictionary.atoms"])


def test_class_stratified_sample_covers_every_class() -> None:
    """180 classes of uneven size (COIN-like): 256 clips take every class at least once and no class more than
    once more than any other that still has clips left; a class with 1 clip gives exactly that clip."""
    groups = [c for c in range(180) for _ in range(1 + c % 7)]
    chosen = sample_indices(len(groups), 256, seed=0, epoch=0, groups=groups)
    assert len(chosen) == len(set(chosen)) == 256
    per_class = Counter(groups[i] for i in chosen)
    assert set(per_class) == set(range(180))
    assert max(per_class.values()) - min(per_class.values()) <= 1
    assert chosen == sample_indices(len(groups), 256, seed=0, epoch=0, groups=groups)
