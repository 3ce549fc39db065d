"""Classification head: class queries (rows of T*) cross-attend over the video tokens V*, then a group-wise
linear layer scores each query with its own weight vector: ``logit_c = <y_c, w_c> + b_c``.
"""
from __future__ import annotations

import torch
from timm.layers import Mlp
from torch import Tensor, nn

from ..config import HeadConfig


class DecoderLayer(nn.Module):
    """Pre-norm cross-attention + MLP on queries ``q[B,C,D]`` over memory ``mem[B,N,D]``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_mem = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, q: Tensor, mem: Tensor) -> Tensor:
        mem = self.norm_mem(mem)
        q = q + self.attn(self.norm_q(q), mem, mem, need_weights=False)[0]
        return q + self.mlp(self.norm2(q))


class CrossAttentionHead(nn.Module):
    """``forward(queries[B,Q,D], video[B,N,D]) -> logits[B,Q]``."""

    def __init__(self, cfg: HeadConfig, dim: int, num_queries: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(dim, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(dim)
        self.weight = nn.Parameter(torch.randn(num_queries, dim) * dim**-0.5)
        self.bias = nn.Parameter(torch.zeros(num_queries))

    def forward(self, queries: Tensor, video: Tensor) -> Tensor:
        for layer in self.layers:
            queries = layer(queries, video)
        return (self.norm(queries) * self.weight).sum(-1) + self.bias
