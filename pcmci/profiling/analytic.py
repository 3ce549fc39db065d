"""Closed-form MAC counts of the two big towers, to cross-check fvcore's count of the traced forward.

Matrix products and attention count one multiply-add per term; LayerNorms count 5 per element (fvcore's
convention), so for these towers the closed form and fvcore agree exactly.
"""
from __future__ import annotations

from ..config import TimeSformerConfig

LN = 5  # fvcore: FLOPs per element of an affine LayerNorm


def attention_macs(batch: int, lq: int, lk: int, dim: int) -> int:
    """Attention core over all heads: ``q k^T`` and ``P v`` (projections not included)."""
    return batch * 2 * lq * lk * dim


def timesformer_macs(cfg: TimeSformerConfig, out_dim: int, clips: int = 1) -> int:
    """Divided space-time TimeSformer on ``clips`` clips of ``cfg.frames`` frames, up to ``V[B,F,out_dim]``."""
    f, w = cfg.frames, cfg.width
    p = (cfg.img_size // cfg.patch_size) ** 2
    hidden = int(w * cfg.mlp_ratio)
    patches, tokens, spatial = f * p, 1 + f * p, 1 + p
    temporal = LN * patches * w + 3 * patches * w * w + attention_macs(p, f, f, w) + 2 * patches * w * w
    space = LN * tokens * w + 4 * f * spatial * w * w + attention_macs(f, spatial, spatial, w)
    mlp = LN * tokens * w + 2 * tokens * w * hidden
    embed = patches * 3 * cfg.patch_size**2 * w * (2 if cfg.motion_embed else 1)  # + E_d of the frame differences
    head = LN * tokens * w + f * w * out_dim
    return clips * (embed + cfg.depth * (temporal + space + mlp) + head)


def clip_visual_macs(image_size: int, patch_size: int, width: int, layers: int, mlp_ratio: float, out_dim: int,
                     images: int = 1) -> int:
    """open_clip ViT image tower (``ln_pre``, pre-norm blocks, ``ln_post`` on all tokens, class-token projection)."""
    grid = (image_size // patch_size) ** 2
    tokens, hidden = 1 + grid, int(width * mlp_ratio)
    block = 2 * LN * tokens * width + 4 * tokens * width * width + attention_macs(1, tokens, tokens, width)
    block += 2 * tokens * width * hidden
    embed = grid * 3 * patch_size**2 * width
    return images * (embed + 2 * LN * tokens * width + layers * block + width * out_dim)
