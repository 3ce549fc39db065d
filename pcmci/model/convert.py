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

import logging
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import TimeSformerConfig
from ..data.records import read_json
from ..errors import DataError, WeightsError
from ..torchfiles import load_cause

log = logging.getLogger(__name__)
FORMAT = "pcmci-timesformer"
HF_FILES = ("model.safetensors", "pytorch_model.bin")
NEW_KEYS = ("proj.weight", "proj.bias", "temporal_pos", "motion_embed.proj.weight", "motion_embed.proj.bias")
SHAPE_FIELDS = ("img_size", "patch_size", "frames", "width", "depth", "heads", "mlp_ratio")
# the HF TimesformerConfig keys that give the shape: each must be a positive integer
HF_SIZES = ("image_size", "patch_size", "num_frames", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "intermediate_size")
# the HF TimesformerConfig variant pcmci's TimeSformer implements
HF_FIXED = {"attention_type": "divided_space_time", "hidden_act": "gelu", "qkv_bias": True, "layer_norm_eps": 1e-6}
# the Python object an unsafe pickle asks for, in torch's two wordings ("Unsupported global: GLOBAL x.y was not an
# allowed global", "unsupported GLOBAL x.y whose module x is blocked")
_UNSAFE_GLOBAL = re.compile(r"unsupported global:?(?: GLOBAL)? (\S+)", re.IGNORECASE)
_HF_LAYER_KEY = re.compile(r"encoder\.layer\.(\d+)\.(.+)\.([^.]+)")

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


def unpickling_problem(exc: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in one line: for a pickle that asks for Python objects,
    which one and that it is refused for safety (never torch's advice to load it with ``weights_only=False``);
    else the loader's own cause."""
    unsafe = _UNSAFE_GLOBAL.search(str(exc))
    if unsafe:
        return (f"it holds pickled Python objects ({unsafe.group(1).rstrip('.')}) beyond tensors and plain "
                "containers, refused since unpickling them could run arbitrary code")
    return f"{type(exc).__name__}: {load_cause(exc) if str(exc).strip() else 'empty'}"


def _tensors_problem(tensors: Any) -> str | None:
    """What keeps ``tensors`` from being a state dict (None: nothing): not a dict, a key not a name, a value not
    a tensor."""
    if not isinstance(tensors, dict):
        return f"a {type(tensors).__name__}, not a dict of named tensors"
    key = next((k for k in tensors if not isinstance(k, str)), None)
    if key is not None:
        return f"the key {key!r} ({type(key).__name__}), not a tensor name"
    name = next((k for k, v in tensors.items() if not isinstance(v, Tensor)), None)
    if name is not None:
        return f"{name!r} holding {type(tensors[name]).__name__}, not a tensor"
    return None


def _contents_problem(state: Any) -> str | None:
    """What is wrong with what a weights file holds (None: nothing), before any entry is used: a pcmci-converted
    file needs ``config`` (every ``SHAPE_FIELDS`` key) and a ``state_dict``; anything else is a state dict, or a
    checkpoint holding one under ``model`` (timm)."""
    if isinstance(state, dict) and state.get("format") == FORMAT:
        missing = [k for k in ("config", "state_dict") if k not in state]
        if missing:
            return f"is a {FORMAT} file without {' and '.join(map(repr, missing))}"
        if not isinstance(state["config"], dict):
            return f"is a {FORMAT} file whose 'config' is a {type(state['config']).__name__}, not a dict"
        lacking = [k for k in SHAPE_FIELDS if k not in state["config"]]
        unknown = sorted(map(str, set(state["config"]) - set(SHAPE_FIELDS)))
        wrong = [f"lacks {lacking}"] * bool(lacking) + [f"has unknown keys {unknown}"] * bool(unknown)
        if wrong:
            return f"is a {FORMAT} file whose 'config' {' and '.join(wrong)} (it needs {', '.join(SHAPE_FIELDS)})"
        problem = _tensors_problem(state["state_dict"])
        return f"is a {FORMAT} file whose 'state_dict' is {problem}" if problem else None
    problem = _tensors_problem(state.get("model", state) if isinstance(state, dict) else state)
    return f"holds {problem}" if problem else None


def read_weights(path: str | Path) -> dict[str, Any]:
    """Load a ``.safetensors`` or torch file (tensors only, nothing pickled is executed); ``WeightsError`` naming
    the file when it is unreadable, unsafe or holds something other than named tensors."""
    file = weights_file(path)
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(file)
        except SafetensorError as exc:
            raise WeightsError(f"{file} is not a readable .safetensors file: {exc}") from exc
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if _UNSAFE_GLOBAL.search(str(exc)):
            raise WeightsError(f"{file}: {unpickling_problem(exc)}") from exc
        raise WeightsError(f"{file} is not a readable torch file: {load_cause(exc)}") from exc
    except (EOFError, RuntimeError, KeyError) as exc:  # empty, truncated zip, text that starts like a pickle
        raise WeightsError(f"{file} is not a readable torch file ({unpickling_problem(exc)})") from exc
    problem = _contents_problem(state)
    if problem:
        raise WeightsError(f"{file} {problem}; expected TimeSformer weights (a HF TimeSformer, a timm ViT "
                           "or a file written by pcmci convert timesformer)")
    return state


def hf_config(path: str | Path) -> dict[str, Any] | None:
    """The HF ``config.json`` of a model directory or of the directory holding the weights file, or None when
    there is none; ``WeightsError`` naming the file and the key when it cannot describe a TimeSformer."""
    path = Path(path).expanduser()
    file = (path if path.is_dir() else path.parent) / "config.json"
    if not file.is_file():
        return None
    try:
        config = read_json(file)
    except DataError as exc:  # malformed JSON, not UTF-8: the weights' description, so a weights problem
        raise WeightsError(str(exc)) from None
    if not isinstance(config, dict):
        raise WeightsError(f"{file}: expected a JSON object (a HF TimesformerConfig), got a {type(config).__name__}")
    for key in HF_SIZES:
        if key not in config:
            raise WeightsError(f"{file}: missing {key!r}; a HF TimesformerConfig needs {', '.join(HF_SIZES)}")
        value = config[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise WeightsError(f"{file}: {key} must be a positive integer, got {value!r}")
    if config["hidden_size"] % config["num_attention_heads"]:
        raise WeightsError(f"{file}: hidden_size {config['hidden_size']} is not a multiple of num_attention_heads "
                           f"{config['num_attention_heads']}")
    other = {k: config.get(k, v) for k, v in HF_FIXED.items() if config.get(k, v) != v}
    if other:
        raise WeightsError(f"{file}: HF TimeSformer config has {other}; pcmci's TimeSformer implements {HF_FIXED}")
    return config


def hf_shape_fields(config: dict[str, Any]) -> dict[str, Any]:
    """``TimeSformerConfig`` fields described by a HF ``TimesformerConfig`` that ``hf_config`` checked."""
    return {"img_size": config["image_size"], "patch_size": config["patch_size"], "frames": config["num_frames"],
            "width": config["hidden_size"], "depth": config["num_hidden_layers"],
            "heads": config["num_attention_heads"], "mlp_ratio": config["intermediate_size"] / config["hidden_size"]}


def check_shape_fields(fields: dict[str, Any], cfg: TimeSformerConfig, source: str) -> None:
    """``WeightsError`` naming every ``model.timesformer`` key that differs from the weights' architecture."""
    diff = [f"model.timesformer.{k}={getattr(cfg, k)} (weights: {v})" for k, v in fields.items() if getattr(cfg, k) != v]
    if diff:
        raise WeightsError(f"{source} was trained with another TimeSformer shape: {', '.join(diff)}")


def _check_tensors(state_dict: dict[str, Tensor], model: nn.Module, source: str) -> dict[str, Tensor]:
    """``state_dict`` when every tensor names a model tensor of the same shape; ``WeightsError`` otherwise."""
    own = model.state_dict()
    unexpected = sorted(set(state_dict) - set(own))
    if unexpected:
        raise WeightsError(f"{source}: tensors the TimeSformer does not have: {unexpected[:8]}")
    for key, value in state_dict.items():
        if own[key].shape != value.shape:
            raise WeightsError(f"{source}: checkpoint tensor {key} has shape {tuple(value.shape)}, "
                             f"model needs {tuple(own[key].shape)}")
    return state_dict


def hf_filter_fn(state_dict: dict[str, Tensor], model: nn.Module, source: str = "HF TimeSformer") -> dict[str, Tensor]:
    """Rename a HF ``TimesformerModel`` (or ``...ForVideoClassification``, ``timesformer.`` prefix) state dict;
    ``source`` names it in errors.

    The token layout differs (HF orders patches patch-major, we frame-major) but every weight acts per token or
    per attention group, so the tensors map one to one.
    """
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("timesformer.")
        if key.startswith("classifier."):
            continue
        layer = _HF_LAYER_KEY.fullmatch(key)
        if layer and layer.group(2) in _HF_LAYER:
            index, module, leaf = layer.groups()
            out[f"blocks.{index}.{_HF_LAYER[module]}.{leaf}"] = value
        elif key in _HF_TOP:
            out[_HF_TOP[key]] = value
        elif "." in key and key.rsplit(".", 1)[0] in _HF_TOP:
            module, leaf = key.rsplit(".", 1)
            out[f"{_HF_TOP[module]}.{leaf}"] = value
        else:
            raise WeightsError(f"{source}: tensor {key!r} has no counterpart in pcmci's TimeSformer")
    return _check_tensors(out, model, source)


def vit_filter_fn(state_dict: dict[str, Tensor], model: nn.Module,
                  source: str = "timm ViT checkpoint") -> dict[str, Tensor]:
    """Inflate a timm ViT state dict: spatial weights copied, temporal attention and its norm copied from the
    spatial ones (as in the TimeSformer paper), ``temporal_fc`` and ``time_embed`` zero; ``source`` names it in
    errors."""
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
    return _check_tensors(out, model, source)


def source_kind(state: dict[str, Any], file: str | Path) -> str:
    """``pcmci`` (a converted file), ``hf`` or ``vit``, from the keys of ``file``'s ``state`` (as ``read_weights``
    checked it); ``WeightsError`` naming the file for anything else."""
    if state.get("format") == FORMAT:
        return "pcmci"
    keys = list(state.get("model", state))
    if any(k.removeprefix("timesformer.").startswith("encoder.layer.") for k in keys):
        return "hf"
    if any(k.startswith("blocks.") and ".attn." in k for k in keys):
        return "vit"
    raise WeightsError(f"{file} is not a HF TimeSformer, timm ViT or pcmci-converted TimeSformer state dict "
                       f"(keys {keys[:4]})")


def timesformer_state_dict(path: str | Path, model: nn.Module, cfg: TimeSformerConfig) -> tuple[dict[str, Tensor], str]:
    """(the TimeSformer state dict held by ``path``, a description of the source) for ``model`` built from ``cfg``."""
    file = weights_file(path)
    state = read_weights(file)
    kind = source_kind(state, file)
    if kind == "pcmci":
        check_shape_fields(state["config"], cfg, str(file))
        return _check_tensors(state["state_dict"], model, str(file)), f"pcmci-converted TimeSformer {file}"
    if kind == "hf":
        config = hf_config(path)
        if config is not None:
            check_shape_fields(hf_shape_fields(config), cfg, str(file))
        source = f"HF TimeSformer {file}"
        return hf_filter_fn(state, model, source), source + ("" if config else " (no config.json beside it)")
    return vit_filter_fn(state, model, f"timm ViT checkpoint {file}"), f"timm ViT {file}, inflated"


def load_converted(model: nn.Module, state_dict: dict[str, Tensor], source: str) -> None:
    """Load a filtered state dict; ``WeightsError`` when it lacks any tensor besides ``NEW_KEYS``."""
    missing = set(model.load_state_dict(state_dict, strict=False).missing_keys) - set(NEW_KEYS)
    if missing:
        raise WeightsError(f"{source} lacks {sorted(missing)[:8]}")


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
