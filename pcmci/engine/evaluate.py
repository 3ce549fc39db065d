"""Evaluation: scores for a split, top-1/top-5 accuracy, mAP, per-class table and confusion matrix."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..config import Config, from_dict
from ..model import PCMCI, build_model
from .checkpoint import load_checkpoint
from .metrics import confusion_matrix, mean_average_precision, per_class_ap, topk_accuracy
from .plots import plot_confusion
from .train import make_dataset, resolve_device

log = logging.getLogger(__name__)


def load_model(checkpoint: str | Path, device: torch.device) -> tuple[PCMCI, Config]:
    """Rebuild the trained model (config, labels and dictionaries come from the checkpoint)."""
    state = load_checkpoint(checkpoint)
    cfg = from_dict(state["config"])
    model = build_model(cfg.model, state["labels"]["classes"], state["labels"]["actions"])
    model.load_state_dict(state["model"])
    return model.to(device).eval(), cfg


@torch.no_grad()
def predict(model: PCMCI, loader: DataLoader, device: torch.device, desc: str = "eval",
            progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """-> (class probabilities ``[n,C]``, labels ``[n]``) over a loader."""
    model.eval()
    scores, labels = [], []
    for batch in tqdm(loader, desc=desc, disable=not progress):
        logits = model(batch["video"].to(device))["logits"].float()
        probs = torch.sigmoid(logits) if model.cfg.multilabel else torch.softmax(logits, dim=-1)
        scores.append(probs.cpu().numpy())
        labels.append(batch["label"].numpy())
    return np.concatenate(scores), np.concatenate(labels)


def split_metrics(scores: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Top-1/top-5 accuracy, mAP, per-class accuracy and AP, confusion matrix (rows = truth)."""
    pred = scores.argmax(1)
    ap = per_class_ap(scores, labels)
    per_class = [
        {"class": name, "videos": int((labels == c).sum()),
         "acc": float((pred[labels == c] == c).mean()) if (labels == c).any() else float("nan"),
         "ap": float(ap[c])}
        for c, name in enumerate(classes)
    ]
    return {
        "videos": int(len(labels)),
        "acc": topk_accuracy(scores, labels, 1),
        "top5": topk_accuracy(scores, labels, 5),
        "map": mean_average_precision(scores, labels),
        "per_class": per_class,
        "confusion": confusion_matrix(pred, labels, len(classes)).tolist(),
    }


def per_class_markdown(metrics: dict[str, Any], title: str) -> str:
    lines = [f"### {title}", "", f"Acc {metrics['acc']:.4f} · Top-5 {metrics['top5']:.4f} · mAP {metrics['map']:.4f} "
             f"({metrics['videos']} videos)", "", "| class | videos | acc | AP |", "|---|---:|---:|---:|"]
    lines += [f"| {r['class']} | {r['videos']} | {r['acc']:.3f} | {r['ap']:.3f} |" for r in metrics["per_class"]]
    return "\n".join(lines) + "\n"


def evaluate(checkpoint: str | Path, splits: list[str] | None = None, out_dir: str | Path | None = None,
             manifest: str | None = None, device: str = "auto", batch_size: int | None = None,
             progress: bool = True) -> dict[str, dict[str, Any]]:
    """Evaluate a checkpoint on ``splits`` (default: the config's ``data.eval_splits``).

    Writes ``eval_<split>.json``, ``eval_<split>.md`` and ``confusion_<split>.png`` into ``out_dir``
    (default: the checkpoint's folder) and returns the metrics by split.
    """
    dev = resolve_device(device)
    model, cfg = load_model(checkpoint, dev)
    if manifest:
        cfg.data.manifest = manifest
    out = Path(out_dir or Path(checkpoint).parent)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for split in splits or cfg.data.eval_splits:
        dataset = make_dataset(cfg, split, train=False, labels=None)
        if dataset.labels.classes != model.classes:
            raise ValueError(f"{split}: dataset classes {dataset.labels.classes} differ from the model's {model.classes}")
        loader = DataLoader(dataset, batch_size=batch_size or cfg.optim.batch_size, num_workers=cfg.data.num_workers)
        scores, labels = predict(model, loader, dev, desc=f"eval {split}", progress=progress)
        metrics = split_metrics(scores, labels, model.classes)
        (out / f"eval_{split}.json").write_text(json.dumps(metrics, indent=2))
        (out / f"eval_{split}.md").write_text(per_class_markdown(metrics, split))
        plot_confusion(np.array(metrics["confusion"]), model.classes, out / f"confusion_{split}.png", split)
        log.info("%s: acc %.4f top5 %.4f mAP %.4f", split, metrics["acc"], metrics["top5"], metrics["map"])
        results[split] = metrics
    return results
