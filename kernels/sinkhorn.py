"""Batched entropic optimal transport in the log domain.

``log_sinkhorn(cost[B,R,S], eps, iters, a=None, b=None, mask=None) -> plan[B,R,S]``

Potentials ``f[B,R]``, ``g[B,S]`` are updated ``iters`` times (a fixed count, no early stop):
``f = eps log a - eps LSE_j((g_j - C_ij)/eps)``, ``g = eps log b - eps LSE_i((f_i - C_ij)/eps)``,
and the plan is ``exp((f_i + g_j - C_ij)/eps)``. Accumulation is fp32 whatever the input dtype.
"""
from __future__ import annotations

import torch
from torch import Tensor


def _check_inputs(cost: Tensor, eps: float, iters: int, mask: Tensor | None) -> None:
    if cost.dim() != 3:
        raise ValueError(f"log_sinkhorn: cost must be [B,R,S], got shape {tuple(cost.shape)}")
    if not eps > 0:
        raise ValueError(f"log_sinkhorn: eps must be > 0, got {eps}")
    if iters < 1:
        raise ValueError(f"log_sinkhorn: iters must be >= 1, got {iters}")
    if mask is not None and mask.shape != cost.shape:
        raise ValueError(f"log_sinkhorn: mask shape {tuple(mask.shape)} != cost shape {tuple(cost.shape)}")
    valid = cost if mask is None else cost[mask]
    if not bool(torch.isfinite(valid).all()):
        raise ValueError("log_sinkhorn: cost contains NaN or inf (in unmasked entries)")


def _log_marginal(m: Tensor | None, valid: Tensor) -> Tensor:
    """Log of a marginal ``[B,n]``; uniform over the valid entries when ``m`` is None; -inf where invalid."""
    if m is None:
        count = valid.sum(-1, keepdim=True).clamp_min(1)
        m = valid.float() / count
    else:
        m = m.float().expand(valid.shape)
    return torch.where(valid, m.clamp_min(1e-38).log(), torch.full_like(m, float("-inf")))


def log_sinkhorn_reference(
    cost: Tensor,
    eps: float,
    iters: int,
    a: Tensor | None = None,
    b: Tensor | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """Reference log-domain Sinkhorn, differentiable by autograd.

    cost: [B,R,S]; a: [B,R] or [R] row marginal; b: [B,S] or [S]; mask: [B,R,S] bool, True = real entry.
    Returns the plan [B,R,S] in ``cost.dtype``; masked entries are exactly 0.
    """
    _check_inputs(cost, eps, iters, mask)
    c = cost.float()
    if mask is None:
        mask = torch.ones_like(c, dtype=torch.bool)
    c = c.masked_fill(~mask, float("inf"))
    log_a = _log_marginal(a, mask.any(-1))
    log_b = _log_marginal(b, mask.any(-2))
    f = torch.zeros_like(log_a)
    g = torch.zeros_like(log_b)
    for _ in range(iters):
        f = eps * log_a - eps * _safe_lse((g[:, None, :] - c) / eps, -1)
        g = eps * log_b - eps * _safe_lse((f[:, :, None] - c) / eps, -2)
    log_plan = (f[:, :, None] + g[:, None, :] - c) / eps
    plan = torch.exp(log_plan).masked_fill(~mask, 0.0)
    return plan.to(cost.dtype)


def _safe_lse(x: Tensor, dim: int) -> Tensor:
    """logsumexp that returns -inf (not NaN) for all -inf slices and keeps gradients finite."""
    m = x.amax(dim, keepdim=True).detach()
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    return (x - m).exp().sum(dim).log() + m.squeeze(dim)


def log_sinkhorn(
    cost: Tensor,
    eps: float,
    iters: int,
    a: Tensor | None = None,
    b: Tensor | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """Batched log-domain Sinkhorn plan ``[B,R,S]``; the op the model calls (see module docstring)."""
    return log_sinkhorn_reference(cost, eps, iters, a, b, mask)
