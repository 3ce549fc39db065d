"""``pcmci vlm pretrain``: the project's own small VLM, pretrained on frame–caption pairs with a planted co-occurrence.

open_clip's ``pcmci-tiny-clip`` model from a seeded random init, trained with open_clip's own contrastive loss
(``ClipLoss``) on :func:`pcmci.data.captions.caption_pairs`; the weights are written as a safetensors file that
``model.clip.pretrained`` loads like any real checkpoint (``pcmci.model.clip.FrozenCLIP``), with a JSON record
(settings, SHA-256, zero-shot accuracies measured through that loading path) and a loss curve.

Token-embedding rows of tokens that no caption contains get no gradient: they are written as zeros (stated in the
record), so the file compresses; every label text and caption uses trained rows only.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor
from tqdm import tqdm

from ..config import ClipConfig, ConfigError
from ..data.captions import caption_pairs
from ..data.synthetic import Scene
from ..model.clip import FrozenCLIP
from .optimizers import adam

log = logging.getLogger(__name__)
MODEL = "pcmci-tiny-clip"
WEIGHTS = "pcmci-tiny-vlm.safetensors"  # the file pretrain_vlm writes in its --out


@dataclass(frozen=True)
class VLMSettings:
    """Pretraining settings: ``clips`` x ``frames`` pairs, ``cooccur`` = P(the activity's own prop is in view and
    named), ``still_pairs`` as in the synthetic scene, AdamW (``lr``, ``weight_decay``) with cosine decay."""

    seed: int = 0
    clips: int = 1000  # rendered clips; each gives ``frames`` pairs with the same caption
    frames: int = 4
    cooccur: float = 0.9  # P(own prop in view and named); the rest: none or another activity's prop
    still_pairs: int = 1  # the demo's 7 classes
    epochs: int = 15
    batch: int = 128  # duplicate captions in a batch are negatives to each other, as in open_clip's loss
    lr: float = 2e-3
    weight_decay: float = 0.1
    eval_clips: int = 280  # held-out clips per zero-shot split (co-occurrence kept / broken)


def to_clip_input(frames: np.ndarray) -> Tensor:
    """uint8 ``[N,H,W,3]`` -> float ``[N,3,H,W]`` in [0, 1] (what ``FrozenCLIP.encode_frames`` takes)."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0


def _normalise(images: Tensor) -> Tensor:
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def _train(model: torch.nn.Module, images: Tensor, tokens: Tensor, settings: VLMSettings, progress: bool) -> list[float]:
    """Contrastive pretraining in place; returns the mean loss of each epoch."""
    loss_fn = open_clip.ClipLoss()
    optimizer = adam(model.parameters(), settings.lr, settings.weight_decay)
    steps = settings.epochs * math.ceil(len(images) / settings.batch)
    warmup = max(1, steps // 20)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    generator = torch.Generator().manual_seed(settings.seed)
    curve = []
    model.train()
    bar = tqdm(total=steps, desc="pretraining the VLM", disable=not progress)
    for _ in range(settings.epochs):
        order, total = torch.randperm(len(images), generator=generator), 0.0
        for start in range(0, len(images), settings.batch):
            pick = order[start:start + settings.batch]
            image_features, text_features, scale = model(images[pick], tokens[pick])
            loss = loss_fn(image_features, text_features, scale)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            with torch.no_grad():  # CLIP's own guard: the temperature stays within 1/100
                model.logit_scale.clamp_(0, math.log(100))
            total += float(loss.detach()) * len(pick)
            bar.update()
        curve.append(total / len(images))
        bar.set_postfix(loss=f"{curve[-1]:.3f}")
    bar.close()
    return curve


def _state_to_write(model: torch.nn.Module, tokens: Tensor) -> tuple[dict[str, Tensor], int]:
    """fp16 state dict with the embedding rows of tokens no caption used set to zero; -> (state, rows kept)."""
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    used = torch.zeros(state["token_embedding.weight"].shape[0], dtype=torch.bool)
    used[tokens.unique()] = True
    state["token_embedding.weight"][~used] = 0
    return state, int(used.sum())


@torch.no_grad()
def label_probabilities(clip: FrozenCLIP, frames: np.ndarray, classes: list[str], batch: int = 256) -> Tensor:
    """Zero-shot class probabilities ``[N,C]`` of uint8 frames ``[N,H,W,3]`` (label texts through ``clip.prompt``,
    CLIP's own temperature)."""
    texts = clip.encode_text(classes)
    probs = []
    for start in range(0, len(frames), batch):
        images = to_clip_input(frames[start:start + batch])[:, None]
        probs.append(torch.softmax(clip.encode_frames(images)[:, 0] @ texts.T / clip.temperature, dim=-1))
    return torch.cat(probs)


def zero_shot(clip: FrozenCLIP, frames: np.ndarray, labels: np.ndarray, classes: list[str]) -> tuple[float, Tensor]:
    """Zero-shot accuracy on frames and the class probabilities ``[N,C]``."""
    probs = label_probabilities(clip, frames, classes)
    return float((probs.argmax(-1).numpy() == labels).mean()), probs


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pretrain_vlm(out: str | Path, settings: VLMSettings = VLMSettings(), progress: bool = True,
                 overwrite: bool = False) -> dict:
    """Pretrain, write ``out/pcmci-tiny-vlm.safetensors`` + ``out/vlm.json`` (+ the loss curve plot); -> the record.
    Weights already in ``out`` are refused before any work unless ``overwrite``."""
    if settings.clips < 1 or settings.epochs < 1:
        raise ConfigError(f"--clips and --epochs must be >= 1, got {settings.clips} and {settings.epochs}")
    if settings.seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {settings.seed}")
    if not 0 <= settings.cooccur <= 1:
        raise ConfigError(f"--cooccur must be a probability in [0, 1], got {settings.cooccur}")
    out = Path(out)
    if (out / WEIGHTS).exists() and not overwrite:
        raise ConfigError(f"{out / WEIGHTS} exists; pass --overwrite to replace it, or another --out")
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    scene = Scene(still_pairs=settings.still_pairs)
    data = caption_pairs(settings.seed, settings.clips, settings.cooccur, settings.frames, scene, progress=progress)
    torch.manual_seed(settings.seed)
    model = open_clip.create_model(MODEL)
    tokens = open_clip.get_tokenizer(MODEL)(data.captions)
    curve = _train(model, _normalise(to_clip_input(data.frames)), tokens, settings, progress)
    state, rows = _state_to_write(model, tokens)
    weights = out / WEIGHTS
    save_file(state, str(weights))
    clip = FrozenCLIP(ClipConfig(name=MODEL, pretrained=str(weights)))
    held = {name: caption_pairs(settings.seed + 1, settings.eval_clips, rate, 1, scene)
            for name, rate in (("cooccurring", settings.cooccur), ("broken", 0.0))}
    accuracy = {name: zero_shot(clip, d.frames, d.labels, d.classes)[0] for name, d in held.items()}
    record = {
        "command": f"pcmci vlm pretrain --out {out} --seed {settings.seed}", "settings": asdict(settings),
        "model": MODEL, "weights": weights.name, "sha256": sha256(weights), "pairs": len(data.captions),
        "distinct_captions": len(set(data.captions)), "trained_embedding_rows": rows,
        "zero_shot_accuracy": accuracy, "loss_per_epoch": curve, "seconds": round(time.time() - started, 1),
        "torch": torch.__version__, "open_clip": open_clip.__version__, "threads": torch.get_num_threads(),
        "classes": data.classes,
    }
    (out / "vlm.json").write_text(json.dumps(record, indent=1) + "\n")
    log.info("VLM written to %s (sha256 %s); zero-shot accuracy: co-occurrence kept %.3f, broken %.3f", weights,
             record["sha256"][:12], accuracy["cooccurring"], accuracy["broken"])
    return record
