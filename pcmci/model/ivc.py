"""IVC: front-door adjustment with the cleaned texts as mediator, ``V -> V*``.

Paper: ``P(Y|do(V)) = sum_m P(m|V) sum_v P(v) P(Y|v,m)`` with a mediator ``M = T*`` "d-separated from C";
visual confounders (background, clothing, habits) "persist throughout long videos"; ``V'`` comes from a
hierarchical relation encoder isomorphic to ICI's, and NWGM approximates the sums. As built, video tokens
``V[B,N,D]``, mediator ``M[B,L,D]``:

0. The mediator's rows relative to each other, on one scale: ``M <- LN(M - mean_l M)`` (label texts share most
   of their embedding, "a video of a person ..."; only what tells them apart can mediate).
1. (Ablation only, ``static=true``: ``V~ = V - mean_n V``; ``static_input=true``: ``X_f - mean_f X_f`` before the
   video encoder. Both assume that what stands still is the confounder: they delete a still cause — the pan on
   the stove — and keep a confounder that moves with a hand-held camera. Off by default.)
2. Relation encoder F, on a residual stream (pre-norm; every output layer starts at zero, so the stage starts as
   the identity ``V* = V`` and a model with it starts where the model without it does): level 1
   ``V1 = R_V(V~)`` (:class:`PreNormRelationLayer`, bases ``G^V_k[N,N]``); level 2, text-conditioned, on
   ``H = LN_r(V1)``: ``G^M_k = softmax(M U_k (M U'_k)^T / sqrt(d))[L,L]``, ``Pi = softmax_L(H M^T / sqrt(D))``,
   ``G^{M->V}_k = rownorm(Pi G^M_k Pi^T)``, ``V' = V1 + W_O sum_k pi_k G^{M->V}_k H W_k``.
3. ``P(m|V)``: each token's distribution over the mediator rows, ``A = softmax_L(LN_a(V') W_a M^T / sqrt(D))``;
   the mediator it selects, ``M^ = A M [B,N,D]``.
4. ``sum_v P(v)``: population visual tokens — the dictionary ``D_V`` (k-means over ``LN_a(V')`` of clips drawn
   from the whole training split, prior ``p_v``) — read by NWGM with the clip's tokens as query
   (``Q = LN_a(V')``; the mediator ``Q = M^`` when ``mediator_only``):
   ``V^ = sum_j p_j a_j (D_V W_v)_j / sum_j p_j a_j``, ``a = softmax_j(Q W_q (D_V W_k)^T / sqrt(D))``.
5. ``V* = V' + W_f [M^; V^]`` (default): the in-sample term (``V'``, relation-encoded with the text's
   structure, and the mediator it selects, ``M^``) beside the cross-sample term ``V^`` (the population's tokens),
   as NWGM front-door models combine them (the paper: "NWGM approximation yields V*" from ``V'``); the head
   normalises its memory. The front door is read through ``V'`` and ``M^``, not enforced as a bottleneck:
   ``mediator_only=true``, ``V* = W_m M^ + V^ + E_pos``, lets the clip reach the head only through ``A``
   (``E_pos`` a learned token-position embedding) and is kept as an ablation variant — a softmax over the L label
   rows per frame token does not carry a motion cause: trained on unconfounded clips (confound 0) it stays at
   chance (0.23 ID, 5 classes), where the residual form reaches 0.76 and the baseline 0.83
   (``docs/results/intervention-ceiling/``).
Optional alignment loss ``lambda mean_k ||G^V_k - G^{M->V}_k||_F^2 / N^2``.

Training (``backdoor.reweight``, on with this stage by default): the confounder C reaches Y through how the data
were collected, so the encoder that feeds this stage is trained on the backdoor-adjusted risk
``sum_c P(c) P(Y|X,c)``, estimated by weighting each clip with ``P(y)/P(y|s)``, ``s`` what single frames show
(``pcmci.engine.propensity``). It changes what the encoder learns, not the inference graph. The same weights train
any variant with ``backdoor.reweight=true``; on the demo set they carry all of the full model's gain
(``docs/results/weighted-baseline/``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import IVCConfig
from ..kernels import relation_maps
from .dictionary import ConfounderDictionary, nwgm_attention
from .ici import PreNormRelationLayer
from .renames import accept_former_names
from .state import StageState

FORMER_NAMES = {"m_u": "mediator_query_proj", "m_u_prime": "mediator_key_proj", "m_omega": "mediator_base_logits",
                "v_w": "video_value_proj", "w_o": "out_proj", "w_a": "mediator_attn_proj", "w_q": "query_proj",
                "w_k": "key_proj", "w_v": "value_proj", "w_m": "mediator_proj", "w_f": "fuse_proj"}


class IVC(nn.Module):
    """``forward(state) -> state`` with video ``v[B,N,D] -> v*[B,N,D]`` given the texts ``m[B,L,D]`` as mediator
    (:meth:`deconfound`) and the loss ``"align"``; ``tokens`` is N."""

    reads_frames = False

    def __init__(self, cfg: IVCConfig, dim: int, tokens: int, mlp_ratio: float) -> None:
        super().__init__()
        self.static, self.mediator_only, self.align_weight = cfg.static, cfg.mediator_only, cfg.align_weight
        self.video_relation = PreNormRelationLayer(dim, cfg.bases, mlp_ratio)  # level 1, R_V
        self.mediator_query_proj = nn.Linear(dim, dim, bias=False)  # U_k of G^M_k
        self.mediator_key_proj = nn.Linear(dim, dim, bias=False)  # U'_k of G^M_k
        self.mediator_base_logits = nn.Parameter(torch.zeros(cfg.bases))  # omega: prior pi over the bases G^M_k
        self.video_value_proj = nn.Linear(dim, dim, bias=False)  # W_k, applied to V1
        self.out_proj = nn.Linear(dim // cfg.bases, dim)  # W_O
        self.norm_relate = nn.LayerNorm(dim)  # LN_r: what level 2 reads of V1
        self.mediator_attn_proj = nn.Linear(dim, dim, bias=False)  # W_a of P(m|V)
        self.query_proj = nn.Linear(dim, dim, bias=False)  # W_q
        self.key_proj = nn.Linear(dim, dim, bias=False)  # W_k of the dictionary D_V
        self.value_proj = nn.Linear(dim, dim, bias=False)  # W_v
        if cfg.mediator_only:
            self.mediator_proj = nn.Linear(dim, dim)  # W_m
            self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)  # E_pos
        else:
            self.fuse_proj = nn.Linear(2 * dim, dim)  # W_f
        self.norm = nn.LayerNorm(dim)  # LN_a: what P(m|V) and the NWGM query read of V'
        residual_outputs = [self.out_proj] + ([] if cfg.mediator_only else [self.fuse_proj])
        for layer in residual_outputs:  # the residual stream starts as V: the stage is the identity at init
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.dictionary = ConfounderDictionary(cfg.dict_size, dim, cfg.dictionary, "IVC dictionary")
        accept_former_names(self, FORMER_NAMES)

    @staticmethod
    def mediator(m: Tensor) -> Tensor:
        """``LN(M - mean_l M)``: the rows' label-specific parts, on one scale."""
        return F.layer_norm(m - m.mean(1, keepdim=True), m.shape[-1:])

    def transported_maps(self, v1: Tensor, m: Tensor) -> Tensor:
        """``G^{M->V}[B,K,N,N] = rownorm(Pi G^M_k Pi^T)`` with ``Pi = softmax_L(V1 M^T / sqrt(D))``."""
        split = self.video_relation.split
        g_m = relation_maps(split(self.mediator_query_proj(m)), split(self.mediator_key_proj(m)))
        pi = torch.softmax(v1 @ m.transpose(1, 2) / math.sqrt(m.shape[-1]), dim=-1)[:, None]
        g = pi @ g_m @ pi.transpose(-1, -2)
        return g / g.sum(-1, keepdim=True).clamp_min(1e-12)

    def level1(self, v: Tensor, return_maps: bool = False) -> tuple[Tensor, Tensor | None]:
        """(Ablation ``static``: the clip's mean token out,) then ``V1 = R_V(V~)[B,N,D]`` and, when asked, its bases
        ``G^V[B,K,N,N]``."""
        if self.static:
            v = v - v.mean(1, keepdim=True)
        return self.video_relation(v, return_maps=True) if return_maps else (self.video_relation(v), None)

    def relate(self, v: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
        """The hierarchical relation encoder: ``V -> V'[B,N,D]`` and the alignment loss."""
        v1, g_v = self.level1(v, return_maps=self.align_weight > 0)
        h = self.norm_relate(v1)
        g_mv = self.transported_maps(h, m)
        prior = torch.softmax(self.mediator_base_logits, dim=0)
        r = torch.einsum("k,bknm,bkme->bne", prior, g_mv, self.video_relation.split(self.video_value_proj(h)))
        align = v.new_zeros(()) if g_v is None else ((g_v - g_mv) ** 2).sum((-1, -2)).mean() / v.shape[1] ** 2
        return v1 + self.out_proj(r), align

    def mediator_weights(self, h: Tensor, m: Tensor) -> Tensor:
        """``P(m|V)``: ``A[B,N,L] = softmax_L(LN_a(V') W_a M^T / sqrt(D))`` from ``h = LN_a(V')``."""
        return torch.softmax(self.mediator_attn_proj(h) @ m.transpose(1, 2) / math.sqrt(m.shape[-1]), dim=-1)

    def mediator_given(self, v_prime: Tensor, m: Tensor) -> Tensor:
        """``P(m|V)[B,N,L]`` read from ``V'`` itself (what readers outside the forward pass ask for)."""
        return self.mediator_weights(self.norm(v_prime), m)

    def intervene(self, v_prime: Tensor, m: Tensor) -> Tensor:
        """Front-door sum: ``V* = V' + W_f [M^; V^]`` with ``M^ = A M`` and ``V^ = NWGM(LN_a V', D_V, p_v)``
        (``mediator_only``: ``V* = W_m M^ + V^ + E_pos``, ``V^ = NWGM(M^, D_V, p_v)``)."""
        h = self.norm(v_prime)
        m_hat = self.mediator_weights(h, m) @ m
        z, prior = self.dictionary()
        query = m_hat if self.mediator_only else h
        v_hat = nwgm_attention(self.query_proj(query), self.key_proj(z), self.value_proj(z), prior)
        if not self.mediator_only:
            return v_prime + self.fuse_proj(torch.cat([m_hat, v_hat], dim=-1))
        return self.mediator_proj(m_hat) + v_hat + self.pos

    def encode(self, v: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Texts ``t`` -> mediator ``M``, then ``V'``: -> (``V'[B,N,D]``, ``M[B,L,D]``, alignment loss)."""
        m = self.mediator(t)
        v_prime, align = self.relate(v, m)
        return v_prime, m, align

    def deconfound(self, v: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
        """``(v[B,N,D], m[B,L,D]) -> (v*[B,N,D], alignment loss)``."""
        v_prime, m, align = self.encode(v, m)
        return self.intervene(v_prime, m), align

    def forward(self, state: StageState) -> StageState:
        v, align = self.deconfound(state.video, state.texts)
        return state._replace(video=v, losses={**state.losses, "align": align})

    def dictionary_features(self, state: StageState) -> Tensor:
        """``D_V`` is fitted where the NWGM query lives, on ``LN_a(V')`` of every clip: ``[B*N, D]``."""
        return self.norm(self.encode(state.video, state.texts)[0]).flatten(0, 1)

    def maps(self, state: StageState) -> dict[str, Tensor]:
        v_prime, m, _ = self.encode(state.video, state.texts)
        g = self.transported_maps(self.norm_relate(self.level1(state.video)[0]), m)
        return {"IVC P(m|V) (tokens x labels)": self.mediator_given(v_prime, m)} | {
            f"IVC transported base {k} (tokens x tokens)": g[:, k] for k in range(g.shape[1])}
