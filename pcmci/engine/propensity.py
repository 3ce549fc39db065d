"""The training-time backdoor: clip weights ``P(y) / P(y|s)`` from cross-fitted single-frame reference models
(``backdoor`` config section; with the IVC stage by default, the project's reading of IVC's backdoor).

Causal graph (per clip): ``C -> X``, ``X -> Y``, and ``C -> Y`` through how the data were collected (a kitchen, a
camera, a badge go with an activity). ``C`` is not observed and need not stand still: a hand-held camera moves the
background, a badge jitters. The backdoor adjustment ``P(Y|do(X)) = sum_c P(c) P(Y|X,c)`` is the risk under a
population where the context is independent of the label; weighting each training clip by
``w = P(c) P(y) / P(c, y) = P(y) / P(y|c)`` estimates it from the data we have (inverse-propensity weighting,
``sum_c P(c)`` by sampling). ``C`` is read through what it leaves in single frames: ``s`` = the clip's frames one at
a time, so ``P(y|s)`` is what a model that cannot see motion predicts. Scene, light, props — moving or not — are
visible in one frame; the activity's motion is not.

- **Cross-fitted** (``backdoor.reference_folds`` class-stratified folds): each clip's ``P(y|s)`` comes from a
  reference model trained on the other folds, so the minority clips it must find are not memorised away.
- **Reference model**: the no-intervention baseline architecture of the run's config, built for one frame
  (``timesformer.frames=1``), trained ``backdoor.reference_epochs`` epochs on one random frame per clip, and read
  as the mean of its per-frame class probabilities over the clip's F frames.
- **A still cause keeps its evidence.** Weights are normalised to mean 1 *within each class*: the weighted data
  keep every class's share, and inside a class the clips whose frames point to another class gain weight. A cause
  that defines its class (the pan on the stove) is in every clip of the class, so it moves no clip's weight within
  the class — nothing teaches the model to ignore it, unlike removing what stands still.
- ``backdoor.max_weight`` clips ``P(y)/P(y|s)`` before normalisation (the variance of importance weights).
- ``backdoor.reference="clip"``: the references see whole clips (``s`` = the clip, the baseline architecture on all
  its frames, early-stopped at ``reference_epochs``). Not a backdoor estimate by construction (the clip also shows
  the cause): it relies on the baseline learning the context before the motion, and reads context a single frame's
  reference cannot (a small, moving badge).
"""
from __future__ import annotations

import copy
import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from ..config import Config, ConfigError
from ..data.datasets import VideoDataset, collate_videos
from ..model import PCMCI, build_model
from .optimizers import adam

log = logging.getLogger(__name__)


def stratified_folds(targets: list[int], folds: int, seed: int) -> list[int]:
    """The fold of each clip: the clips in a seeded random order, grouped by class, dealt out in turn — so the folds
    differ in size by at most one and every class with at least ``folds`` clips is in every fold."""
    if len(targets) < folds:
        raise ConfigError(f"backdoor.reference_folds={folds} needs at least {folds} training clips to cross-fit "
                          f"the backdoor weights, the split has {len(targets)}; lower it or set "
                          "backdoor.reweight=false")
    generator = torch.Generator().manual_seed(seed * 7919 + 17)
    order = sorted(torch.randperm(len(targets), generator=generator).tolist(), key=lambda i: targets[i])
    fold = [0] * len(targets)
    for position, i in enumerate(order):
        fold[i] = position % folds
    return fold


def propensity_weights(p_label: Tensor, targets: Tensor, max_weight: float, base: Tensor | None = None) -> Tensor:
    """``w_i = base_i min(P(y_i) / P(y_i|s_i), max_weight)``, rescaled to mean 1 within each class. ``p_label[n]`` is
    ``P(y_i|s_i)`` (under the ``base`` weights of an earlier round, 1 by default), ``targets[n]`` the class indices;
    ``P(y)`` is the classes' share of ``targets`` (the within-class normalisation keeps it under every round)."""
    p_label, targets = p_label.double(), targets.long()
    prior = torch.bincount(targets).double() / len(targets)
    w = (prior[targets] / p_label.clamp_min(1e-12)).clamp(max=max_weight)
    if base is not None:
        w = w * base.double()
    sums = torch.zeros_like(prior).index_add_(0, targets, w)
    counts = torch.bincount(targets, minlength=len(prior)).double()
    return w * counts[targets] / sums[targets]


def reference_config(cfg: Config) -> Config:
    """The run's config for the reference: the baseline architecture, on one frame (``backdoor.reference="frame"``)
    or on the clip's frames."""
    ref = copy.deepcopy(cfg)
    ref.model.stages = []
    ref.model.timesformer.style_mix = 0.0  # the reference must read the context, not be made blind to it
    if cfg.backdoor.reference == "frame":
        ref.model.timesformer.frames = 1
    ref.model.head.aux_weight = 0.0
    return ref


def _one_frame(video: Tensor, generator: torch.Generator) -> Tensor:
    """``[B,F,3,H,W] -> [B,1,3,H,W]``: a random frame of each clip (the motion is gone)."""
    pick = torch.randint(video.shape[1], (video.shape[0],), generator=generator).to(video.device)
    return video[torch.arange(video.shape[0], device=video.device), pick][:, None]


def _loader(dataset: VideoDataset, indices: list[int], batch: int, workers: int, shuffle: bool,
            seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(Subset(dataset, indices), batch_size=batch, shuffle=shuffle, generator=generator,
                      num_workers=workers, collate_fn=collate_videos)


def _train_reference(cfg: Config, dataset: VideoDataset, indices: list[int], device: torch.device,
                     seed: int, progress: bool, weights: Tensor, batch: int) -> PCMCI:
    """A reference baseline (:func:`reference_config`) trained on ``indices`` with the loss weights ``weights[n]``
    of the clips (AdamW at the run's lr, cosine over the epochs)."""
    ref_cfg = reference_config(cfg)
    torch.manual_seed(seed)
    model = build_model(ref_cfg.model, dataset.labels.classes, dataset.labels.actions).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adam(params, cfg.optim.lr, cfg.optim.weight_decay)
    epochs = cfg.backdoor.reference_epochs
    total = epochs * math.ceil(len(indices) / batch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(epochs):
        dataset.set_epoch(epoch)
        batches = _loader(dataset, indices, batch, cfg.data.num_workers, True, seed + epoch)
        desc = f"{cfg.backdoor.reference} reference, epoch {epoch + 1}/{epochs}"
        for items in tqdm(batches, desc=desc, leave=False, disable=not progress):
            if "video" not in items:
                continue
            frames = items["video"].to(device)
            if cfg.backdoor.reference == "frame":
                frames = _one_frame(frames, generator)
            per_clip = F.cross_entropy(model(frames)["logits"].float(), items["label"].to(device), reduction="none")
            loss = (weights[items["index"]].to(device, per_clip.dtype) * per_clip).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
            optimizer.step()
            scheduler.step()
    return model.eval()


@torch.no_grad()
def _label_probability(model: PCMCI, dataset: VideoDataset, indices: list[int], cfg: Config,
                       device: torch.device, batch: int) -> Tensor:
    """``P(y_i|s_i)`` for ``indices``: the reference's class probabilities averaged over each clip's F frames (one
    read of the clip with ``backdoor.reference="clip"``)."""
    dataset.set_epoch(0)
    out = torch.ones(len(indices), dtype=torch.float64)
    position = {index: row for row, index in enumerate(indices)}
    for items in _loader(dataset, indices, batch, cfg.data.num_workers, False, 0):
        if "video" not in items:
            continue
        video = items["video"].to(device)
        b, f = video.shape[:2]
        if cfg.backdoor.reference == "frame":
            probs = torch.softmax(model(video.reshape(b * f, 1, *video.shape[2:]))["logits"].float(), -1)
            probs = probs.view(b, f, -1).mean(1)
        else:
            probs = torch.softmax(model(video)["logits"].float(), -1)
        label = items["label"].to(device)
        rows = [position[int(i)] for i in items["index"]]
        out[rows] = probs[torch.arange(b, device=device), label].double().cpu()
    return out


def clip_weights(cfg: Config, dataset: VideoDataset, device: torch.device, progress: bool = True,
                 batch: int | None = None) -> Tensor:
    """The training split's clip weights ``[n]`` (float64, mean 1 within each class); see the module docstring.

    ``batch`` is the references' batch size: pass the run's global batch (``batch_size x processes x accum_steps``)
    so that one process, several, or accumulated batches fit the same references and get the same weights."""
    batch = batch or cfg.optim.batch_size
    if dataset.multilabel:
        raise ConfigError("backdoor.reweight weights each clip by P(y)/P(y|s), defined for one label per clip, "
                          "but the training set is multi-label; set backdoor.reweight=false")
    targets = [int(r.target) for r in dataset.records]
    folds = stratified_folds(targets, cfg.backdoor.reference_folds, cfg.run.seed)
    was_training = dataset.train
    try:
        return _cross_fitted_weights(cfg, dataset, device, progress, batch, targets, folds)
    finally:
        dataset.train = was_training  # the read-out switched to centre-sampled frames


def _cross_fitted_weights(cfg: Config, dataset: VideoDataset, device: torch.device, progress: bool, batch: int,
                          targets: list[int], folds: list[int]) -> Tensor:
    """``reference_rounds`` rounds of cross-fitted references, each multiplying the weights by its factor."""
    weights = torch.ones(len(targets), dtype=torch.float64)
    for round_ in range(cfg.backdoor.reference_rounds):
        p_label = torch.ones(len(targets), dtype=torch.float64)
        for k in range(cfg.backdoor.reference_folds):
            fit_on = [i for i, f in enumerate(folds) if f != k]
            held = [i for i, f in enumerate(folds) if f == k]
            dataset.train = True
            seed = cfg.run.seed * 1009 + 31 * round_ + k
            model = _train_reference(cfg, dataset, fit_on, device, seed, progress, weights, batch)
            dataset.train = False  # centre-sampled frames for the read-out
            p_label[held] = _label_probability(model, dataset, held, cfg, device, batch)
        weights = propensity_weights(p_label, torch.tensor(targets), cfg.backdoor.max_weight, weights)
        ess = float(weights.sum() ** 2 / (weights**2).sum())
        log.info("backdoor weights, round %d: %d clips, P(y|s) median %.3f, weights %.2f..%.2f, effective sample "
                 "size %.0f", round_ + 1, len(targets), float(p_label.median()), float(weights.min()),
                 float(weights.max()), ess)
    return weights
