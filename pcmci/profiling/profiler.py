"""``profile_model(cfg, options) -> report dict``: parameters, FLOPs (fvcore, cross-checked), latency and memory.

Accounting: the CLIP text tower runs once per label set when the model is built (``T`` is a parameter initialised
from its embeddings), so it is not on the inference path: its parameters are listed but excluded from
``params.total`` and it contributes no forward FLOPs. FLOPs are counted on CPU (they do not depend on the device)
for one video = ``views`` clips of ``frames`` frames, CLIP encoding every frame of every view.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from fvcore.nn import parameter_count
from torch import nn

from ..config import Config, ConfigError, to_dict
from ..engine.runtime import resolve_device
from ..model import PCMCI, build_model
from . import analytic
from .flops import FvcoreCount, fvcore_count, torch_count
from .opcount import OpRecorder
from .paper import budget_check, comparison
from .report import write_report
from .timing import measure_inference, measure_train_step

TOLERANCE = 0.02
CONVENTION = ("1 FLOP = 1 multiply-add (fvcore's and TimeSformer's convention); torch.utils.flop_counter counts 2 "
              "and is halved for the cross-check")
# group -> module path; clip_text is everything in the open_clip model but the image tower
MODULES = {"clip_visual": "clip.model.visual", "clip_text": "clip", "timesformer": "video", "label_texts": "text",
           "ich": "ich", "ici": "ici", "ivc": "ivc", "head": "head"}
NOT_COUNTED = ("clip_text",)
# Upper bounds far above any real run, so a mistyped size is refused at once instead of exhausting memory while
# the inputs or label texts are allocated (the allocator's raw error, or a machine swapping for minutes).
LIMITS = {"batch": 4096, "views": 64, "classes": 10_000, "actions": 10_000}


@dataclass
class ProfileOptions:
    """What to run: ``views`` clips per video for FLOPs (None = ``cfg.data.test_views``), ``batch`` clips for
    timing, ``classes``/``actions`` label texts (Breakfast: 10 activities, 48 atomic actions)."""

    device: str = "cpu"  # auto: CUDA when available
    batch: int = 1
    views: int | None = None
    classes: int = 10
    actions: int = 48
    warmup: int = 2
    repeats: int = 5
    train: bool = True
    compile: bool | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for key, least in (("batch", 1), ("views", 1), ("classes", 1), ("actions", 0), ("warmup", 0), ("repeats", 1)):
            value = getattr(self, key)
            if value is not None and value < least:
                raise ConfigError(f"profile: {key} must be at least {least}, got {value}")
        for key, most in LIMITS.items():
            value = getattr(self, key)
            if value is not None and value > most:
                raise ConfigError(f"profile: {key} must be at most {most}, got {value}")
        self.device = str(resolve_device(self.device))  # CUDA asked for without it: refused before the model is built


def _group_of(name: str) -> str | None:
    if name.startswith("clip.model.visual."):
        return "clip_visual"
    return next((g for g, path in MODULES.items() if name == path or name.startswith(path + ".")), None)


def param_report(model: PCMCI) -> dict[str, Any]:
    """fvcore ``parameter_count`` per module group; ``total`` leaves out the groups in ``NOT_COUNTED``."""
    counts = parameter_count(model)
    trainable = dict.fromkeys(MODULES, 0)
    for name, p in model.named_parameters():
        group = _group_of(name)
        if group is None:
            raise RuntimeError(f"parameter {name} is in none of the module groups {list(MODULES)}")
        trainable[group] += p.numel() if p.requires_grad else 0
    by_module = {g: {"params": counts.get(path, 0), "trainable": trainable[g], "counted": g not in NOT_COUNTED}
                 for g, path in MODULES.items()}
    by_module["clip_text"]["params"] -= by_module["clip_visual"]["params"]
    counted = [g for g in by_module.values() if g["counted"]]
    total = sum(g["params"] for g in counted)
    train = sum(g["trainable"] for g in counted)
    return {
        "total": total, "trainable": train, "frozen": total - train, "all": counts[""],
        "excluded": {g: by_module[g]["params"] for g in NOT_COUNTED},
        "buffers": sum(b.numel() for b in model.buffers()),
        "by_module": by_module,
    }


def stage_paths(model: PCMCI) -> dict[str, str]:
    """Forward stages in execution order -> module path."""
    names = ["clip_visual", "timesformer", *model.order, "head"]
    return {n: MODULES[n] for n in names}


def _module_flops(count: FvcoreCount, path: str) -> int:
    return count.by_module.get(path, 0)


def flop_report(model: PCMCI, count: FvcoreCount, views: int) -> dict[str, Any]:
    """FLOPs of one video (``views`` clips) per module group, per stage, per operator, and the skipped ops."""
    by_module = {g: _module_flops(count, p) for g, p in MODULES.items()}
    by_module["clip_text"] = _module_flops(count, "clip.model") - by_module["clip_visual"]  # 0: not run
    by_module["other"] = count.total - sum(by_module.values())  # frame resize/normalise, glue between stages
    return {
        "convention": CONVENTION, "total": count.total, "per_view": count.total / views, "views": views,
        "by_module": by_module,
        "by_stage": {s: _module_flops(count, p) for s, p in stage_paths(model).items()},
        "by_operator": dict(sorted(count.by_operator.items(), key=lambda kv: -kv[1])),
        "skipped": count.skipped, "skipped_matmul": count.skipped_matmul,
    }


def _row(what: str, kind: str, measured: float, reference: float) -> dict[str, Any]:
    rel = abs(measured - reference) / max(abs(reference), 1)
    return {"what": what, "kind": kind, "fvcore": measured, "reference": reference, "rel_diff": rel,
            "ok": rel <= TOLERANCE}


def cross_check(model: PCMCI, frames: torch.Tensor, count: FvcoreCount) -> dict[str, Any]:
    """fvcore vs ``FlopCounterMode`` (total and per stage, without the norms torch does not count), vs the
    closed-form counts of the TimeSformer and the CLIP image tower, and each fused op's handle vs an independent
    count of its unrolled reference math (``opcount``).

    ``ok`` requires every row within ``TOLERANCE``. (``FlopCounterMode`` runs eagerly and would also count ops
    whose results are never used, which the JIT trace drops: a stage row that disagrees points at dead compute.)
    """
    with OpRecorder() as recorder:
        torch_macs = torch_count(model, (frames,))
    no_norm = count.torch_comparable_by_module
    rows = [_row("total vs FlopCounterMode/2 (norms excluded)", "total", count.torch_comparable, torch_macs[""])]
    rows += [_row(f"{s} vs FlopCounterMode/2", "stage", no_norm.get(p, 0), torch_macs.get(p, 0))
             for s, p in stage_paths(model).items()]
    vision = open_clip.get_model_config(model.cfg.clip.name)["vision_cfg"]
    clips, frames_per_clip = frames.shape[:2]
    clip_macs = analytic.clip_visual_macs(vision["image_size"], vision["patch_size"], vision["width"], vision["layers"],
                                          vision.get("mlp_ratio", 4.0), model.clip.embed_dim, clips * frames_per_clip)
    video_macs = analytic.timesformer_macs(model.cfg.timesformer, model.clip.embed_dim, clips)
    rows.append(_row("timesformer vs closed form", "closed form", _module_flops(count, "video"), video_macs))
    clip_macs = clip_macs if model.reads_frames else 0  # no stage reads VP at inference: the tower must not run
    rows.append(_row("clip_visual vs closed form", "closed form", _module_flops(count, "clip.model.visual"), clip_macs))
    rows += [_row(f"pcmci::{op} vs its unrolled reference", "op", count.by_operator.get(op, 0), macs)
             for op, macs in sorted(recorder.counts().items())]
    return {"tolerance": TOLERANCE, "ok": all(r["ok"] for r in rows), "rows": rows}


def profile_labels(options: ProfileOptions) -> tuple[list[str], list[str]]:
    """The label texts a profile builds the model with: ``classes`` activities and ``actions`` atomic actions."""
    return [f"activity {i}" for i in range(options.classes)], [f"action {i}" for i in range(options.actions)]


class _DictionaryFeatures(nn.Module):
    """What fitting the dictionaries computes per clip: the stage inputs (CLIP frames included, which ICH's proxy
    reads even when no forward does) and each stage's dictionary features, stage after stage."""

    def __init__(self, model: PCMCI) -> None:
        super().__init__()
        self.model = model

    def forward(self, frames: torch.Tensor) -> list[torch.Tensor]:
        state = self.model.initial_state(frames, with_frames=self.model.ich is not None)
        feats = []
        for stage in self.model.stages():
            found = stage.dictionary_features(state)
            if found is not None:
                feats.append(found)
            state = stage(state)
        return feats


def profile_model(cfg: Config, options: ProfileOptions, name: str = "") -> dict[str, Any]:
    """Build the model of ``cfg`` (random weights where none are cached), fit its k-means dictionaries on one
    random video, and measure it. Returns the report dict (``write_report`` writes it)."""
    torch.manual_seed(options.seed)
    views = options.views or cfg.data.test_views
    tcfg = cfg.model.timesformer
    model = build_model(cfg.model, *profile_labels(options)).eval()
    video = torch.rand(views, tcfg.frames, 3, tcfg.img_size, tcfg.img_size)
    fitted = model.build_dictionaries([video], seed=options.seed)
    count = fvcore_count(model, (video,))
    fitting = fvcore_count(_DictionaryFeatures(model), (video,)).total if model.dictionaries() else 0
    report: dict[str, Any] = {
        "name": name, "config": to_dict(cfg), "torch": torch.__version__,
        "inputs": {"views": views, "frames": tcfg.frames, "image_size": tcfg.img_size, "classes": options.classes,
                   "actions": options.actions,
                   "dictionaries": {"fitted_on": fitted, "note": "k-means on one random video",
                                    "flops_per_video": fitting},
                   "clip_frames_at_inference": model.reads_frames},
        "params": param_report(model),
        "flops": flop_report(model, count, views),
        "cross_check": cross_check(model, video, count),
    }
    report["budget"] = budget_check(report["params"]["total"], report["flops"]["total"])
    report["comparison"] = comparison(name, report["params"]["total"], report["flops"]["total"])
    report["latency"] = latency_report(model, cfg, options)
    return report


def run_profile(cfg: Config, options: ProfileOptions, out_dir: str | Path, name: str = "") -> dict[str, Path]:
    """Profile, write the report, then raise ``RuntimeError`` when the FLOP cross-check failed."""
    report = profile_model(cfg, options, name)
    paths = write_report(report, out_dir)
    check = report["cross_check"]
    if not check["ok"]:
        bad = "; ".join(f"{r['what']}: {r['rel_diff']:.2%}" for r in check["rows"] if not r["ok"])
        raise RuntimeError(
            f"FLOP cross-check disagrees by more than {check['tolerance']:.0%} ({bad}); see {paths['markdown']}")
    return paths


def latency_report(model: PCMCI, cfg: Config, options: ProfileOptions) -> dict[str, Any]:
    device = resolve_device(options.device)
    model.to(device)
    tcfg = cfg.model.timesformer
    frames = torch.rand(options.batch, tcfg.frames, 3, tcfg.img_size, tcfg.img_size, device=device)
    stages: dict[str, nn.Module] = {s: model.get_submodule(p) for s, p in stage_paths(model).items()}
    amp = cfg.optim.amp and device.type == "cuda"
    out: dict[str, Any] = {
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"cpu ({torch.get_num_threads()} threads)"),
        "method": "CUDA events" if device.type == "cuda" else "time.perf_counter",
        "batch": options.batch, "warmup": options.warmup, "repeats": options.repeats, "amp_bf16": amp,
        "inference": measure_inference(model, frames, stages, options.warmup, options.repeats, amp),
    }
    if options.train:
        compile_too = device.type == "cuda" if options.compile is None else options.compile
        modes = {"eager": False, **({"compiled": True} if compile_too else {})}
        out["train_step"] = {m: measure_train_step(model, frames, max(options.warmup, 1), options.repeats, amp, c)
                             for m, c in modes.items()}
    return out
