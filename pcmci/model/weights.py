"""The pretrained weight files a model config asks for: where each resolves, the refusal to train on random
weights, ``pcmci weights check`` and ``pcmci convert timesformer``.

The refusal lives in the training entry point (``require_weights``), not in model construction: profiling,
tests and evaluation build models whose weights do not matter or come from a checkpoint.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch

from ..config import ClipConfig, ModelConfig, TimeSformerConfig
from ..torchfiles import save_checkpoint
from ..errors import WeightsError
from .clip import FrozenCLIP, locate_weights
from .convert import (FORMAT, HF_FILES, SHAPE_FIELDS, hf_config, hf_filter_fn, hf_shape_fields, load_converted,
                      read_weights, source_kind, weights_file)
from .timesformer import TimeSformer

TIMESFORMER_FIX = ("`hf download facebook/timesformer-base-finetuned-k400 --local-dir weights/timesformer-k400` and set "
                   "model.timesformer.pretrained=weights/timesformer-k400 (or the file `pcmci convert timesformer` "
                   "writes from it, or a timm ViT-B/16 checkpoint to inflate)")


@dataclass
class WeightStatus:
    """One tower's weights: ``path`` is the resolved file (None when missing), ``source`` how it was found or
    where it was looked for, ``fix`` how to provide it."""

    tower: str
    key: str
    requested: str | None
    path: str | None
    source: str
    fix: str


def clip_status(cfg: ClipConfig) -> WeightStatus:
    found = locate_weights(cfg.name, cfg.pretrained, cfg.cache_dir)
    fix = "set model.clip.pretrained=/path/to/open_clip_model.safetensors"
    hub = open_clip.get_pretrained_cfg(cfg.name, cfg.pretrained).get("hf_hub") if found.tag else None
    if hub:
        fix = f"`hf download {hub.rstrip('/')} --include 'open_clip_*'` caches tag {cfg.pretrained!r}, or {fix}"
    return WeightStatus(f"CLIP {cfg.name}", "model.clip.pretrained", cfg.pretrained, found.path, found.source, fix)


def timesformer_status(cfg: TimeSformerConfig) -> WeightStatus:
    status = WeightStatus("TimeSformer", "model.timesformer.pretrained", cfg.pretrained, None,
                          "model.timesformer.pretrained is unset", TIMESFORMER_FIX)
    if cfg.pretrained:
        try:
            status.path = str(weights_file(cfg.pretrained))
            status.source = f"local file {status.path}"
        except FileNotFoundError as exc:
            status.source = str(exc)
    return status


def weight_status(cfg: ModelConfig) -> list[WeightStatus]:
    """Where every pretrained tower of ``cfg`` resolves (nothing is loaded)."""
    return [clip_status(cfg.clip), timesformer_status(cfg.timesformer)]


def require_weights(cfg: ModelConfig) -> None:
    """Unless ``cfg.allow_random_init``, one ``WeightsError`` naming every missing weight file and how to provide it."""
    if cfg.allow_random_init:
        return
    missing = [s for s in weight_status(cfg) if s.path is None]
    if missing:
        what = "; ".join(f"{s.tower} ({s.source}): {s.fix}" for s in missing)
        raise WeightsError(f"missing pretrained weights — {what}. `pcmci weights check CONFIG` shows what resolves; "
                         "model.allow_random_init=true trains from random weights instead")


def _loaded(build: Callable[[], torch.nn.Module], found: bool) -> tuple[str, int, torch.nn.Module | None]:
    """(shape check, parameter count, module) of building one tower, a failure reported in one line."""
    try:
        module = build()
    except (ValueError, RuntimeError) as exc:
        return "FAILED: " + " ".join(str(exc).split()), 0, None
    params = sum(p.numel() for p in module.parameters())
    return ("ok: every tensor loaded" if found else "random init"), params, module


def check_weights(cfg: ModelConfig) -> list[dict[str, Any]]:
    """Resolve and load every tower's weights: one row per tower with its source, shape check and parameters."""
    clip_state, video_state = weight_status(cfg)
    shape, params, clip = _loaded(lambda: FrozenCLIP(cfg.clip), clip_state.path is not None)
    rows = [{**dataclasses.asdict(clip_state), "shape_check": shape, "params": params}]
    dim = clip.embed_dim if isinstance(clip, FrozenCLIP) else 1
    shape, params, video = _loaded(lambda: TimeSformer(cfg.timesformer, dim), video_state.path is not None)
    if isinstance(video, TimeSformer) and video.weights_source:
        video_state.source, shape = video.weights_source, shape + " (proj, temporal_pos: new)"
    rows.append({**dataclasses.asdict(video_state), "shape_check": shape, "params": params})
    return rows


def render_check(rows: list[dict[str, Any]]) -> str:
    lines = []
    for row in rows:
        lines += [f"{row['tower']}: {row['key']}={row['requested'] or '(unset)'}",
                  f"  source: {row['source']}",
                  f"  shapes: {row['shape_check']}",
                  f"  params: {row['params'] / 1e6:.2f} M"]
    return "\n".join(lines)


def _check_out(out: Path, sources: list[Path], overwrite: bool) -> None:
    """Refuse, before any work, an ``--out`` that is a folder, one of the ``sources`` being read (even with
    ``overwrite``: the file would be gone before it was converted), or an existing file without ``overwrite``."""
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a folder; name the file to write, e.g. {out / 'timesformer.pt'}")
    if not out.exists():
        return
    source = next((s for s in sources if s.exists() and os.path.samefile(out, s)), None)
    if source is not None:
        raise FileExistsError(f"--out {out} is the source file {source}; write the converted file elsewhere")
    if not overwrite:
        raise FileExistsError(f"--out {out} exists already; write to a new file, or replace it "
                              "(pcmci convert --overwrite)")


def convert_timesformer(src: str | Path, out: str | Path, overwrite: bool = False) -> tuple[Path, dict[str, Any]]:
    """Convert a HF TimeSformer (directory, ``model.safetensors`` or ``pytorch_model.bin``) to a pcmci file.

    The architecture comes from ``config.json`` beside the weights; the converted tensors are checked by loading
    them into a TimeSformer of that shape. ``out`` is written atomically (a temporary file renamed over it) and
    never over the source; an existing ``out`` is refused unless ``overwrite``. Returns (the written file, the
    ``model.timesformer`` fields to set).
    """
    file = weights_file(src)
    out = Path(out).expanduser()
    _check_out(out, [file, *(file.parent / name for name in (*HF_FILES, "config.json"))], overwrite)
    state = read_weights(file)
    if source_kind(state, file) != "hf":
        raise WeightsError(f"{file} is not a Hugging Face TimeSformer state dict")
    config = hf_config(file)
    if config is None:
        raise FileNotFoundError(f"no config.json beside {file}: give the HF model directory")
    fields = hf_shape_fields(config)
    model = TimeSformer(TimeSformerConfig(**fields), out_dim=1)
    source = f"HF TimeSformer {file}"
    converted = {k: v.contiguous() for k, v in hf_filter_fn(state, model, source).items()}
    load_converted(model, converted, source)
    save_checkpoint(out, {"format": FORMAT, "config": {k: fields[k] for k in SHAPE_FIELDS}, "state_dict": converted})
    return out, fields
