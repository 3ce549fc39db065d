"""Evaluation: scores for a split, top-1/top-5 accuracy, mAP, per-class table and confusion matrix."""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..config import Config, from_dict
from ..data.loader import make_loader
from ..data.records import LabelSet
from ..errors import CheckpointError
from ..model import PCMCI, build_model
from ..model.clip import names_a_file
from . import distributed
from .checkpoint import load_checkpoint
from .metrics import confusion_matrix, mean_average_precision, per_class_ap, topk_accuracy
from .plots import plot_confusion
from .run_state import use_compile
from .runtime import make_dataset, resolve_device

log = logging.getLogger(__name__)


def load_model(checkpoint: str | Path, device: torch.device) -> tuple[PCMCI, Config]:
    """Rebuild the trained model (config, labels and dictionaries come from the checkpoint)."""
    state = load_checkpoint(checkpoint)
    cfg = from_dict(state["config"])
    clip = cfg.model.clip
    if clip.pretrained and names_a_file(clip.pretrained) and not Path(clip.pretrained).expanduser().is_file():
        clip.pretrained = None  # the checkpoint holds CLIP's tensors: the file trained from need not be on this machine
    if "labels" not in state:
        raise CheckpointError(f"checkpoint {checkpoint} lacks 'labels'; was it written by pcmci train?")
    model = build_model(cfg.model, state["labels"]["classes"], state["labels"]["actions"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:  # missing / unexpected keys, shapes: weights that are not this config's model
        raise CheckpointError(f"checkpoint {checkpoint}: its weights do not fit the model its config and labels "
                              f"build ({' '.join(str(exc).split())[:300]})") from exc
    dtype = torch.float64 if cfg.run.dtype == "float64" and device.type == "cpu" else torch.float32
    return model.to(device, dtype).eval(), cfg


def check_labels(trained: list[str], given: list[str], where: str) -> None:
    """``ValueError`` naming how the classes ``given`` by ``where`` differ from the checkpoint's ``trained`` ones."""
    if given == trained:
        return
    new, gone = [c for c in given if c not in trained], [c for c in trained if c not in given]
    if new or gone:
        detail = f"{len(new)} unknown to the checkpoint {new[:5]}, {len(gone)} of its classes absent {gone[:5]}"
    elif len(given) != len(trained):
        detail = f"{len(given)} class entries against the checkpoint's {len(trained)} (a class listed twice)"
    else:
        i = next(i for i, (a, b) in enumerate(zip(trained, given)) if a != b)
        detail = f"the same classes in another order (index {i}: checkpoint {trained[i]!r}, {where} {given[i]!r})"
    raise ValueError(f"{where} has other labels than the checkpoint ({len(trained)} classes): {detail}; "
                     "evaluate with the label set the model was trained on")


@torch.no_grad()
def predict(model: PCMCI, loader: Iterable[dict[str, Any]], device: torch.device, desc: str = "eval",
            progress: bool = True, skipped: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """-> (class probabilities ``[n,C]``, labels ``[n]`` or multi-hot ``[n,C]``) over a loader.

    Multi-view items ``video[B,V,F,3,S,S]`` get the mean of their V views' probabilities. Videos the
    loader skipped (``batch["bad"]``) are appended to ``skipped``. Under ``torch.distributed`` each rank scores
    its shard and every rank returns all rows, in dataset order.
    """
    model.eval()
    scores, labels, index = [], [], []
    for batch in tqdm(loader, desc=desc, disable=not progress):
        if skipped is not None:
            skipped += batch.get("bad", [])
        if "video" not in batch:
            continue
        video = batch["video"].to(device)
        views = video.shape[1] if video.ndim == 6 else 1
        logits = model(video.flatten(0, 1) if views > 1 else video)["logits"].float()
        probs = model.probabilities(logits)
        scores.append(probs.unflatten(0, (-1, views)).mean(1).cpu().numpy())
        labels.append(batch["label"].cpu().numpy())
        index.append(np.asarray(batch.get("index", [])))
    if not scores:
        raise ValueError(f"{desc}: no video could be decoded")
    if distributed.active():
        _, all_scores, all_labels = distributed.gather_by_index(np.concatenate(index), np.concatenate(scores),
                                                                np.concatenate(labels))
        return all_scores, all_labels
    return np.concatenate(scores), np.concatenate(labels)


def split_metrics(scores: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Top-1/top-5 accuracy, mAP, per-class accuracy and AP, confusion matrix (rows = truth).

    Multi-hot ``labels[n,C]``: top-k counts a hit when any of the k best classes is a positive; per-class
    accuracy and the confusion matrix are single-label notions and are left out (NaN / absent).
    """
    if labels.ndim == 2:
        top = np.argsort(-scores, axis=1, kind="stable")[:, :5]
        ap = per_class_ap(scores, labels)
        return {
            "videos": int(len(labels)),
            "acc": float(np.take_along_axis(labels, top[:, :1], 1).any(1).mean()),
            "top5": float(np.take_along_axis(labels, top, 1).any(1).mean()),
            "map": mean_average_precision(scores, labels),
            "per_class": [{"class": name, "videos": int(labels[:, c].sum()), "acc": float("nan"), "ap": float(ap[c])}
                          for c, name in enumerate(classes)],
        }
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
    (default: the checkpoint's folder) and returns the metrics by split. Under ``torchrun`` every rank scores
    its shard, the scores are gathered and rank 0 writes the files. ``run.compile`` applies as in training.
    """
    ctx = distributed.setup(resolve_device(device))
    dev = ctx.device
    model, cfg = load_model(checkpoint, dev)
    net = torch.compile(model) if use_compile(cfg.run.compile, dev) else model
    if manifest:
        cfg.data.manifest = manifest
    out = Path(out_dir or Path(checkpoint).parent)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    # a manifest's rows name their classes: read them against the checkpoint's label set, so a manifest without
    # labels.json (classes then come sorted from its rows), with another order or with a class missing evaluates
    # the same videos the same way; an adapter's datasets (Breakfast, COIN, Charades) fix their own label set
    label_set = LabelSet(model.classes, model.actions) if cfg.data.dataset == "manifest" else None
    for split in splits or cfg.data.eval_splits:
        dataset = make_dataset(cfg, split, train=False, labels=label_set)
        check_labels(model.classes, dataset.labels.classes,
                     f"the {split!r} split of {cfg.data.manifest or cfg.data.root or cfg.data.dataset}")
        loader = make_loader(dataset, batch_size or cfg.optim.batch_size, dev, num_workers=cfg.data.num_workers)
        skipped: list[str] = []
        scores, labels = predict(net, loader, dev, desc=f"eval {split}", progress=progress and ctx.main,
                                 skipped=skipped)
        skipped = distributed.gather_lists(skipped)
        metrics = {**split_metrics(scores, labels, model.classes), "views": dataset.views, "skipped": sorted(set(skipped))}
        results[split] = metrics
        if not ctx.main:
            continue
        if skipped:
            log.warning("%s: skipped %d undecodable video(s):\n  %s", split, len(skipped), "\n  ".join(sorted(skipped)))
        (out / f"eval_{split}.json").write_text(json.dumps(metrics, indent=2))
        (out / f"eval_{split}.md").write_text(per_class_markdown(metrics, split))
        if "confusion" in metrics:
            plot_confusion(np.array(metrics["confusion"]), model.classes, out / f"confusion_{split}.png", split)
        log.info("%s: acc %.4f top5 %.4f mAP %.4f", split, metrics["acc"], metrics["top5"], metrics["map"])
    return results
