"""ICH: optimal-transport-augmented backdoor adjustment on the label texts, ``T -> T'``.

1. ``S_b = norm(T) norm(VP_b)^T  [L,F]``, cost ``1 - S_b``.
2. ``Q_b = sinkhorn(1 - S_b, eps, a=1/L, b=1/F)``; detached when ``ot_grad`` is off.
3. Over-alignment proxy ``O_b = rownorm(relu(softmax_F(S_b/tau) - L Q_b))`` (or the plan ``L Q_b``, or ``S_b``).
4. ``H_b = O_b VP_b  [L,D]``, ``h = H W_H``.
5-6. NWGM over the strata ``Z`` with prior ``p``:
   ``a = softmax((T + h) W_q (Z W_k)^T / sqrt(D))``, ``h^ = sum_m p_m a_m (Z W_H)_m / sum_m p_m a_m``,
   ``T' = LN(T + W_o [T; h^])``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ICHConfig
from ..kernels import log_sinkhorn
from .dictionary import ConfounderDictionary, nwgm_attention


class ICH(nn.Module):
    """``forward(t[B,L,D], vp[B,F,D]) -> t'[B,L,D]``."""

    def __init__(self, cfg: ICHConfig, dim: int, temperature: float) -> None:
        super().__init__()
        self.cfg = cfg
        self.temperature = temperature
        self.w_h = nn.Linear(dim, dim, bias=False)
        self.w_q = nn.Linear(dim, dim, bias=False)
        self.w_k = nn.Linear(dim, dim, bias=False)
        self.w_o = nn.Linear(2 * dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.dictionary = ConfounderDictionary(cfg.dict_size, dim, cfg.dictionary)

    def proxy(self, t: Tensor, vp: Tensor) -> Tensor:
        """Hallucination proxy ``H[B,L,D]``: the visual evidence each label over-aligns with."""
        s = F.normalize(t, dim=-1) @ F.normalize(vp, dim=-1).transpose(1, 2)
        if self.cfg.proxy == "similarity":
            return s @ vp
        cost = 1.0 - (s if self.cfg.ot_grad else s.detach())
        balanced = t.shape[1] * log_sinkhorn(cost, self.cfg.eps, self.cfg.iters)
        if self.cfg.proxy == "plan":
            return balanced @ vp
        over = torch.relu(torch.softmax(s / self.temperature, dim=-1) - balanced)
        return (over / over.sum(-1, keepdim=True).clamp_min(1e-6)) @ vp

    def forward(self, t: Tensor, vp: Tensor) -> Tensor:
        h = self.w_h(self.proxy(t, vp))
        z, prior = self.dictionary()
        h_hat = nwgm_attention(self.w_q(t + h), self.w_k(z), self.w_h(z), prior)
        return self.norm(t + self.w_o(torch.cat([t, h_hat], dim=-1)))
