"""Frozen open_clip wrapper: label texts -> T init ``[L,D]``, frames -> visual prompts VP ``[B,F,D]``.

Pretrained weights resolve in one place (``resolve_pretrained``): a local checkpoint path, or an open_clip
tag looked up in the local Hugging Face / open_clip cache only. Nothing is downloaded at run time; when the
weights are absent the tower keeps its random init and one warning says so.
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ClipConfig

log = logging.getLogger(__name__)
open_clip.add_model_config(Path(__file__).parent / "model_configs")


def _cached_tag_file(name: str, tag: str, cache_dir: str | None) -> str | None:
    """Path of an already-cached file for open_clip tag ``tag`` of model ``name``, else None."""
    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        known = open_clip.list_pretrained_tags_by_model(name)
        raise ValueError(f"unknown open_clip pretrained tag {tag!r} for {name!r}; known tags: {known}")
    if cfg.get("file"):
        return cfg["file"] if Path(cfg["file"]).is_file() else None
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub)
        filename = filename or "open_clip_pytorch_model.bin"
        for candidate in (filename.replace(".bin", ".safetensors"), filename):
            hit = try_to_load_from_cache(repo, candidate, cache_dir=cache_dir)
            if isinstance(hit, str):
                return hit
    url = cfg.get("url", "")
    if url:
        root = Path(cache_dir or Path.home() / ".cache" / "clip")
        target = root / os.path.basename(url.split("?")[0])
        return str(target) if target.is_file() else None
    return None


def resolve_pretrained(name: str, pretrained: str | None, cache_dir: str | None = None) -> str | None:
    """A local weights file for ``pretrained`` (path or tag), or None (random init) with one warning."""
    if not pretrained:
        return None
    path = Path(pretrained).expanduser()
    if path.is_file():
        return str(path)
    if path.suffix in {".pt", ".pth", ".bin", ".safetensors"} or os.sep in pretrained:
        log.warning("CLIP weights %s not found; using RANDOM CLIP weights (results will not match the paper)", path)
        return None
    hit = _cached_tag_file(name, pretrained, cache_dir)
    if hit is None:
        log.warning(
            "CLIP weights %s/%s are not in the local cache and downloads are disabled; using RANDOM CLIP weights. "
            "Pass clip.pretrained=/path/to/open_clip_model.safetensors to load real weights.",
            name,
            pretrained,
        )
    return hit


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """Silence open_clip's own root-logger messages: ``resolve_pretrained`` already said what matters."""
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
            raise ValueError(f"unknown open_clip model {cfg.name!r}; e.g. ViT-B-16, ViT-B-32, pcmci-tiny-clip")
        weights = resolve_pretrained(cfg.name, cfg.pretrained, cfg.cache_dir)
        if weights is None and not cfg.pretrained:
            log.warning("CLIP %s: no pretrained weights requested (clip.pretrained unset); using RANDOM weights", cfg.name)
        with _quiet_root_logger():
            self.model = open_clip.create_model(cfg.name, pretrained=weights, pretrained_text=False)
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
        return F.normalize(self.model.encode_image(x).float(), dim=-1).view(b, f, -1)
