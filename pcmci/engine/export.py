"""``pcmci export CHECKPOINT --out DIR``: a training checkpoint as safe, pickle-free files.

``model.safetensors`` (every weight and buffer the model saves, dictionaries included; its metadata holds the class
and action names too), ``config.json`` (the run's whole config) and ``labels.json`` (classes, actions);
``PCMCI.from_pretrained(DIR)`` loads them back.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_model

from ..config import to_dict
from .evaluate import load_model


def export_checkpoint(checkpoint: str | Path, out: str | Path, overwrite: bool = False) -> list[Path]:
    """Write ``out/{model.safetensors, config.json, labels.json}`` from ``checkpoint``; returns the paths. An
    ``out`` that holds any of them already (an earlier export) is refused unless ``overwrite``."""
    out = Path(out)
    paths = [out / "model.safetensors", out / "config.json", out / "labels.json"]
    held = [p.name for p in paths if p.exists()]
    if held and not overwrite:
        raise FileExistsError(f"{out} holds an export already ({', '.join(held)}); export into a new folder, or "
                              "overwrite it (pcmci export --overwrite)")
    model, cfg = load_model(checkpoint, torch.device("cpu"))
    out.mkdir(parents=True, exist_ok=True)
    # the label names the weights were trained with travel inside the weights file (JSON: metadata values are
    # strings), so ``from_pretrained`` can refuse a labels.json edited afterwards instead of naming predictions wrongly
    metadata = {"format": "pt", "producer": "pcmci export", "classes": json.dumps(model.classes),
                "actions": json.dumps(model.actions)}
    save_model(model, str(paths[0]), metadata=metadata)
    paths[1].write_text(json.dumps(to_dict(cfg), indent=2))
    paths[2].write_text(json.dumps({"classes": model.classes, "actions": model.actions}, indent=2))
    return paths
