"""Training loop, readable top to bottom: data -> model -> dictionaries -> optimiser -> epochs -> checkpoints.

Every epoch ends with an atomic checkpoint (model incl. dictionaries, optimiser, scheduler, RNG, epoch, config,
labels); ``resume=True`` continues from it and reproduces the uninterrupted run, since the data order and the
sampling offsets are functions of (seed, epoch, index) only. AMP is bf16 autocast on CUDA (no loss scaler).
"""
from __future__ import annotations

import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from ..config import Config, from_dict, to_dict
from ..data.datasets import LabelSet, VideoDataset, build_dataset, collate_videos
from ..data.loader import make_loader
from ..model import PCMCI, build_model
from ..model.weights import require_weights
from .checkpoint import load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"run.device={name!r} but CUDA is not available on this machine")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_labels(cfg: Config) -> LabelSet | None:
    """The label file named by ``data.labels``; None lets the dataset find ``labels.json`` by the manifest."""
    return LabelSet.load(cfg.data.labels) if cfg.data.labels else None


def make_dataset(cfg: Config, split: str, train: bool, labels: LabelSet | None) -> VideoDataset:
    """The ``data.dataset`` adapter's ``split`` (manifest, breakfast, coin or charades)."""
    return build_dataset(cfg.data, split, train, seed=cfg.run.seed, labels=labels)


def cosine_with_warmup(total_steps: int, warmup_steps: int) -> Any:
    """LR multiplier: linear warm-up to 1, then cosine decay to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def make_optimizer(cfg: Config, model: PCMCI) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    kind = torch.optim.AdamW if cfg.optim.name == "adamw" else torch.optim.Adam
    return kind(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)


def build_dictionaries(cfg: Config, model: PCMCI, dataset: VideoDataset, device: torch.device) -> None:
    """Fit the k-means strata on the first ``data.dictionary_batches`` batches (centre-sampled clips)."""
    if model.dictionaries_ready:
        return
    count = min(len(dataset), cfg.data.dictionary_batches * cfg.optim.batch_size)
    centre = make_dataset(cfg, cfg.data.train_split, train=False, labels=dataset.labels)
    loader = DataLoader(Subset(centre, range(count)), batch_size=cfg.optim.batch_size,
                        num_workers=cfg.data.num_workers, collate_fn=collate_videos)
    batches = [b["video"].to(device) for b in tqdm(loader, desc="dictionaries", disable=not cfg.run.progress)
               if "video" in b]
    used = model.build_dictionaries(batches, seed=cfg.run.seed)
    log.info("fitted confounder dictionaries on %s feature vectors", used)


def train(cfg: Config, resume: bool = False) -> Path:
    """Train ``cfg``; returns the checkpoint path (``run.out_dir/checkpoint.pt``)."""
    if not resume:
        require_weights(cfg.model)  # model.allow_random_init=false: missing pretrained weights stop here
    out = Path(cfg.run.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path, metrics_path = out / "checkpoint.pt", out / "metrics.jsonl"
    device = resolve_device(cfg.run.device)
    state = None
    if resume:
        state = load_checkpoint(ckpt_path)
        saved = from_dict(state["config"])
        if to_dict(saved.model) != to_dict(cfg.model):
            raise ValueError(f"--resume: model config differs from the one in {ckpt_path}")
    seed_everything(cfg.run.seed)

    dataset = make_dataset(cfg, cfg.data.train_split, train=True, labels=load_labels(cfg))
    model = build_model(cfg.model, dataset.labels.classes, dataset.labels.actions).to(device)
    optimizer = make_optimizer(cfg, model)
    steps_per_epoch = math.ceil(len(dataset) / cfg.optim.batch_size)
    total_steps = cfg.optim.epochs * steps_per_epoch
    warmup = max(1, int(cfg.optim.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(total_steps, warmup))
    use_amp = cfg.optim.amp and device.type == "cuda"
    start_epoch = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        start_epoch = state["epoch"] + 1
        kept = [line for line in (metrics_path.read_text().splitlines() if metrics_path.is_file() else [])
                if line.strip() and json.loads(line)["epoch"] < start_epoch]
        metrics_path.write_text("".join(line + "\n" for line in kept))
        log.info("resuming %s from epoch %d", ckpt_path, start_epoch)
    else:
        build_dictionaries(cfg, model, dataset, device)
        metrics_path.write_text("")

    step = start_epoch * steps_per_epoch
    for epoch in range(start_epoch, cfg.optim.epochs):
        loader = make_loader(dataset, cfg.optim.batch_size, device, shuffle=True, epoch=epoch,
                             num_workers=cfg.data.num_workers)
        model.train()
        tic, seen, loss_sum, correct, bad = time.perf_counter(), 0, 0.0, 0, []
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.optim.epochs}", disable=not cfg.run.progress)
        with metrics_path.open("a") as metrics_file:
            for batch in bar:
                bad += batch["bad"]
                if "video" not in batch:
                    continue
                frames, target = batch["video"].to(device), batch["label"].to(device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    out = model(frames)
                    loss = model.loss(out, target, batch["steps"].to(device))
                loss_value = loss.item()
                if not math.isfinite(loss_value):
                    raise FloatingPointError(f"non-finite loss {loss_value} at epoch {epoch} step {step}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                optimizer.step()
                scheduler.step()
                step += 1
                n = frames.shape[0]
                seen, loss_sum = seen + n, loss_sum + loss_value * n
                if not cfg.model.multilabel:
                    correct += int((out["logits"].argmax(-1) == target).sum())
                record = {"step": step, "epoch": epoch, "loss": loss_value, "lr": scheduler.get_last_lr()[0],
                          "grad_norm": float(grad_norm)}
                metrics_file.write(json.dumps(record) + "\n")
                bar.set_postfix(loss=f"{loss_value:.3f}")
            summary = {"epoch": epoch, "train_loss": loss_sum / max(1, seen), "train_acc": correct / max(1, seen),
                       "seconds": time.perf_counter() - tic, "skipped_videos": len(bad)}
            metrics_file.write(json.dumps(summary) + "\n")
        if bad:
            log.warning("epoch %d: skipped %d undecodable video(s):\n  %s", epoch, len(bad), "\n  ".join(sorted(bad)))
        log.info("epoch %d: loss %.4f acc %.3f", epoch, summary["train_loss"], summary["train_acc"])
        save_checkpoint(ckpt_path, {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
            "epoch": epoch,
            "config": to_dict(cfg),
            "labels": {"classes": dataset.labels.classes, "actions": dataset.labels.actions},
        })
    return ckpt_path
