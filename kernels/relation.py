"""K-base relation products.

``relation(q[B,K,N,d], k[B,K,N,d], v[B,K,N,e], prior[K], mask=None, return_maps=False) -> out[B,N,e]``
with ``out = sum_k prior_k softmax(q_k k_k^T / sqrt(d)) v_k``; ``mask[B,N]`` marks valid keys (True = real).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def _check_inputs(q: Tensor, k: Tensor, v: Tensor, prior: Tensor, mask: Tensor | None) -> None:
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(f"relation: q and k must both be [B,K,N,d], got {tuple(q.shape)} and {tuple(k.shape)}")
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"relation: v must be [B,K,N,e] matching q {tuple(q.shape)}, got {tuple(v.shape)}")
    if prior.shape != (q.shape[1],):
        raise ValueError(f"relation: prior must be [K={q.shape[1]}], got {tuple(prior.shape)}")
    if mask is not None and mask.shape != (q.shape[0], q.shape[2]):
        raise ValueError(f"relation: mask must be [B,N]={(q.shape[0], q.shape[2])}, got {tuple(mask.shape)}")


def relation_reference(
    q: Tensor, k: Tensor, v: Tensor, prior: Tensor, mask: Tensor | None = None, return_maps: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """Reference relation product; returns ``out[B,N,e]`` (and the maps ``G[B,K,N,N]`` if asked)."""
    _check_inputs(q, k, v, prior, mask)
    scores = torch.einsum("bknd,bkmd->bknm", q.float(), k.float()) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    maps = scores.softmax(-1)
    out = torch.einsum("k,bknm,bkme->bne", prior.float(), maps, v.float()).to(v.dtype)
    return (out, maps.to(q.dtype)) if return_maps else out


def relation(
    q: Tensor, k: Tensor, v: Tensor, prior: Tensor, mask: Tensor | None = None, return_maps: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """K-base relation product ``[B,N,e]``; the op the model calls (see module docstring)."""
    return relation_reference(q, k, v, prior, mask, return_maps)
