"""Foreign video-encoder weights -> this project's ``TimeSformer`` state dict.

Three sources, told apart by their keys, each entering through one pure ``*_filter_fn(state_dict, model)``:

- a Hugging Face ``TimesformerModel`` / ``TimesformerForVideoClassification`` (a model directory, its
  ``model.safetensors`` or ``pytorch_model.bin``; ``config.json`` beside it is checked against ours),
- a timm ViT, inflated: temporal attention copied from spatial attention, ``temporal_fc`` and ``time_embed``
  at zero, so each frame starts out as the image model,
- a file written by ``pcmci convert timesformer`` (``{"format", "config", "state_dict"}``).

``proj`` and ``temporal_pos`` (the projection to the joint dim D) exist in none of them and train from scratch.
"""
from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import TimeSformerConfig

log = logging.getLogger(__name__)
FORMAT = "pcmci-timesformer"
HF_FILES = ("model.safetensors", "pytorch_model.bin")
NEW_KEYS = ("proj.weight", "proj.bias", "temporal_pos", "motion_embed.proj.weight", "motion_embed.proj.bias")
SHAPE_FIELDS = ("img_size", "patch_size", "frames", "width", "depth", "heads", "mlp_ratio")

_HF_TOP = {  # HF TimesformerModel module -> TimeSformer module
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.time_embeddings": "time_embed",
    "embeddings.patch_embeddings.projection": "patch_embed.proj",
    "layernorm": "norm",
}
_HF_LAYER = {  # HF TimesformerLayer module -> DividedSTBlock module
    "temporal_layernorm": "temporal_norm1",
    "temporal_attention.attention.qkv": "temporal_attn.qkv",
    "temporal_attention.output.dense": "temporal_attn.proj",
    "temporal_dense": "temporal_fc",
    "layernorm_before": "norm1",
    "attention.attention.qkv": "attn.qkv",
    "attention.output.dense": "attn.proj",
    "layernorm_after": "norm2",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}


def weights_file(path: str | Path) -> Path:
    """The weights file of ``path``: the file itself, or a HF model directory's ``model.safetensors`` /
    ``pytorch_model.bin``; ``FileNotFoundError`` naming what was looked for otherwise."""
    path = Path(path).expanduser()
    if path.is_dir():
        for name in HF_FILES:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"TimeSformer weights: directory {path} holds neither {' nor '.join(HF_FILES)}")
    if not path.is_file():
        raise FileNotFoundError(f"TimeSformer weights: no file {path}")
    return path


def read_weights(path: str | Path) -> dict[str, Any]:
    """Load a ``.safetensors`` or torch file (tensors only, nothing pickled is executed)."""
    file = weights_file(path)
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(file)
        except SafetensorError as exc:
            raise ValueError(f"{file} is not a readable .safetensors file: {exc}") from exc
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = str(exc).strip().splitlines() or [""]
        cause = next((line.strip() for line in lines if "Unsupported global" in line), lines[0])
        if "Unsupported global" not in cause:  # not a pickle at all (text, random bytes)
            raise ValueError(f"{file} is not a readable torch file: {cause}") from exc
        raise ValueError(f"{file} holds more than tensors and plain containers, which are not loaded: {cause}") from exc
    except (EOFError, RuntimeError, KeyError) as exc:  # empty, truncated zip, text that starts like a pickle
        cause = (str(exc).strip().splitlines() or [""])[0]
        raise ValueError(f"{file} is not a readable torch file ({type(exc).__name__}: {cause or 'empty'})") from exc


def hf_config(path: str | Path) -> dict[str, Any] | None:
    """The HF ``config.json`` of a model directory or of the directory holding the weights file, or None."""
    path = Path(path).expanduser()
    file = (path if path.is_dir() else path.parent) / "config.json"
    return json.loads(file.read_text()) if file.is_file() else None


def hf_shape_fields(config: dict[str, Any]) -> dict[str, Any]:
    """``TimeSformerConfig`` fields described by a HF ``TimesformerConfig``; ``ValueError`` for a variant we lack."""
    fixed = {"attention_type": "divided_space_time", "hidden_act": "gelu", "qkv_bias": True, "layer_norm_eps": 1e-6}
    other = {k: config.get(k, v) for k, v in fixed.items() if config.get(k, v) != v}
    if other:
        raise ValueError(f"HF TimeSformer config has {other}; pcmci's TimeSformer implements {fixed}")
    return {"img_size": config["image_size"], "patch_size": config["patch_size"], "frames": config["num_frames"],
            "width": config["hidden_size"], "depth": config["num_hidden_layers"],
            "heads": config["num_attention_heads"], "mlp_ratio": config["intermediate_size"] / config["hidden_size"]}


def check_shape_fields(fields: dict[str, Any], cfg: TimeSformerConfig, source: str) -> None:
    """``ValueError`` naming every ``model.timesformer`` key that differs from the weights' architecture."""
    diff = [f"model.timesformer.{k}={getattr(cfg, k)} (weights: {v})" for k, v in fields.items() if getattr(cfg, k) != v]
    if diff:
        raise ValueError(f"{source} was trained with another TimeSformer shape: {', '.join(diff)}")


def _check_tensors(state_dict: dict[str, Tensor], model: nn.Module, source: str) -> dict[str, Tensor]:
    """``state_dict`` when every tensor names a model tensor of the same shape; ``ValueError`` otherwise."""
    own = model.state_dict()
    unexpected = sorted(set(state_dict) - set(own))
    if unexpected:
        raise ValueError(f"{source}: tensors the TimeSformer does not have: {unexpected[:8]}")
    for key, value in state_dict.items():
        if own[key].shape != value.shape:
            raise ValueError(f"{source}: checkpoint tensor {key} has shape {tuple(value.shape)}, "
                             f"model needs {tuple(own[key].shape)}")
    return state_dict


def hf_filter_fn(state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Rename a HF ``TimesformerModel`` (or ``...ForVideoClassification``, ``timesformer.`` prefix) state dict.

    The token layout differs (HF orders patches patch-major, we frame-major) but every weight acts per token or
    per attention group, so the tensors map one to one.
    """
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("timesformer.")
        if key.startswith("classifier."):
            continue
        if key.startswith("encoder.layer."):
            index, rest = key.removeprefix("encoder.layer.").split(".", 1)
            module, leaf = rest.rsplit(".", 1)
            if module not in _HF_LAYER:
                raise ValueError(f"HF TimeSformer tensor {key!r} has no counterpart in pcmci's TimeSformer")
            out[f"blocks.{index}.{_HF_LAYER[module]}.{leaf}"] = value
        elif key in _HF_TOP:
            out[_HF_TOP[key]] = value
        elif key.rsplit(".", 1)[0] in _HF_TOP:
            module, leaf = key.rsplit(".", 1)
            out[f"{_HF_TOP[module]}.{leaf}"] = value
        else:
            raise ValueError(f"HF TimeSformer tensor {key!r} has no counterpart in pcmci's TimeSformer")
    return _check_tensors(out, model, "HF TimeSformer")


def vit_filter_fn(state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Inflate a timm ViT state dict: spatial weights copied, temporal attention and its norm copied from the
    spatial ones (as in the TimeSformer paper), ``temporal_fc`` and ``time_embed`` zero."""
    state_dict = state_dict.get("model", state_dict)
    out = {}
    for key, value in state_dict.items():
        if key.startswith(("head", "fc_norm", "pre_logits")):
            continue
        out[key] = value
        if key.startswith("blocks.") and (".attn." in key or ".norm1." in key):
            out[key.replace(".attn.", ".temporal_attn.").replace(".norm1.", ".temporal_norm1.")] = value.clone()
    own = model.state_dict()
    zeros = [k for k in own if ".temporal_fc." in k or k == "time_embed"]
    out.update({k: torch.zeros_like(own[k]) for k in zeros})
    return _check_tensors(out, model, "timm ViT checkpoint")


def source_kind(state: dict[str, Any]) -> str:
    """``pcmci`` (a converted file), ``hf`` or ``vit``, from the keys; ``ValueError`` for anything else."""
    if state.get("format") == FORMAT:
        return "pcmci"
    keys = list(state.get("model", state))
    if any(k.removeprefix("timesformer.").startswith("encoder.layer.") for k in keys):
        return "hf"
    if any(k.startswith("blocks.") and ".attn." in k for k in keys):
        return "vit"
    raise ValueError(f"not a HF TimeSformer, timm ViT or pcmci-converted TimeSformer state dict (keys {keys[:4]})")


def timesformer_state_dict(path: str | Path, model: nn.Module, cfg: TimeSformerConfig) -> tuple[dict[str, Tensor], str]:
    """(the TimeSformer state dict held by ``path``, a description of the source) for ``model`` built from ``cfg``."""
    state = read_weights(path)
    kind = source_kind(state)
    file = weights_file(path)
    if kind == "pcmci":
        check_shape_fields(state["config"], cfg, str(file))
        return _check_tensors(state["state_dict"], model, str(file)), f"pcmci-converted TimeSformer {file}"
    if kind == "hf":
        config = hf_config(path)
        if config is not None:
            check_shape_fields(hf_shape_fields(config), cfg, str(file))
        return hf_filter_fn(state, model), f"HF TimeSformer {file}" + ("" if config else " (no config.json beside it)")
    return vit_filter_fn(state, model), f"timm ViT {file}, inflated"


def load_converted(model: nn.Module, state_dict: dict[str, Tensor], source: str) -> None:
    """Load a filtered state dict; ``ValueError`` when it lacks any tensor besides ``NEW_KEYS``."""
    missing = set(model.load_state_dict(state_dict, strict=False).missing_keys) - set(NEW_KEYS)
    if missing:
        raise ValueError(f"{source} lacks {sorted(missing)[:8]}")


def load_timesformer_weights(model: nn.Module, path: str, cfg: TimeSformerConfig) -> str | None:
    """Load ``path`` into ``model`` and return where it came from; warn and keep random init when it is absent."""
    try:
        state, source = timesformer_state_dict(path, model, cfg)
    except FileNotFoundError as exc:
        log.warning("%s; using RANDOM TimeSformer weights", exc)
        return None
    load_converted(model, state, source)
    log.info("loaded TimeSformer weights: %s (%d tensors; %s trained from scratch)", source, len(state),
             ", ".join(NEW_KEYS))
    return source
