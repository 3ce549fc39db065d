"""IVC: front-door adjustment with the cleaned texts as mediator, ``V -> V*``.

``P(Y|do(V)) = sum_m P(m|V) sum_v P(v) P(Y|v,m)``, mediator ``M = T*[B,L,D]``, video ``V[B,N,D]``.

Relation encoder F (isomorphic to ICI's R):
1. level 1, ``V1 = R_V(V)`` with bases ``G^V_k[N,N]`` over the video tokens;
2. level 2, text-conditioned: bases ``G^M_k = softmax(M U_k (M U'_k)^T / sqrt(d))[L,L]``, assignment
   ``Pi = softmax_L(V1 M^T / sqrt(D))``, transported maps ``G^{M->V}_k = rownorm(Pi G^M_k Pi^T)``,
   ``V' = LN(V1 + W_O sum_k pi_k G^{M->V}_k V1 W_k)``.
Intervention: in-sample ``M^ = CrossAttn(V', M)`` (P(m|V)); cross-sample ``V^ = NWGM(V', D_V, p_v)``
(sum_v P(v)); ``V* = LN(V' + W_f [M^; V^])``. Optional alignment loss
``lambda mean_k ||G^V_k - G^{M->V}_k||_F^2 / N^2``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..config import IVCConfig
from ..kernels import relation_maps
from .dictionary import ConfounderDictionary, nwgm_attention
from .ici import RelationLayer


class IVC(nn.Module):
    """``forward(v[B,N,D], m[B,L,D]) -> (v*[B,N,D], align_loss scalar)``."""

    def __init__(self, cfg: IVCConfig, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.cfg = cfg
        self.video_relation = RelationLayer(dim, cfg.bases, mlp_ratio)
        self.m_u = nn.Linear(dim, dim, bias=False)
        self.m_u_prime = nn.Linear(dim, dim, bias=False)
        self.m_omega = nn.Parameter(torch.zeros(cfg.bases))
        self.v_w = nn.Linear(dim, dim, bias=False)
        self.w_o = nn.Linear(dim // cfg.bases, dim)
        self.norm_relate = nn.LayerNorm(dim)
        self.mediator_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.w_q = nn.Linear(dim, dim, bias=False)
        self.w_k = nn.Linear(dim, dim, bias=False)
        self.w_v = nn.Linear(dim, dim, bias=False)
        self.w_f = nn.Linear(2 * dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.dictionary = ConfounderDictionary(cfg.dict_size, dim, cfg.dictionary)

    def transported_maps(self, v1: Tensor, m: Tensor) -> Tensor:
        """``G^{M->V}[B,K,N,N] = rownorm(Pi G^M_k Pi^T)`` with ``Pi = softmax_L(V1 M^T / sqrt(D))``."""
        split = self.video_relation.split
        g_m = relation_maps(split(self.m_u(m)), split(self.m_u_prime(m)))
        pi = torch.softmax(v1 @ m.transpose(1, 2) / math.sqrt(m.shape[-1]), dim=-1)[:, None]
        g = pi @ g_m @ pi.transpose(-1, -2)
        return g / g.sum(-1, keepdim=True).clamp_min(1e-12)

    def relate(self, v: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
        """Hierarchical relation encoder: ``V -> V'[B,N,D]`` and the alignment loss (0 unless ``align_weight``)."""
        if self.cfg.align_weight > 0:
            v1, g_v = self.video_relation(v, return_maps=True)
        else:
            v1, g_v = self.video_relation(v), None
        g_mv = self.transported_maps(v1, m)
        prior = torch.softmax(self.m_omega, dim=0)
        r = torch.einsum("k,bknm,bkme->bne", prior, g_mv, self.video_relation.split(self.v_w(v1)))
        align = v.new_zeros(()) if g_v is None else ((g_v - g_mv) ** 2).sum((-1, -2)).mean() / v.shape[1] ** 2
        return self.norm_relate(v1 + self.w_o(r)), align

    def intervene(self, v_prime: Tensor, m: Tensor) -> Tensor:
        """Front-door sum: ``V* = LN(V' + W_f [CrossAttn(V', M); NWGM(V', D_V)])``."""
        m_hat, _ = self.mediator_attn(v_prime, m, m, need_weights=False)
        z, prior = self.dictionary()
        v_hat = nwgm_attention(self.w_q(v_prime), self.w_k(z), self.w_v(z), prior)
        return self.norm(v_prime + self.w_f(torch.cat([m_hat, v_hat], dim=-1)))

    def forward(self, v: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
        v_prime, align = self.relate(v, m)
        return self.intervene(v_prime, m), align
