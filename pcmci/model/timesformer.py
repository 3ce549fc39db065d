"""Divided space-time ViT (TimeSformer) on timm building blocks: frames ``[B,F,3,H,W]`` -> V ``[B,F,D]``.

Each block attends over time (the F tokens of one patch position), then over space (the P patches of one
frame plus the class token), then applies the MLP. Patch tokens are averaged per frame, projected to the
joint dim D and given a temporal position embedding.

``style_mix`` (not in the paper, training only) mixes each clip's patch-token statistics with another clip's
(``pcmci.model.style_mix``), a sampled intervention on the context those statistics carry.

``motion_embed`` (not in the paper) adds a second patch embedding of each frame's forward difference,
``x_t = E(f_t) + E_d(f_{t+1} - f_t)`` (``E_d(0)`` for the last frame), zero at init: the network starts as the
paper's TimeSformer and every frame's patch token can read its local motion from the first layer (the RGB-difference
input of two-stream networks and the temporal taps of a tubelet embedding); nothing that stands still is removed.
"""
from __future__ import annotations

from functools import partial

import torch
from timm.layers import Attention, DropPath, Mlp, PatchEmbed, trunc_normal_
from torch import Tensor, nn

from ..config import TimeSformerConfig
from .convert import load_timesformer_weights
from .style_mix import StyleMix

IMAGENET_HALF = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)
LayerNorm = partial(nn.LayerNorm, eps=1e-6)  # as timm's ViT and HF's TimeSformer


class DividedSTBlock(nn.Module):
    """One divided space-time block on ``x[B, 1+F*P, W]`` (class token first, then frame-major patches)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop_path: float, frames: int, patches: int) -> None:
        super().__init__()
        self.frames, self.patches = frames, patches
        self.temporal_norm1 = LayerNorm(dim)
        self.temporal_attn = Attention(dim, heads, qkv_bias=True)
        self.temporal_fc = nn.Linear(dim, dim)
        self.norm1 = LayerNorm(dim)
        self.attn = Attention(dim, heads, qkv_bias=True)
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        nn.init.zeros_(self.temporal_fc.weight)
        nn.init.zeros_(self.temporal_fc.bias)

    def temporal(self, x: Tensor) -> Tensor:
        """Attention over time for each patch position: ``[B,F*P,W] -> [B,F*P,W]``."""
        b, _, w = x.shape
        y = x.view(b, self.frames, self.patches, w).transpose(1, 2).reshape(b * self.patches, self.frames, w)
        y = self.temporal_attn(y)
        return y.view(b, self.patches, self.frames, w).transpose(1, 2).reshape(b, -1, w)

    def spatial(self, x: Tensor) -> Tensor:
        """Attention over the patches of each frame, the class token copied into every frame and averaged back."""
        b, _, w = x.shape
        cls = x[:, :1].repeat_interleave(self.frames, dim=0)
        y = self.attn(torch.cat([cls, x[:, 1:].reshape(b * self.frames, self.patches, w)], dim=1))
        cls_out = y[:, :1].view(b, self.frames, w).mean(1, keepdim=True)
        return torch.cat([cls_out, y[:, 1:].reshape(b, -1, w)], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        cls, patches = x[:, :1], x[:, 1:]
        patches = patches + self.drop_path(self.temporal_fc(self.temporal(self.temporal_norm1(patches))))
        x = torch.cat([cls, patches], dim=1)
        x = x + self.drop_path(self.spatial(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class TimeSformer(nn.Module):
    """``frames[B,F,3,H,W]`` in [0,1] -> V ``[B,F,out_dim]`` (per-frame mean of patch tokens, projected).

    ``weights_source`` says what ``cfg.pretrained`` loaded (see ``convert``); None means random init.
    """

    def __init__(self, cfg: TimeSformerConfig, out_dim: int) -> None:
        super().__init__()
        self.frames, self.img_size, self.width = cfg.frames, cfg.img_size, cfg.width
        self.patch_embed = PatchEmbed(cfg.img_size, cfg.patch_size, 3, cfg.width)
        self.motion_embed = None  # E_d: patch embedding of f_{t+1} - f_t
        if cfg.motion_embed:
            self.motion_embed = PatchEmbed(cfg.img_size, cfg.patch_size, 3, cfg.width)
            nn.init.zeros_(self.motion_embed.proj.weight)
            nn.init.zeros_(self.motion_embed.proj.bias)
        self.style_mix = StyleMix(cfg.style_mix, cfg.style_mix_alpha)  # identity at evaluation and when p = 0
        patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + patches, cfg.width))
        self.time_embed = nn.Parameter(torch.zeros(1, cfg.frames, cfg.width))
        rates = torch.linspace(0, cfg.drop_path, cfg.depth).tolist()
        self.blocks = nn.ModuleList(
            DividedSTBlock(cfg.width, cfg.heads, cfg.mlp_ratio, r, cfg.frames, patches) for r in rates
        )
        self.norm = LayerNorm(cfg.width)
        self.proj = nn.Linear(cfg.width, out_dim)
        self.temporal_pos = nn.Parameter(torch.zeros(1, cfg.frames, out_dim))
        mean, std = IMAGENET_HALF
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        for p in (self.cls_token, self.pos_embed, self.time_embed, self.temporal_pos):
            trunc_normal_(p, std=0.02)
        self.weights_source = load_timesformer_weights(self, cfg.pretrained, cfg) if cfg.pretrained else None

    def tokens(self, frames: Tensor) -> Tensor:
        """``frames[B,F,3,H,W]`` in [0,1] -> final-norm tokens ``[B,1+F*P,W]`` (class token, then frame-major patches)."""
        b, f, c, h, w = frames.shape
        if (f, c, h, w) != (self.frames, 3, self.img_size, self.img_size):
            raise ValueError(
                f"TimeSformer expects frames [B,{self.frames},3,{self.img_size},{self.img_size}], "
                f"got {list(frames.shape)}"
            )
        x = self.patch_embed((frames.flatten(0, 1) - self.mean) / self.std)
        if self.style_mix.p > 0:  # the statistics of the RGB patch tokens over the whole clip, before positions
            x = self.style_mix(x.reshape(b, -1, self.width)).view_as(x)
        x = x + self.pos_embed[:, 1:]
        if self.motion_embed is not None:
            step = torch.cat([frames[:, 1:] - frames[:, :-1], torch.zeros_like(frames[:, :1])], 1)
            x = x + self.motion_embed(step.flatten(0, 1) / self.std)
        x = (x.view(b, f, -1, self.width) + self.time_embed[:, :, None]).flatten(1, 2)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(b, -1, -1)
        x = torch.cat([cls, x], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, frames: Tensor) -> Tensor:
        patches = self.tokens(frames)[:, 1:].unflatten(1, (self.frames, -1))
        return self.proj(patches.mean(2)) + self.temporal_pos
