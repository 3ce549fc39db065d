"""Classification head: class queries (rows of T*) cross-attend over the video tokens V*, then a group-wise
linear layer scores each query with its own weight vector: ``logit_c = <y_c, w_c> + b_c``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import Tensor, nn

from ..config import HeadConfig
from .renames import accept_former_names

FORMER_NAMES = {"q": "query_proj", "k": "key_proj", "v": "value_proj", "out": "out_proj"}


class CrossAttention(nn.Module):
    """Multi-head ``softmax(x W_q (m W_k)^T / sqrt(D/h)) m W_v``, then ``W_o``: ``x[B,C,D]`` over ``m[B,N,D]``.

    The key projection has no bias: ``q . b_k`` is the same for every key of a query, so the softmax cancels it;
    its gradient is exactly 0 and Adam would turn the rounding noise it gets into lr-sized steps.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"model.head.heads={heads} must divide the joint dim D={dim}")
        self.heads = heads
        self.query_proj = nn.Linear(dim, dim)  # W_q
        self.key_proj = nn.Linear(dim, dim, bias=False)  # W_k
        self.value_proj = nn.Linear(dim, dim)  # W_v
        self.out_proj = nn.Linear(dim, dim)  # W_o
        accept_former_names(self, FORMER_NAMES)

    def _split(self, x: Tensor) -> Tensor:
        """``[B,N,D] -> [B,h,N,D/h]``."""
        return x.view(x.shape[0], x.shape[1], self.heads, -1).transpose(1, 2)

    def forward(self, x: Tensor, m: Tensor) -> Tensor:
        q, k, v = self._split(self.query_proj(x)), self._split(self.key_proj(m)), self._split(self.value_proj(m))
        return self.out_proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2))


class DecoderLayer(nn.Module):
    """Pre-norm cross-attention + MLP on queries ``q[B,C,D]`` over memory ``mem[B,N,D]``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_mem = nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, q: Tensor, mem: Tensor) -> Tensor:
        mem = self.norm_mem(mem)
        q = q + self.attn(self.norm_q(q), mem)
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
