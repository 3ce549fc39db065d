"""``pcmci diagnose``: causal diagnostics of a trained checkpoint on any dataset.

- Static-bias probes: accuracy on the clips as sampled, on clips made of one repeated frame (no motion left), on
  time-reversed and on shuffled clips. A motion-reliant model drops on all three; a static-biased one does not.
  A probe that cannot inform about a model by construction is reported as such, without a number (the
  repeated-frame probe of a model that removes the clip's mean frame sees an all-zero clip).
- Counterfactual pairs (synthetic sets, found by their ``meta.json``): each test video re-rendered with the same
  motion, camera and light and another background and distractor (and prop); the flip rate is the share of pairs
  whose prediction changes. Still-object probe: accuracy on the classes that differ only by a still tool.
- What the model follows (synthetic sets): on the test clips whose confounders each point to a class other than the
  label (and to different ones), the share of predictions naming the label, the background's class, the
  distractor's class (and the prop's). It says which confounder a model learned, where accuracy only says that it
  learned one.
- The backdoor weights (a checkpoint trained with ``backdoor.reweight`` on a synthetic set): the weighted share
  of training clips whose background / distractor / prop is their own class's, against the unweighted share and
  ``1/C`` (independence), and the weights' effective sample size — which confounders the references
  found and balanced.
- IVC's mediator over the split: the entropy of ``P(m|V)`` (share of ``log L``; near 0 = every token picks one
  label) and the effective rank of ``M^`` (exp of the entropy of its singular values; near 1 = one mediator for
  every clip, nothing of the video reaches the head).
- Stage maps for one video (``--video``): ICH transport plans and over-alignment maps (labels x frames), ICI's and
  IVC's relation bases, IVC's P(m|V) (tokens x labels), as heatmaps.
Writes ``diagnose.json``, ``diagnose.md`` and PNGs.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from ..data.datasets import build_dataset, preprocess
from ..data.decode import decode_frames, probe
from ..data.sampling import segment_indices
from ..data.synthetic import render_counterfactual
from ..engine.checkpoint import load_checkpoint
from ..engine.evaluate import load_model
from ..engine.plots import plot_grouped_bars, plot_heatmaps
from ..engine.runtime import resolve_device
from ..errors import DataError
from ..model import PCMCI

log = logging.getLogger(__name__)
Classifier = Callable[[Tensor], dict[str, Tensor]]
CONFOUNDERS = ("background", "distractor", "prop")  # a synthetic video's confounder ids; id k is class k's own


class CounterfactualPairs(NamedTuple):
    """Test clips of a synthetic set and their counterfactuals: ``original[n,F,3,H,W]``, ``counterfactual`` (same
    motion, camera and light; every confounder moved to another kind), ``labels[n]``, and ``confounders[n,k]``, the
    original's ids of the confounders named in ``confounder_names`` (id k goes with class k)."""

    original: Tensor
    counterfactual: Tensor
    labels: Tensor
    confounders: Tensor
    confounder_names: tuple[str, ...]


def repeated_frame(clips: Tensor) -> Tensor:
    """``[n,F,...]`` -> every frame replaced by the clip's middle frame."""
    middle = clips[:, clips.shape[1] // 2]
    return middle[:, None].expand_as(clips).contiguous()


def time_reversed(clips: Tensor) -> Tensor:
    return clips.flip(1)


def shuffled(clips: Tensor, seed: int = 0) -> Tensor:
    """Frames permuted by a seeded random F-cycle, so every frame moves (when F > 1)."""
    sigma = torch.randperm(clips.shape[1], generator=torch.Generator().manual_seed(seed))
    order = torch.empty_like(sigma)
    order[sigma] = sigma.roll(-1)
    return clips[:, order]


PROBES: dict[str, Callable[[Tensor], Tensor]] = {
    "original": lambda c: c, "repeated frame": repeated_frame, "time-reversed": time_reversed, "shuffled": shuffled,
}


@torch.no_grad()
def predict_labels(model: Classifier, clips: Tensor, batch: int = 16) -> Tensor:
    """Top-1 class of each clip ``[n,F,3,H,W]`` -> ``[n]``."""
    first = next(model.parameters(), None) if isinstance(model, torch.nn.Module) else None
    device = first.device if first is not None else torch.device("cpu")
    preds = [model(clips[i : i + batch].to(device))["logits"].argmax(-1).cpu() for i in range(0, len(clips), batch)]
    return torch.cat(preds)


def uninformative_probes(model: Classifier) -> dict[str, str]:
    """Probes that say nothing about ``model`` by construction, with the reason."""
    cfg = getattr(model, "cfg", None)
    if cfg is not None and getattr(model, "ivc", None) is not None and cfg.ivc.static_input:
        return {"repeated frame": "model.ivc.static_input removes the clip's mean frame: a repeated-frame clip is an "
                                  "all-zero input, at chance whatever the model learned"}
    return {}


def static_bias_probes(model: Classifier, clips: Tensor, labels: Tensor) -> dict[str, float | None]:
    """Accuracy on each probe's version of ``clips``; ``labels[n]`` class indices. None for a probe that is
    uninformative for this model by construction (:func:`uninformative_probes`)."""
    skip = uninformative_probes(model)
    return {name: None if name in skip else float((predict_labels(model, probe_fn(clips)) == labels).float().mean())
            for name, probe_fn in PROBES.items()}


def still_object_accuracy(pred: Tensor, labels: Tensor, classes: list[int]) -> float | None:
    """Accuracy on the clips whose class is one of ``classes`` (the still-object pairs); None if there are none."""
    keep = torch.isin(labels, torch.tensor(classes, dtype=labels.dtype))
    return float((pred[keep] == labels[keep]).float().mean()) if keep.any() else None


@torch.no_grad()
def mediator_collapse(model: PCMCI, clips: Tensor, batch: int = 16) -> dict[str, float] | None:
    """IVC's ``P(m|V)`` entropy (mean over tokens and clips, as a share of ``log L``) and the effective rank of
    ``M^ = P(m|V) M`` over all tokens of ``clips`` (exp of the Shannon entropy of its normalised singular values).
    Read through a pre-forward hook on IVC while the model runs; None for a model without IVC."""
    if getattr(model, "ivc", None) is None:
        return None
    weights, mediated = [], []

    def capture(stage: torch.nn.Module, args: tuple[Any, ...]) -> None:
        v_prime, m, _ = stage.encode(args[0].video, args[0].texts)
        a = stage.mediator_given(v_prime, m)
        weights.append(a.cpu())
        mediated.append((a @ m).flatten(0, 1).cpu())

    handle = model.ivc.register_forward_pre_hook(capture)
    try:
        predict_labels(model, clips, batch)
    finally:
        handle.remove()
    a = torch.cat(weights).double()
    entropy = float(-(a * a.clamp_min(1e-30).log()).sum(-1).mean() / np.log(a.shape[-1]))
    s = torch.linalg.svdvals(torch.cat(mediated).double())
    p = s / s.sum()
    return {"pm_entropy": entropy, "mediator_effective_rank": float(torch.exp(-(p * p.clamp_min(1e-30).log()).sum())),
            "mediator_rank_max": int(min(a.shape[-1], mediated[0].shape[-1]))}


def flip_rate(pred_a: Tensor, pred_b: Tensor) -> float:
    """Share of pairs whose predictions differ."""
    if pred_a.shape != pred_b.shape or pred_a.numel() == 0:
        raise ValueError(f"flip_rate needs two equal, non-empty prediction vectors, got {pred_a.shape} and {pred_b.shape}")
    return float((pred_a != pred_b).float().mean())


def load_clips(cfg: Any, split: str, limit: int, progress: bool) -> tuple[Tensor, Tensor]:
    """Centre-sampled single-view clips ``[n,F,3,S,S]`` and labels ``[n]`` of ``split`` (at most ``limit``)."""
    data = dataclasses.replace(cfg.data, test_views=1, test_crops=1)
    dataset = build_dataset(data, split, train=False, seed=cfg.run.seed)
    if dataset.multilabel:
        raise DataError("the static-bias probes need a single-label dataset")
    n = min(limit, len(dataset))
    items = [dataset[i] for i in tqdm(range(n), desc=f"loading {split}", disable=not progress)]
    items = [item for item in items if "video" in item]
    if not items:
        raise DataError(f"split {split!r}: no video could be decoded")
    return torch.stack([i["video"] for i in items]), torch.stack([i["label"] for i in items])


def counterfactual_pairs(manifest: Path, split: str, frames: int, image_size: int,
                         limit: int) -> CounterfactualPairs | None:
    """The first ``limit`` clips of ``split`` in a synthetic set and their counterfactuals, both rendered in memory
    (no codec), the counterfactual with the background and distractor (and the prop, in sets with props) each moved
    to another kind; None if not a synthetic set."""
    meta_path = manifest.parent / "meta.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    kinds = len(meta["backgrounds"])
    videos = [v for v in meta["videos"] if v["split"] == split][:limit]
    names = tuple(name for name in CONFOUNDERS if videos and name in videos[0])
    originals, swapped, labels = [], [], []
    for k, video in enumerate(videos):
        shift = 1 + k % (kinds - 1)
        idx = segment_indices(video["num_frames"], frames, train=False)
        own = render_counterfactual(meta, video, video["background"], video["distractor"])
        prop = None if "prop" not in video else (video["prop"] + shift) % kinds
        other = render_counterfactual(meta, video, (video["background"] + shift) % kinds,
                                      (video["distractor"] + shift) % kinds, prop)
        originals.append(preprocess(own[idx], image_size))
        swapped.append(preprocess(other[idx], image_size))
        labels.append(video["label"])
    if not videos:
        return None
    confounders = torch.tensor([[video[name] for name in names] for video in videos])
    return CounterfactualPairs(torch.stack(originals), torch.stack(swapped), torch.tensor(labels), confounders, names)


@torch.no_grad()
def stage_maps(model: PCMCI, frames: Tensor) -> dict[str, np.ndarray]:
    """Intermediate maps of one clip ``frames[1,F,3,H,W]``, captured by a pre-forward hook on each stage while the
    model's own stage loop runs (``PCMCI.run_stages``), so the maps follow the configured order by construction."""
    maps: dict[str, np.ndarray] = {}

    def capture(stage: torch.nn.Module, args: tuple[Any, ...]) -> None:
        maps.update({name: m[0].cpu().numpy() for name, m in stage.maps(args[0]).items()})

    handles = [stage.register_forward_pre_hook(capture) for stage in model.stages()]
    try:
        model.run_stages(model.initial_state(frames.to(model.text.dtype), with_frames=True))
    finally:
        for handle in handles:
            handle.remove()
    return maps


def still_object_classes(cfg: Any, classes: list[str]) -> list[int]:
    """Indices of the classes that differ from a twin only by a still tool (synthetic sets; [] otherwise)."""
    if cfg.data.dataset != "manifest" or not cfg.data.manifest:
        return []
    meta_path = Path(cfg.data.manifest).parent / "meta.json"
    tools = json.loads(meta_path.read_text()).get("tools", {}) if meta_path.is_file() else {}
    return [classes.index(name) for name in tools if name in classes]


def synthetic_pairs(cfg: Any, split: str, limit: int) -> CounterfactualPairs | None:
    """:func:`counterfactual_pairs` of a run's dataset; None unless it is a synthetic manifest set."""
    if cfg.data.dataset != "manifest" or not cfg.data.manifest:
        return None
    return counterfactual_pairs(Path(cfg.data.manifest), split, cfg.data.frames, cfg.data.image_size, limit)


def follows(pred: Tensor, pairs: CounterfactualPairs) -> dict[str, Any] | None:
    """On the clips whose label and confounder ids are all different (each confounder points to another class,
    and to a different one), the share of predictions ``pred[n]`` that name the label and each confounder's class;
    ``clips`` counts them. None when there are no such clips."""
    ids = torch.cat([pairs.labels[:, None], pairs.confounders], 1)
    distinct = torch.tensor([len(set(row.tolist())) == ids.shape[1] for row in ids], dtype=torch.bool)
    if not distinct.any():
        return None
    shares = {name: float((pred[distinct] == ids[distinct, k]).float().mean())
              for k, name in enumerate(("label", *pairs.confounder_names))}
    return {"clips": int(distinct.sum()), **shares}


def score_pairs(model: Classifier, cfg: Any, pairs: CounterfactualPairs) -> dict[str, Any]:
    """A model over counterfactual ``pairs``, one pass over each side: ``pairs`` (how many), ``flip_rate``,
    ``acc_original`` / ``acc_counterfactual``, ``still_object_acc`` (on the originals of the classes told apart only
    by a still tool; None when the set of ``cfg`` has none) and ``follows`` (:func:`follows`)."""
    own, other = predict_labels(model, pairs.original), predict_labels(model, pairs.counterfactual)
    return {"pairs": len(pairs.labels), "flip_rate": flip_rate(own, other),
            "acc_original": float((own == pairs.labels).float().mean()),
            "acc_counterfactual": float((other == pairs.labels).float().mean()),
            "still_object_acc": still_object_accuracy(own, pairs.labels, still_object_classes(cfg, model.classes)),
            "follows": follows(own, pairs)}


def counterfactual_scores(checkpoint: str | Path, pairs: CounterfactualPairs,
                          device: str = "auto") -> dict[str, Any]:
    """:func:`score_pairs` of a trained checkpoint, and ``weights``, the balance of its backdoor weights
    (:func:`backdoor_balance`, None without them)."""
    model, cfg = load_model(checkpoint, resolve_device(device))
    return {**score_pairs(model, cfg, pairs), "weights": backdoor_balance(checkpoint, cfg)}


def backdoor_balance(checkpoint: str | Path, cfg: Any) -> dict[str, Any] | None:
    """How far the backdoor weights (kept in the checkpoint) balance each confounder of a synthetic training
    split: per confounder the share of clips whose id is their own class's, ``unweighted`` and ``weighted``, beside
    ``independence`` (``1/C``, a confounder that says nothing of the label); ``effective_size`` is
    ``(sum w)^2 / sum w^2``. None without weights or without the set's ``meta.json``."""
    meta_path = Path(cfg.data.manifest).parent / "meta.json" if cfg.data.manifest else None
    if meta_path is None or not meta_path.is_file():
        return None  # not a synthetic set: checked first, so a real dataset's checkpoint is not loaded twice
    weights = load_checkpoint(Path(checkpoint), map_location="cpu").get("clip_weights")
    if weights is None:
        return None
    meta = json.loads(meta_path.read_text())
    dataset = build_dataset(cfg.data, cfg.data.train_split, train=False)
    by_path = {video["path"]: video for video in meta["videos"]}
    root = meta_path.parent.resolve()
    videos = [by_path.get(Path(r.path).resolve().relative_to(root).as_posix()) for r in dataset.records]
    if len(videos) != len(weights) or any(v is None for v in videos):
        return None  # the manifest was edited after the weights were fitted
    w = weights.double()
    label = torch.tensor([v["label"] for v in videos])
    names = [name for name in CONFOUNDERS if name in videos[0]]
    own = {name: (torch.tensor([v[name] for v in videos]) == label).double() for name in names}
    return {"clips": len(videos), "independence": 1.0 / len(meta["activities"]),
            "effective_size": float(w.sum() ** 2 / (w * w).sum()),
            "unweighted": {name: float(o.mean()) for name, o in own.items()},
            "weighted": {name: float((w * o).sum() / w.sum()) for name, o in own.items()}}


@torch.no_grad()
def label_codependency(model: PCMCI, clip: Tensor) -> dict[str, Any] | None:
    """How the text stages move codependent class labels: the cosine similarity of every pair of class texts at
    CLIP's ``LN(T)`` and after the stages (``T*``), and its mean over the pairs that share a word ("make coffee" /
    "make tea") and over the rest. ``clip[1,F,3,H,W]`` only feeds the state (the text stages do not read it with
    ICH's default adjustment). None when no stage changes the texts."""
    state = model.initial_state(clip)
    c = model.num_queries
    before, after = state.texts[0, :c].double(), model.run_stages(state).texts[0, :c].double()
    if torch.equal(before, after):
        return None
    cos_t = F.normalize(before, dim=-1) @ F.normalize(before, dim=-1).T
    cos_s = F.normalize(after, dim=-1) @ F.normalize(after, dim=-1).T
    words = [set(name.split()) for name in model.classes]
    pairs = [{"labels": [model.classes[a], model.classes[b]], "shared": bool(words[a] & words[b]),
              "cos_T": float(cos_t[a, b]), "cos_T_star": float(cos_s[a, b])} for a in range(c) for b in range(a + 1, c)]

    def mean(shared: bool, key: str) -> float | None:
        values = [p[key] for p in pairs if p["shared"] == shared]
        return float(np.mean(values)) if values else None

    return {"pairs": pairs, "sharing_a_word": {"T": mean(True, "cos_T"), "T*": mean(True, "cos_T_star")},
            "other": {"T": mean(False, "cos_T"), "T*": mean(False, "cos_T_star")}}


def diagnose(checkpoint: str | Path, split: str | None = None, video: str | None = None,
             out: str | Path | None = None, limit: int = 200, device: str = "auto",
             progress: bool = True) -> dict[str, Any]:
    """Run the probes (and the maps for ``video``, decoded before any probe: a bad file stops the run before it
    writes into ``out``); returns the report, also written under ``out``."""
    dev = resolve_device(device)
    model, cfg = load_model(checkpoint, dev)
    split = split or cfg.data.eval_splits[-1]
    path, raw = (Path(video) if video else None), None
    if path is not None:
        info = probe(path)
        raw, _ = decode_frames(path, segment_indices(info.num_frames, cfg.data.frames, train=False,
                                                     pad=cfg.data.pad_short_videos), cfg.data.backend, info)
    out = Path(out) if out else Path(checkpoint).parent / "diagnose"
    out.mkdir(parents=True, exist_ok=True)
    clips, labels = load_clips(cfg, split, limit, progress)
    report: dict[str, Any] = {"checkpoint": str(checkpoint), "split": split, "videos": len(labels),
                              "stages": model.order, "probes": static_bias_probes(model, clips, labels),
                              "uninformative": uninformative_probes(model)}
    still = still_object_classes(cfg, model.classes)
    if still:
        report["still_object"] = {"classes": [model.classes[i] for i in still],
                                  "acc": still_object_accuracy(predict_labels(model, clips), labels, still)}
    report["mediator"] = mediator_collapse(model, clips)
    report["label_codependency"] = label_codependency(model, clips[:1].to(dev))
    pairs = synthetic_pairs(cfg, split, limit)
    if pairs is not None:
        report["counterfactual"] = score_pairs(model, cfg, pairs)
        report["follows"] = report["counterfactual"].pop("follows")
    report["weights"] = backdoor_balance(checkpoint, cfg)
    plot_grouped_bars({"accuracy": {k: (v, 0.0) for k, v in report["probes"].items() if v is not None}},
                      out / "probes.png", "top-1 accuracy", f"static-bias probes on {split}")
    if raw is not None:
        maps = stage_maps(model, preprocess(raw, cfg.data.image_size)[None].to(dev))
        if maps:
            plot_heatmaps(maps, out / "stage_maps.png", model.classes + model.actions)
        report["video"] = {"path": str(path), "maps": {k: v.round(4).tolist() for k, v in maps.items()}}
    (out / "diagnose.json").write_text(json.dumps(report, indent=2))
    (out / "diagnose.md").write_text(markdown(report))
    return report


def markdown(report: dict[str, Any]) -> str:
    probes, skipped = report["probes"], report.get("uninformative", {})
    rows = [f"| {name} | uninformative for this model: {skipped[name]} | |" if acc is None else
            f"| {name} | {acc:.4f} | {acc - probes['original']:+.4f} |" for name, acc in probes.items()]
    lines = [
        f"# Diagnostics: {report['checkpoint']}",
        "",
        f"Split `{report['split']}`, {report['videos']} videos, stages `{report['stages']}`.",
        "",
        "## Static-bias probes",
        "",
        "| clips | accuracy | vs original |",
        "|---|---:|---:|",
        *rows,
        "",
        "A model that reads motion falls towards chance on repeated-frame clips and loses accuracy on reversed or "
        "shuffled ones; a model that reads the static context (background, props) keeps its accuracy.",
        "",
        "![probes](probes.png)",
        "",
    ]
    if report.get("still_object"):
        so = report["still_object"]
        lines += ["## Still-object probe", "", f"Accuracy on the classes that differ only by a still tool "
                  f"({', '.join(so['classes'])}): **{so['acc']:.4f}**. A model that removes what stands still cannot "
                  "tell them apart.", ""]
    lines += _codependency_lines(report.get("label_codependency"))
    if report.get("mediator"):
        med = report["mediator"]
        lines += ["## IVC mediator", "", f"Entropy of P(m|V): {med['pm_entropy']:.3f} of log L (0 = every token picks "
                  f"one label); effective rank of M^ over the split: {med['mediator_effective_rank']:.2f} of at most "
                  f"{med['mediator_rank_max']} (1 = the same mediator for every clip: little of the video reaches the "
                  "head).", ""]
    if "counterfactual" in report:
        c = report["counterfactual"]
        lines += ["## Counterfactual pairs (same motion, other background, distractor and prop if any)", "",
                  f"{c['pairs']} pairs: flip rate **{c['flip_rate']:.4f}**; accuracy {c['acc_original']:.4f} on the "
                  f"originals, {c['acc_counterfactual']:.4f} on the counterfactuals.", ""]
    lines += follows_lines(report.get("follows")) + balance_lines(report.get("weights"))
    if "video" in report:
        drawn = "![stage maps](stage_maps.png)" if report["video"]["maps"] else "No stages in this model: nothing to draw."
        lines += [f"## Stage maps for `{report['video']['path']}`", "", drawn, ""]
    return "\n".join(lines)


def follows_lines(fol: dict[str, Any] | None) -> list[str]:
    """The "what the model follows" section (nothing when the set has no such clips)."""
    if not fol:
        return []
    names = [k for k in fol if k != "clips"]
    return ["## What the model follows", "",
            f"On the {fol['clips']} clips whose label and confounders each point to a different class, the share of "
            "predictions that name:", "",
            "| " + " | ".join(names) + " |", "|" + "---:|" * len(names),
            "| " + " | ".join(f"{fol[k]:.3f}" for k in names) + " |", "",
            "A model that reads the cause names the label; one that reads a confounder names that confounder's class.",
            ""]


def balance_lines(bal: dict[str, Any] | None) -> list[str]:
    """The section on the backdoor weights (nothing without them)."""
    if not bal:
        return []
    rows = [f"| {name} | {bal['unweighted'][name]:.3f} | {bal['weighted'][name]:.3f} | {bal['independence']:.3f} |"
            for name in bal["weighted"]]
    return ["## The backdoor weights", "",
            f"{bal['clips']} training clips, effective sample size {bal['effective_size']:.0f}. Share of clips whose "
            "confounder is their own class's:", "",
            "| confounder | unweighted | weighted | independence (1/C) |", "|---|---:|---:|---:|", *rows, "",
            "A confounder the references found is near independence in the weighted data; one they "
            "missed keeps its unweighted share.", ""]


def _codependency_lines(dep: dict[str, Any] | None) -> list[str]:
    if not dep:
        return []
    shared, other = dep["sharing_a_word"], dep["other"]
    lines = ["## Label codependency (text stages)", "",
             "Mean cosine similarity of class label texts, at CLIP's T and after the text stages (T*):", "",
             "| pairs | T | T* |", "|---|---:|---:|"]
    for name, m in (("sharing a word", shared), ("the rest", other)):
        if m["T"] is not None:
            lines.append(f"| {name} | {m['T']:.3f} | {m['T*']:.3f} |")
    lines += ["", "| label pair | shares a word | T | T* |", "|---|---|---:|---:|"]
    lines += [f"| {p['labels'][0]} / {p['labels'][1]} | {'yes' if p['shared'] else ''} | {p['cos_T']:.3f} | "
              f"{p['cos_T_star']:.3f} |" for p in dep["pairs"] if p["shared"]]
    return lines + [""]
