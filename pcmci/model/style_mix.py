"""A training-time intervention on a clip's context statistics (MixStyle, Zhou et al., ICLR 2021, for video tokens).

Causal graph: ``C -> X <- A``, ``A -> Y``, ``C -> Y`` through how the data were collected; C (room, light, camera)
reaches the patch tokens mostly as clip-level statistics — the mean and spread of every channel over all the clip's
tokens (a warm lamp shifts every token the same way, wherever the camera points) — while the action A lives in how
tokens differ from one another (where the hand is, how it moves, the tool against the room). Replacing a clip's
statistics with a mix of its own and another training clip's, label unchanged,

    x' = (x - mu(x)) / sigma(x) * (lam sigma(x) + (1 - lam) sigma(x_j)) + (lam mu(x) + (1 - lam) mu(x_j)),

with ``j`` a random clip of the batch and ``lam ~ Beta(alpha, alpha)``, samples ``do(C = c')`` for the statistics
part of C: training on it estimates ``sum_c P(c) P(Y|X, c)`` by sampling, for a context that moves or stands
still alike (a moving background has the same statistics in every frame). The statistics are constants for the
gradient (as in MixStyle), and each clip is mixed with probability ``p``; at evaluation the layer is the identity.
What it cannot reach: context that lives in *where* tokens differ (a small badge in a corner, a still tool) — the
tool, the cause of a still-object pair, keeps its place relative to the room, so a still cause is not erased.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


def mix_statistics(x: Tensor, lam: Tensor, partner: Tensor, eps: float = 1e-6) -> Tensor:
    """``x[B,T,W]`` with each clip's per-channel token mean and standard deviation (over T, constants for the
    gradient) replaced by ``lam[B]`` of its own and ``1 - lam`` of clip ``partner[B]``'s."""
    mu = x.mean(1, keepdim=True).detach()
    sigma = (x.var(1, keepdim=True, unbiased=False) + eps).sqrt().detach()
    lam = lam.to(x.dtype).view(-1, 1, 1)
    mixed_mu = lam * mu + (1 - lam) * mu[partner]
    mixed_sigma = lam * sigma + (1 - lam) * sigma[partner]
    return (x - mu) / sigma * mixed_sigma + mixed_mu


class StyleMix(nn.Module):
    """Training only: each clip of the batch, with probability ``p``, gets its token statistics mixed with a random
    other clip's (:func:`mix_statistics`, ``lam ~ Beta(alpha, alpha)``); ``x[B,T,W] -> [B,T,W]``."""

    def __init__(self, p: float, alpha: float) -> None:
        super().__init__()
        self.p, self.alpha = p, alpha

    def forward(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        if not self.training or self.p <= 0 or b < 2:
            return x
        lam = torch.distributions.Beta(self.alpha, self.alpha).sample((b,)).to(x.device)
        lam = torch.where(torch.rand(b, device=x.device) < self.p, lam, torch.ones_like(lam))
        shift = torch.randint(1, b, (b,), device=x.device)  # a partner other than the clip itself
        partner = (torch.arange(b, device=x.device) + shift) % b
        return mix_statistics(x, lam, partner)

    def extra_repr(self) -> str:
        return f"p={self.p}, alpha={self.alpha}"
