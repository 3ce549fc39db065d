"""When and on what the k-means confounder dictionaries are fitted during training.

The strata must represent the population: ``model.dictionaries.clips`` clips drawn at random (seeded by
``run.seed`` and the epoch) from the whole training split, classes taking turns (so every class is
covered), sampled as in training, encoded by the model as it is at that moment. They are fitted before the first
epoch (the stages need them to run), refitted once the warm-up is over (the features have moved away from the random
init) and then every ``refit_every`` epochs.
"""
from __future__ import annotations

import logging
import math

import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from ..config import Config
from ..data.datasets import VideoDataset, collate_videos
from ..errors import DataError
from ..model import PCMCI

log = logging.getLogger(__name__)


def refit_epochs(cfg: Config) -> set[int]:
    """Epochs at whose start the dictionaries are (re)fitted: 0, the end of the warm-up, then every n epochs."""
    every, epochs = cfg.model.dictionaries.refit_every, cfg.optim.epochs
    warm = max(1, math.ceil(cfg.optim.warmup_epochs))
    due = {0}
    if every > 0:
        due |= {e for e in range(warm, epochs, every)}
    return {e for e in due if e < epochs}


def sample_indices(size: int, clips: int, seed: int, epoch: int, groups: list[int] | None = None) -> list[int]:
    """``min(clips, size)`` distinct indices of ``range(size)``, a function of (seed, epoch). With ``groups`` (the
    class of each index) the sample is stratified: classes take turns, each contributing its next random member,
    so every class is covered by ``clips >= classes`` and the classes are as balanced as their sizes allow."""
    if clips < 1:
        raise ValueError(f"model.dictionaries.clips must be >= 1, got {clips}")
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(size, generator=generator).tolist()
    if groups is None:
        return sorted(order[:clips])
    queues: dict[int, list[int]] = {}
    for i in order:
        queues.setdefault(groups[i], []).append(i)
    chosen: list[int] = []
    while len(chosen) < min(clips, size):
        for queue in queues.values():
            if queue and len(chosen) < clips:
                chosen.append(queue.pop(0))
    return sorted(chosen)


def _classes(dataset: VideoDataset) -> list[int] | None:
    """The class of each clip (single-label sets; None for multi-label, sampled without strata)."""
    return None if dataset.multilabel else [int(r.target) for r in dataset.records]


def all_skipped(what: str, skipped: list[str]) -> DataError:
    """The error for a pass over training clips that decoded none (``what``: "all N ... were")."""
    return DataError(f"{what} skipped as undecodable (data.skip_bad_videos=true), e.g. "
                     f"{skipped[0] if skipped else '?'}; check the training split's videos (pcmci data inspect)")


@torch.no_grad()
def fit_dictionaries(cfg: Config, model: PCMCI, dataset: VideoDataset, device: torch.device, epoch: int,
                     world: int = 1) -> None:
    """Fit every k-means dictionary of ``model`` on a fresh random sample of the training split.

    Every rank draws the same clips and encodes them in batches of the global size ``batch_size x world``, so one
    process with batch 2b and two with batch b fit the same dictionaries.
    """
    if not model.dictionaries():
        return
    chosen = sample_indices(len(dataset), cfg.model.dictionaries.clips, cfg.run.seed, epoch, _classes(dataset))
    dataset.set_epoch(epoch)
    loader = DataLoader(Subset(dataset, chosen), batch_size=cfg.optim.batch_size * world,
                        num_workers=cfg.data.num_workers, collate_fn=collate_videos)
    batches, bad = [], []
    for b in tqdm(loader, desc=f"dictionaries (epoch {epoch})", disable=not cfg.run.progress, leave=False):
        bad += b.get("bad", [])
        if "video" in b:
            batches.append(b["video"].to(device))
    if not batches:
        raise all_skipped(f"all {len(chosen)} training clips drawn for the confounder dictionaries were", bad)
    used = model.build_dictionaries(batches, seed=cfg.run.seed + epoch)
    log.info("epoch %d: fitted confounder dictionaries on %d clips (%s feature vectors)", epoch, len(chosen), used)
