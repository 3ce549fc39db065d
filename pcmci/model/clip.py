"""Frozen open_clip wrapper: label texts -> T init ``[L,D]``, frames -> visual prompts VP ``[B,F,D]``.

Pretrained weights resolve in one place (``locate_weights``): a local checkpoint path, or an open_clip
tag looked up in the local Hugging Face / open_clip cache only. Nothing is downloaded at run time; when the
weights are absent the tower keeps its random init and one warning says where it looked (``pcmci train``
refuses that unless ``model.allow_random_init``, see ``pcmci.model.weights``).
"""
from __future__ import annotations

import contextlib
import logging
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from huggingface_hub import try_to_load_from_cache
from huggingface_hub.constants import HF_HUB_CACHE
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
from safetensors import SafetensorError
from torch import Tensor, nn

from ..config import ClipConfig
from ..errors import ConfigError, WeightsError
from .convert import unpickling_problem

log = logging.getLogger(__name__)
open_clip.add_model_config(Path(__file__).parent / "model_configs")
# Weights the project ships (tag -> (open_clip model, file)); ``model.clip.pretrained=<tag>`` resolves them.
SHIPPED = {"pcmci-synth": ("pcmci-tiny-clip", Path(__file__).parent / "pretrained" / "pcmci-tiny-vlm.safetensors")}


@dataclass(frozen=True)
class ClipWeights:
    """Where ``clip.pretrained`` resolved: ``path`` (None when not found), ``source`` (how it was found, or every
    place looked), ``tag`` (whether ``pretrained`` is an open_clip tag), ``quick_gelu`` (the tag's activation;
    OpenAI weights need QuickGELU)."""

    path: str | None
    source: str
    tag: bool = False
    quick_gelu: bool = False


def _tag_lookups(cfg: dict[str, str], cache_dir: str | None) -> list[tuple[str, str | None]]:
    """(place looked, the file found there or None) for an open_clip tag's weights, in open_clip's own order."""
    found: list[tuple[str, str | None]] = []
    if cfg.get("file"):
        found.append((cfg["file"], cfg["file"] if Path(cfg["file"]).is_file() else None))
    if cfg.get("hf_hub"):
        repo, filename = os.path.split(cfg["hf_hub"])
        names = [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME] if filename in ("", HF_WEIGHTS_NAME) else [filename]
        hits = (try_to_load_from_cache(repo, name, cache_dir=cache_dir) for name in names)
        hit = next((h for h in hits if isinstance(h, str)), None)
        found.append((f"HF cache {cache_dir or HF_HUB_CACHE}: {repo}/{' or '.join(names)}", hit))
    if cfg.get("url"):
        target = Path(cache_dir or Path.home() / ".cache" / "clip") / os.path.basename(cfg["url"].split("?")[0])
        found.append((str(target), str(target) if target.is_file() else None))
    return found


def names_a_file(pretrained: str) -> bool:
    """Whether ``model.clip.pretrained`` asks for a local file (a weights suffix or a path separator), not a tag."""
    return Path(pretrained).suffix in {".pt", ".pth", ".bin", ".safetensors"} or os.sep in pretrained


def locate_weights(name: str, pretrained: str | None, cache_dir: str | None = None) -> ClipWeights:
    """Resolve ``pretrained`` (a local file, or an open_clip tag looked up in the local caches only)."""
    if not pretrained:
        return ClipWeights(None, "model.clip.pretrained is unset")
    if pretrained in SHIPPED:
        model, file = SHIPPED[pretrained]
        if name != model:
            raise ConfigError(f"model.clip.pretrained={pretrained!r} is a {model} checkpoint, model.clip.name is "
                              f"{name!r}")
        return ClipWeights(str(file), f"shipped weights {pretrained} ({file.name}, `pcmci vlm pretrain`)")
    path = Path(pretrained).expanduser()
    if path.is_file():
        return ClipWeights(str(path), f"local file {path}")
    if names_a_file(pretrained):
        missing = "a folder, not a weights file:" if path.is_dir() else "no such file"
        raise WeightsError(f"model.clip.pretrained={pretrained}: {missing} {path}")
    cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if not cfg:
        known = [*open_clip.list_pretrained_tags_by_model(name), *(tag for tag, (model, _) in SHIPPED.items()
                                                                   if model == name)]
        raise ConfigError(f"model.clip.pretrained={pretrained!r}: unknown open_clip pretrained tag for {name!r}; "
                          f"known tags: {known}")
    quick_gelu = bool(cfg.get("quick_gelu", False))
    places = _tag_lookups(cfg, cache_dir)
    for place, hit in places:
        if hit is not None:
            return ClipWeights(hit, f"open_clip tag {name}/{pretrained} from {place}", True, quick_gelu)
    looked = "; ".join(place for place, _ in places) or "nowhere (the tag names no file)"
    return ClipWeights(None, f"open_clip tag {name}/{pretrained} is not cached; looked in {looked}", True, quick_gelu)


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """Silence open_clip's own root-logger messages: ``locate_weights`` already said what matters."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


class FrozenCLIP(nn.Module):
    """open_clip model with gradients off and eval mode pinned.

    ``encode_text(texts) -> [L,D]`` and ``encode_frames(frames[B,F,3,H,W] in [0,1]) -> [B,F,D]``, both the
    projected embeddings, L2-normalised. ``temperature`` is CLIP's softmax temperature ``1/exp(logit_scale)``.
    """

    def __init__(self, cfg: ClipConfig) -> None:
        super().__init__()
        if cfg.name not in open_clip.list_models():
            raise ConfigError(f"model.clip.name={cfg.name!r}: unknown open_clip model; e.g. ViT-B-16, ViT-B-32, "
                              "pcmci-tiny-clip")
        weights = locate_weights(cfg.name, cfg.pretrained, cfg.cache_dir)
        if weights.path is None:
            log.warning("CLIP %s: %s; using RANDOM CLIP weights (set model.clip.pretrained to a local file or a "
                        "cached open_clip tag for real weights)", cfg.name, weights.source)
        with _quiet_root_logger():
            try:
                self.model = open_clip.create_model(cfg.name, pretrained=weights.path, pretrained_text=False,
                                                    force_quick_gelu=weights.quick_gelu)
            except (SafetensorError, EOFError, KeyError, pickle.UnpicklingError, RuntimeError) as exc:
                raise WeightsError(f"model.clip.pretrained={cfg.pretrained}: {weights.path} cannot be loaded into "
                                   f"{cfg.name} ({unpickling_problem(exc)})") from exc
            self.tokenizer = open_clip.get_tokenizer(cfg.name)
        self.prompt = cfg.prompt
        self.image_size = int(self.model.visual.image_size[0])
        self.embed_dim = int(self.model.text_projection.shape[-1])
        self.register_buffer("mean", torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.model.eval()
        self._text_cache: dict[tuple[str, ...], Tensor] = {}  # (texts..., device) -> [L,D]

    def train(self, mode: bool = True) -> "FrozenCLIP":
        """CLIP stays in eval mode whatever the parent's mode."""
        return super().train(False)

    @property
    def temperature(self) -> float:
        return float(1.0 / self.model.logit_scale.exp())

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> Tensor:
        """Prompted label texts -> ``[L,D]`` normalised projected embeddings, cached per label set."""
        key = (*texts, str(self.mean.device))
        if key not in self._text_cache:
            tokens = self.tokenizer([self.prompt.format(t) for t in texts]).to(self.mean.device)
            self._text_cache[key] = F.normalize(self.model.encode_text(tokens).float(), dim=-1)
        return self._text_cache[key]

    @torch.no_grad()
    def encode_frames(self, frames: Tensor) -> Tensor:
        """``frames[B,F,3,H,W]`` in [0,1] -> VP ``[B,F,D]``, normalised projected image embeddings."""
        b, f = frames.shape[:2]
        x = frames.flatten(0, 1)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
        x = (x - self.mean) / self.std
        out = self.model.encode_image(x).to(torch.promote_types(frames.dtype, torch.float32))  # bf16 autocast -> fp32
        return F.normalize(out, dim=-1).view(b, f, -1)
