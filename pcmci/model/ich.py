"""ICH: optimal-transport-augmented backdoor adjustment on the label texts, ``T -> T'``.

Paper: "P(Y|V, do(T)) ≈ sum_h P(Y|V, do(T), h) P(h)"; over-aligned cross-modal features found by OT are the
proxy of the unobservable hallucination H ("OT is more reliable than simple thresholding as it matches
distributions to find disproportionately aligned features"). As built, texts ``t[B,L,D]``, frames ``vp[B,F,D]``:

1. ``S_b = norm(t_b) norm(VP_b)^T  [L,F]``; ``Q_b = sinkhorn(1 - S_b, eps)`` with marginals ``1/L``, ``1/F``.
2. The frames each label over-aligns with (``proxy="plan"``, default): ``O_b = L Q_b`` — OT shares every frame
   among the labels by relative alignment, so a frame goes to the label it matches disproportionately (raw
   cosines are not comparable across frames; the plan's column marginals make them so). ``"overalign"``:
   ``rownorm(relu(softmax_F(S_b / eps) - L Q_b))``, the similarity mass beyond the transport budget;
   ``"similarity"``: ``S_b``. Measured on the shipped VLM (``pcmci diagnose --hallucination``): the plan puts more
   than half of the prop's label on the frames that show the planted prop, the other two less.
3. The clip's hallucination proxy ``H_b = O_b VP_b [L,D]``, direction ``u_bl = H_bl / |H_bl|``.
4. Backdoor adjustment (``adjust="prior"``): the clip's hallucinated component is removed,
   ``t_bl - <t_bl, u_bl> u_bl``, and the prior expectation over the strata ``Z`` (k-means over H of the training
   split, prior ``p``) takes its place, NWGM-approximated with a query from the text alone:
   ``h_l = sum_z p_z a_lz (Z W_H)_z / sum_z p_z a_lz``, ``a_l = softmax_z(t_l W_q (Z W_k)^T / sqrt(D))``,
   ``T'_b = LN(t_b - <t_b, u_b> u_b + W_o h)``.
   ``adjust="population"``: the clip's own H enters only through the strata it helped fit (the dictionary over
   the training population); ``T' = LN(t + W_o h)`` with the same prior NWGM ``h``, so nothing of this clip reaches
   the texts, and the frames are not read at inference.
   ``adjust="posterior"`` is the pre-fix variant kept for ablations: the query is ``(t + H W_H) W_q``, so the clip
   picks its own stratum, and ``T' = LN(t + W_o [t; h])``.

Default ``adjust="population"``: the causal graph allows no path from the clip's own (confounded) frames to the
logits outside the adjustment, and ``prior``'s projection is one (``tests/test_model_pcmci.py`` leak test: change
only the background CLIP sees, watch the logits). The Sinkhorn plan then runs only to fit the strata.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ICHConfig
from ..kernels import log_sinkhorn
from .dictionary import ConfounderDictionary, nwgm_attention
from .renames import accept_former_names
from .state import StageState

FORMER_NAMES = {"w_h": "value_proj", "w_q": "query_proj", "w_k": "key_proj", "w_o": "out_proj"}


class ICH(nn.Module):
    """``forward(state) -> state`` with texts ``t[B,L,D] -> t'[B,L,D]`` (:meth:`adjust`), reading ``frames[B,F,D]``
    unless ``adjust="population"``."""

    def __init__(self, cfg: ICHConfig, dim: int) -> None:
        super().__init__()
        self.eps, self.iters, self.ot_grad = cfg.eps, cfg.iters, cfg.ot_grad
        self.proxy_kind, self.adjustment = cfg.proxy, cfg.adjust
        self.value_proj = nn.Linear(dim, dim, bias=False)  # W_H: the strata Z (and the proxy H) as values
        self.query_proj = nn.Linear(dim, dim, bias=False)  # W_q
        self.key_proj = nn.Linear(dim, dim, bias=False)  # W_k
        self.out_proj = nn.Linear(2 * dim if cfg.adjust == "posterior" else dim, dim)  # W_o
        self.norm = nn.LayerNorm(dim)
        self.dictionary = ConfounderDictionary(cfg.dict_size, dim, cfg.dictionary, "ICH dictionary")
        accept_former_names(self, FORMER_NAMES)

    def overalignment(self, t: Tensor, vp: Tensor) -> tuple[Tensor, Tensor]:
        """-> (transport plan ``L Q [B,L,F]`` (rows sum to 1), proxy weights ``O [B,L,F]``)."""
        s = F.normalize(t, dim=-1) @ F.normalize(vp, dim=-1).transpose(1, 2)
        cost = 1.0 - (s if self.ot_grad else s.detach())
        balanced = t.shape[1] * log_sinkhorn(cost, self.eps, self.iters)
        if self.proxy_kind == "similarity":
            return balanced, s
        if self.proxy_kind == "plan":
            return balanced, balanced
        over = torch.relu(torch.softmax(s / self.eps, dim=-1) - balanced)
        return balanced, over / over.sum(-1, keepdim=True).clamp_min(1e-6)

    def proxy(self, t: Tensor, vp: Tensor) -> Tensor:
        """Hallucination proxy ``H[B,L,D]``: the visual evidence each label over-aligns with."""
        return self.overalignment(t, vp)[1] @ vp

    @property
    def reads_frames(self) -> bool:
        """Whether ``forward`` reads the clip's frames (all but ``adjust="population"``)."""
        return self.adjustment != "population"

    def forward(self, state: StageState) -> StageState:
        return state._replace(texts=self.adjust(state.texts, state.frames))

    def dictionary_features(self, state: StageState) -> Tensor:
        """The strata are fitted on the proxy ``H`` of every label of every clip: ``[B*L, D]``."""
        return self.proxy(state.texts, state.frames).flatten(0, 1)

    def maps(self, state: StageState) -> dict[str, Tensor]:
        plan, over = self.overalignment(state.texts, state.frames)
        if self.proxy_kind == "plan":  # the proxy weights are the plan itself
            return {"ICH transport plan L·Q = proxy weights O (labels x frames)": plan}
        return {"ICH transport plan L·Q (labels x frames)": plan,
                f"ICH proxy weights O, {self.proxy_kind} (labels x frames)": over}

    def adjust(self, t: Tensor, vp: Tensor | None) -> Tensor:
        """The backdoor adjustment ``t[B,L,D] -> t'[B,L,D]`` (see the module docstring)."""
        z, prior = self.dictionary()
        if self.adjustment == "posterior":
            query = self.query_proj(t + self.value_proj(self.proxy(t, vp)))
            h_hat = nwgm_attention(query, self.key_proj(z), self.value_proj(z), prior)
            return self.norm(t + self.out_proj(torch.cat([t, h_hat], dim=-1)))
        h_prior = nwgm_attention(self.query_proj(t), self.key_proj(z), self.value_proj(z), prior)
        if self.reads_frames:  # "prior": the clip's hallucinated direction is projected out first
            u = F.normalize(self.proxy(t, vp), dim=-1)
            t = t - (t * u).sum(-1, keepdim=True) * u
        return self.norm(t + self.out_proj(h_prior))
