"""ICI: relation-aware backdoor adjustment over the label texts, ``T' -> T*``.

A relation layer on ``X[B,N,D]`` with K bases of width ``d = D/K``:
``G_k = softmax(X U_k (X U'_k)^T / sqrt(d))``, prior ``pi = softmax(omega)`` over the bases, and
``X <- LN(X + W_O sum_k pi_k G_k X W_k)``, then ``X <- LN(X + FFN(X))``. ICI stacks ``layers`` of them.
"""
from __future__ import annotations

import torch
from timm.layers import Mlp
from torch import Tensor, nn

from ..config import ICIConfig
from ..kernels import relation_product
from .renames import accept_former_names
from .state import StageState

FORMER_NAMES = {"u": "query_proj", "u_prime": "key_proj", "w": "value_proj", "omega": "base_logits",
                "w_o": "out_proj"}


class RelationLayer(nn.Module):
    """``forward(x[B,N,D]) -> [B,N,D]``; with ``return_maps`` also the bases ``G[B,K,N,N]``."""

    def __init__(self, dim: int, bases: int, mlp_ratio: float) -> None:
        super().__init__()
        if dim % bases:
            raise ValueError(f"relation bases K={bases} must divide the joint dim D={dim}")
        self.bases = bases
        self.query_proj = nn.Linear(dim, dim, bias=False)  # U_k of every base k, side by side
        self.key_proj = nn.Linear(dim, dim, bias=False)  # U'_k
        self.value_proj = nn.Linear(dim, dim, bias=False)  # W_k
        self.base_logits = nn.Parameter(torch.zeros(bases))  # omega: the prior over the bases is softmax(omega)
        self.out_proj = nn.Linear(dim // bases, dim)  # W_O
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = Mlp(dim, int(dim * mlp_ratio))
        self.norm2 = nn.LayerNorm(dim)
        accept_former_names(self, FORMER_NAMES)

    def split(self, x: Tensor) -> Tensor:
        """``[B,N,D] -> [B,K,N,D/K]``."""
        b, n, _ = x.shape
        return x.view(b, n, self.bases, -1).transpose(1, 2)

    def relation(self, x: Tensor, return_maps: bool) -> tuple[Tensor, Tensor | None]:
        """``sum_k pi_k G_k(x) x W_k [B,N,D/K]`` and, when asked, the bases ``G[B,K,N,N]``."""
        prior = torch.softmax(self.base_logits, dim=0)
        q, k, v = self.split(self.query_proj(x)), self.split(self.key_proj(x)), self.split(self.value_proj(x))
        return relation_product(q, k, v, prior, return_maps=True) if return_maps else (relation_product(q, k, v, prior), None)

    def forward(self, x: Tensor, return_maps: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        r, maps = self.relation(x, return_maps)
        x = self.norm1(x + self.out_proj(r))
        x = self.norm2(x + self.ffn(x))
        return (x, maps) if return_maps else x


class PreNormRelationLayer(RelationLayer):
    """The relation layer on a residual stream, identity at initialisation:
    ``X <- X + W_O sum_k pi_k G_k(LN_1 X) LN_1(X) W_k``, then ``X <- X + FFN(LN_2 X)``, with ``W_O`` and the FFN's
    output layer zero at init. A stage built from it starts as the identity, so adding it to a model cannot make
    the model start from a worse point than the model without it; the same parameters as :class:`RelationLayer`."""

    def __init__(self, dim: int, bases: int, mlp_ratio: float) -> None:
        super().__init__(dim, bases, mlp_ratio)
        for layer in (self.out_proj, self.ffn.fc2):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, return_maps: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        r, maps = self.relation(self.norm1(x), return_maps)
        x = x + self.out_proj(r)
        x = x + self.ffn(self.norm2(x))
        return (x, maps) if return_maps else x


class ICI(nn.Module):
    """``forward(state) -> state`` with texts ``t'[B,L,D] -> t*[B,L,D]`` (:meth:`relate`): ``layers`` relation
    layers over the label texts."""

    reads_frames = False

    def __init__(self, cfg: ICIConfig, dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(RelationLayer(dim, cfg.bases, cfg.mlp_ratio) for _ in range(cfg.layers))

    def relate(self, t: Tensor) -> Tensor:
        for layer in self.layers:
            t = layer(t)
        return t

    def forward(self, state: StageState) -> StageState:
        return state._replace(texts=self.relate(state.texts))

    def dictionary_features(self, state: StageState) -> None:
        """ICI's prior is over its relation bases (a parameter), not a fitted dictionary."""
        return None

    def maps(self, state: StageState) -> dict[str, Tensor]:
        maps, t = {}, state.texts
        for i, layer in enumerate(self.layers):
            t, g = layer(t, return_maps=True)
            maps |= {f"ICI layer {i} base {k} (labels x labels)": g[:, k] for k in range(g.shape[1])}
        return maps
