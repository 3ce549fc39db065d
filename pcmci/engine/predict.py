"""Single-video inference: ``pcmci predict CHECKPOINT VIDEO`` -> top-k (label, probability).

Sampling follows the checkpoint's own data config: ``data.frames``, ``data.backend``, ``data.decode_timeout``
and ``data.pad_short_videos`` (a video shorter than ``frames`` is stretched only when training allowed it).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..data.datasets import LabelSet, preprocess
from ..data.decode import sample_clip
from .evaluate import check_labels, load_model
from .runtime import resolve_device


@torch.no_grad()
def predict_video(checkpoint: str | Path, video: str | Path, topk: int = 5, device: str = "auto",
                  labels: str | Path | None = None) -> list[tuple[str, float]]:
    """Centre-sampled clip of ``video`` through the trained model; the ``topk`` most probable classes.

    ``labels`` (a ``labels.json``): the classes the caller expects; any difference from the checkpoint's stops.
    """
    if topk < 1:
        raise ValueError(f"--topk must be at least 1, got {topk}")
    dev = resolve_device(device)
    model, cfg = load_model(checkpoint, dev)
    if labels is not None:
        check_labels(model.classes, LabelSet.load(labels).classes, f"labels file {labels}")
    frames, _ = sample_clip(video, cfg.data.frames, train=False, backend=cfg.data.backend,
                            timeout=cfg.data.decode_timeout, pad=cfg.data.pad_short_videos)
    logits = model(preprocess(frames, cfg.data.image_size)[None].to(dev))["logits"][0].float()
    probs = model.probabilities(logits)
    top = probs.topk(min(topk, len(model.classes)))
    return [(model.classes[i], float(p)) for p, i in zip(top.values.tolist(), top.indices.tolist())]
