"""Single-video inference: ``pcmci predict CHECKPOINT VIDEO`` -> top-k (label, probability)."""
from __future__ import annotations

from pathlib import Path

import torch

from ..data.datasets import preprocess
from ..data.decode import sample_clip
from .evaluate import load_model
from .train import resolve_device


@torch.no_grad()
def predict_video(checkpoint: str | Path, video: str | Path, topk: int = 5,
                  device: str = "auto") -> list[tuple[str, float]]:
    """Centre-sampled clip of ``video`` through the trained model; the ``topk`` most probable classes."""
    dev = resolve_device(device)
    model, cfg = load_model(checkpoint, dev)
    frames, _ = sample_clip(video, cfg.data.frames, train=False, backend=cfg.data.backend)
    logits = model(preprocess(frames, cfg.data.image_size)[None].to(dev))["logits"][0].float()
    probs = model.probabilities(logits)
    top = probs.topk(min(topk, len(model.classes)))
    return [(model.classes[i], float(p)) for p, i in zip(top.values.tolist(), top.indices.tolist())]
