"""Batched entropic optimal transport in the log domain.

``log_sinkhorn(cost[B,R,S], eps, iters, a=None, b=None, mask=None) -> plan[B,R,S]``

With the scaled cost ``K = -cost/eps`` and log-marginals ``la[B,R]``, ``lb[B,S]`` the scaled potentials start
at ``v = 0`` and are updated ``iters`` times (a fixed count: no early stop, compile/CUDA-graph friendly):
``r = LSE_j(v_j + K_ij)``, ``u = la - r``; ``c = LSE_i(u_i + K_ij)``, ``v = lb - c``; the plan is
``exp(u_i + v_j + K_ij)`` (``eps*u``, ``eps*v`` are the usual potentials f, g). Accumulation is fp32 (fp64 for
fp64 inputs on the reference path) whatever the input dtype. ``mask[B,R,S]`` (True = real entry) gives
padded entries ``K = -inf``: the plan is exactly 0 there and default marginals are uniform over valid rows/cols.

Triton (CUDA): regime 1 holds one problem on chip and runs every iteration in one launch, one program per
problem. Regime 2 (padded ``R·S`` over ``ONCHIP_MAX``; the backward's limit is ``ONCHIP_BWD_MAX``) streams
cost tiles with an online log-sum-exp, also in one launch (one program per problem, phases separated by block
barriers). The forward stores the log-normalisers
``r, c`` of every iteration, ``O(iters·(R+S))`` per problem; the backward replays them in reverse and gives the
exact gradient of the computed plan w.r.t. ``cost``, ``a`` and ``b`` (regime 2: one launch for the
potential adjoints, one tile-parallel launch for the cost gradient).

Dispatch (the op's body): Triton on CUDA; elsewhere the opaque reference ops ``pcmci::log_sinkhorn_ref`` and
``pcmci::log_sinkhorn_ref_backward`` (same math in PyTorch); ``PCMCI_KERNELS=reference|triton`` forces one.
Eager calls check the cost for NaN/inf on the host (a sync on CUDA); compiled graphs use an async assert.

FLOPs: each half-iteration costs one exp-and-accumulate per cost entry, the plan one more, so the forward is
``B·R·S·(2·iters+1)`` multiply-add equivalents, the backward twice that. ``fvcore_handle`` counts one
multiply-add as one FLOP (fvcore's convention); the ``torch.utils.flop_counter`` formulas count two (torch's).
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton
from torch.utils.flop_counter import register_flop_formula

from ._common import TINY_TL, Launch, TensorArg, acc_dtype, aligned, device_arch, jit_shape, make_launch, safe_lse, triton_type, use_triton

# Dispatch table, the same on sm_80 / sm_89 / sm_90 and for fp32 / bf16 / fp16 (``pcmci kernels report``: no
# spills): regime 1 up to ONCHIP_MAX padded elements forward and ONCHIP_BWD_MAX backward (it holds about twice
# the forward's tiles), else regime 2 on tiles of STREAM_TILE elements, at most STREAM_COLS wide.
# ELEMS_PER_THREAD sets the warps (4 to 16) of the one-program-per-problem kernels; the tile-parallel cost
# gradient runs STREAM_COST_WARPS (more programs, 16 elements per thread).
ONCHIP_MAX = 8192
ONCHIP_BWD_MAX = 4096
STREAM_TILE, STREAM_COLS = 2048, 64
ELEMS_PER_THREAD = 8
STREAM_COST_WARPS = 4
_NONFINITE = "log_sinkhorn: cost contains NaN or inf in unmasked entries"


# ----------------------------------------------------------------------------------------- reference (spec)
def _check_inputs(cost: Tensor, eps: float, iters: int, mask: Tensor | None) -> None:
    if cost.dim() != 3:
        raise ValueError(f"log_sinkhorn: cost must be [B,R,S], got shape {tuple(cost.shape)}")
    if not eps > 0:
        raise ValueError(f"log_sinkhorn: eps must be > 0, got {eps}")
    if iters < 1:
        raise ValueError(f"log_sinkhorn: iters must be >= 1, got {iters}")
    if mask is not None and (mask.shape != cost.shape or mask.dtype != torch.bool):
        raise ValueError(f"log_sinkhorn: mask must be bool {tuple(cost.shape)}, got {mask.dtype} {tuple(mask.shape)}")


def _check_finite(cost: Tensor, mask: Tensor | None) -> None:
    """Clear error on NaN/inf costs: a Python raise in eager, an async assert inside compiled graphs."""
    ok = torch.isfinite(cost) if mask is None else torch.isfinite(cost) | ~mask
    if torch.compiler.is_compiling():
        torch._assert_async(ok.all(), _NONFINITE)
    elif not bool(ok.all()):
        raise ValueError(_NONFINITE)


def _uniform_log_marginal(B: int, n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``log(1/n)`` as ``[B,n]``: the uniform marginal without a mask, in two ops (``fl(1/n)`` then its log, the
    values ``_log_marginal`` computes from an all-valid mask in six)."""
    return torch.full((B, n), 1.0 / n, dtype=dtype, device=device).log()


def _log_marginal(m: Tensor | None, valid: Tensor, dtype: torch.dtype) -> Tensor:
    """Log of a marginal ``[B,n]``; uniform over the valid entries when ``m`` is None; -inf where invalid."""
    if m is None:
        m = valid.to(dtype) / valid.sum(-1, keepdim=True).clamp_min(1)
    else:
        m = m.to(dtype).expand(valid.shape)
    return torch.where(valid, m.clamp_min(torch.finfo(torch.float32).tiny).log(), float("-inf"))


def _log_marginals(cost: Tensor, a: Tensor | None, b: Tensor | None, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    B, R, S = cost.shape
    dt = acc_dtype(cost)
    if mask is None and a is None and b is None:
        return _uniform_log_marginal(B, R, dt, cost.device), _uniform_log_marginal(B, S, dt, cost.device)
    if mask is None:
        rows = torch.ones(B, R, dtype=torch.bool, device=cost.device)
        cols = torch.ones(B, S, dtype=torch.bool, device=cost.device)
    else:
        rows, cols = mask.any(-1), mask.any(-2)
    return _log_marginal(a, rows, dt), _log_marginal(b, cols, dt)


def _scaled_cost(cost: Tensor, eps: float, mask: Tensor | None, dtype: torch.dtype) -> Tensor:
    k = cost.to(dtype) * (-1.0 / eps)
    return k if mask is None else k.masked_fill(~mask, float("-inf"))


def _torch_forward(k: Tensor, la: Tensor, lb: Tensor, iters: int) -> tuple[Tensor, Tensor, Tensor]:
    """Sinkhorn on the scaled cost ``k[B,R,S]``: plan and the log-normaliser histories ``r[B,T,R]``, ``c[B,T,S]``."""
    v = torch.zeros_like(lb)
    rs, cs = [], []
    for _ in range(iters):
        rs.append(safe_lse(v[:, None, :] + k, -1))
        u = la - rs[-1]
        cs.append(safe_lse(u[:, :, None] + k, -2))
        v = lb - cs[-1]
    return torch.exp(u[:, :, None] + v[:, None, :] + k), torch.stack(rs, 1), torch.stack(cs, 1)


def _torch_backward(
    grad: Tensor, k: Tensor, la: Tensor, lb: Tensor, rh: Tensor, ch: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Reverse replay of ``_torch_forward``: gradients w.r.t. ``k``, ``la``, ``lb`` from the plan's gradient."""
    T = rh.shape[1]
    dk = grad.to(k.dtype) * torch.exp((la - rh[:, -1])[:, :, None] + (lb - ch[:, -1])[:, None, :] + k)
    du, dv = dk.sum(-1), dk.sum(-2)
    dla, dlb = torch.zeros_like(la), torch.zeros_like(lb)
    for t in range(T - 1, -1, -1):
        wg = torch.exp((la - rh[:, t])[:, :, None] + k - ch[:, t, None, :]) * -dv[:, None, :]
        dlb = dlb + dv
        du = du + wg.sum(-1)
        v_prev = lb - ch[:, t - 1] if t > 0 else torch.zeros_like(lb)
        wf = torch.exp(v_prev[:, None, :] + k - rh[:, t, :, None]) * -du[:, :, None]
        dla = dla + du
        dk = dk + wg + wf
        du, dv = torch.zeros_like(du), wf.sum(-2)
    return dk, dla, dlb


def _checked_log_marginals(cost: Tensor, eps: float, iters: int, a: Tensor | None, b: Tensor | None,
                           mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """The log marginals of a public call, once its arguments and its unmasked costs have been checked."""
    _check_inputs(cost, eps, iters, mask)
    _check_finite(cost, mask)
    return _log_marginals(cost, a, b, mask)


def reference_forward(cost: Tensor, log_a: Tensor, log_b: Tensor, eps: float, iters: int,
                      mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """The reference math on log marginals: the plan (accumulation dtype) and the log-normaliser histories
    ``r[B,T,R]``, ``c[B,T,S]``; what the op runs off CUDA, and what the profiler's independent count replays."""
    return _torch_forward(_scaled_cost(cost, eps, mask, log_a.dtype), log_a, log_b, iters)


def log_sinkhorn_reference(cost: Tensor, eps: float, iters: int, a: Tensor | None = None, b: Tensor | None = None,
                           mask: Tensor | None = None) -> Tensor:
    """Reference log-domain Sinkhorn, differentiable by autograd.

    cost: [B,R,S]; a: [B,R] or [R] row marginal; b: [B,S] or [S]; mask: [B,R,S] bool, True = real entry.
    Returns the plan [B,R,S] in ``cost.dtype``; masked entries are exactly 0.
    """
    la, lb = _checked_log_marginals(cost, eps, iters, a, b, mask)
    return reference_forward(cost, la, lb, eps, iters, mask)[0].to(cost.dtype)


# ---------------------------------------------------------------------------------------------- Triton
@triton.jit
def _load_k(C, M, off, i, j, R, S, neg_inv_eps, HAS_MASK: tl.constexpr):
    """Scaled cost tile ``-C/eps`` (fp32) at rows ``i``, cols ``j``; -inf outside the problem or masked."""
    valid = (i[:, None] < R) & (j[None, :] < S)
    idx = off + i[:, None] * S + j[None, :]
    c = tl.load(C + idx, mask=valid, other=0.0).to(tl.float32)
    if HAS_MASK:
        valid = valid & (tl.load(M + idx, mask=valid, other=0) != 0)
    return tl.where(valid, c * neg_inv_eps, float("-inf"))


@triton.jit
def _lse(x, axis: tl.constexpr):
    m = tl.max(x, axis)
    m = tl.where(m == float("-inf"), 0.0, m)
    s = tl.sum(tl.exp(x - tl.expand_dims(m, axis)), axis)
    return tl.log(tl.maximum(s, TINY_TL)) + m


@triton.jit
def _lse_update(m, s, x, axis: tl.constexpr):
    """Online log-sum-exp: fold tile ``x`` (reduced over ``axis``) into running max ``m`` and sum ``s``."""
    m_new = tl.maximum(m, tl.max(x, axis))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    s = s * tl.exp(m - m_safe) + tl.sum(tl.exp(x - tl.expand_dims(m_safe, axis)), axis)
    return m_new, s


@triton.jit
def _lse_start(N: tl.constexpr):
    """An empty online log-sum-exp of ``N`` lanes: running max ``-inf``, running sum 0."""
    return tl.full([N], float("-inf"), tl.float32), tl.zeros([N], tl.float32)


@triton.jit
def _lse_finish(m, s):
    return tl.log(tl.maximum(s, TINY_TL)) + tl.where(m == float("-inf"), 0.0, m)


@triton.jit
def _u(LA, RH, pid, t, T, i, R):
    """Row potential ``u_t = la - r_t`` at rows ``i`` (-inf outside)."""
    la = tl.load(LA + pid * R + i, mask=i < R, other=float("-inf"))
    return la - tl.load(RH + (pid * T + t) * R + i, mask=i < R, other=0.0)


@triton.jit
def _v(LB, CH, pid, t, T, j, S):
    """Column potential ``v_t = lb - c_t`` at cols ``j``; ``v_{-1} = 0``."""
    lb = tl.load(LB + pid * S + j, mask=j < S, other=float("-inf"))
    c = tl.load(CH + (pid * T + t) * S + j, mask=(j < S) & (t >= 0), other=0.0)
    return tl.where(t >= 0, lb - c, 0.0)


@triton.jit
def _fwd_onchip(C, M, LA, LB, P, RH, CH, R, S, T, neg_inv_eps,
                HAS_MASK: tl.constexpr, BR: tl.constexpr, BS: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    i = tl.arange(0, BR)
    j = tl.arange(0, BS)
    k = _load_k(C, M, pid * R * S, i, j, R, S, neg_inv_eps, HAS_MASK)
    la = tl.load(LA + pid * R + i, mask=i < R, other=float("-inf"))
    lb = tl.load(LB + pid * S + j, mask=j < S, other=float("-inf"))
    u = tl.zeros([BR], tl.float32)
    v = tl.zeros([BS], tl.float32)
    for t in range(T):
        r = _lse(v[None, :] + k, 1)
        u = la - r
        c = _lse(u[:, None] + k, 0)
        v = lb - c
        tl.store(RH + (pid * T + t) * R + i, r, mask=i < R)
        tl.store(CH + (pid * T + t) * S + j, c, mask=j < S)
    p = tl.exp(u[:, None] + v[None, :] + k)
    tl.store(P + pid * R * S + i[:, None] * S + j[None, :], p.to(P.dtype.element_ty),
             mask=(i[:, None] < R) & (j[None, :] < S))


@triton.jit
def _fwd_stream(C, M, LA, LB, P, RH, CH, R, S, T, neg_inv_eps,
                HAS_MASK: tl.constexpr, BR: tl.constexpr, BS: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    off = pid * R * S
    ar = tl.arange(0, BR)
    ac = tl.arange(0, BS)
    for t in range(T):
        for r0 in range(0, R, BR):  # r_t = LSE_j(v_{t-1} + K), streamed over column tiles
            i = r0 + ar
            m, s = _lse_start(BR)
            for s0 in range(0, S, BS):
                j = s0 + ac
                k = _load_k(C, M, off, i, j, R, S, neg_inv_eps, HAS_MASK)
                m, s = _lse_update(m, s, _v(LB, CH, pid, t - 1, T, j, S)[None, :] + k, 1)
            tl.store(RH + (pid * T + t) * R + i, _lse_finish(m, s), mask=i < R)
        tl.debug_barrier()
        for s0 in range(0, S, BS):  # c_t = LSE_i(u_t + K), streamed over row tiles
            j = s0 + ac
            m, s = _lse_start(BS)
            for r0 in range(0, R, BR):
                i = r0 + ar
                k = _load_k(C, M, off, i, j, R, S, neg_inv_eps, HAS_MASK)
                m, s = _lse_update(m, s, _u(LA, RH, pid, t, T, i, R)[:, None] + k, 0)
            tl.store(CH + (pid * T + t) * S + j, _lse_finish(m, s), mask=j < S)
        tl.debug_barrier()
    for r0 in range(0, R, BR):
        i = r0 + ar
        u = _u(LA, RH, pid, T - 1, T, i, R)
        for s0 in range(0, S, BS):
            j = s0 + ac
            k = _load_k(C, M, off, i, j, R, S, neg_inv_eps, HAS_MASK)
            p = tl.exp(u[:, None] + _v(LB, CH, pid, T - 1, T, j, S)[None, :] + k)
            tl.store(P + off + i[:, None] * S + j[None, :], p.to(P.dtype.element_ty),
                     mask=(i[:, None] < R) & (j[None, :] < S))


@triton.jit
def _bwd_onchip(G, C, M, LA, LB, RH, CH, DC, DLA, DLB, R, S, T, neg_inv_eps,
                HAS_MASK: tl.constexpr, BR: tl.constexpr, BS: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    i = tl.arange(0, BR)
    j = tl.arange(0, BS)
    inb = (i[:, None] < R) & (j[None, :] < S)
    idx = pid * R * S + i[:, None] * S + j[None, :]
    k = _load_k(C, M, pid * R * S, i, j, R, S, neg_inv_eps, HAS_MASK)
    g = tl.load(G + idx, mask=inb, other=0.0).to(tl.float32)
    dk = g * tl.exp(_u(LA, RH, pid, T - 1, T, i, R)[:, None] + _v(LB, CH, pid, T - 1, T, j, S)[None, :] + k)
    du = tl.sum(dk, 1)
    dv = tl.sum(dk, 0)
    dla = tl.zeros([BR], tl.float32)
    dlb = tl.zeros([BS], tl.float32)
    for tt in range(T):
        t = T - 1 - tt
        r = tl.load(RH + (pid * T + t) * R + i, mask=i < R, other=0.0)
        c = tl.load(CH + (pid * T + t) * S + j, mask=j < S, other=0.0)
        wg = tl.exp(_u(LA, RH, pid, t, T, i, R)[:, None] + k - c[None, :]) * -dv[None, :]
        dlb += dv
        du += tl.sum(wg, 1)
        wf = tl.exp(_v(LB, CH, pid, t - 1, T, j, S)[None, :] + k - r[:, None]) * -du[:, None]
        dla += du
        dk += wg + wf
        dv = tl.sum(wf, 0)
        du = tl.zeros([BR], tl.float32)
    tl.store(DC + idx, (dk * neg_inv_eps).to(DC.dtype.element_ty), mask=inb)
    tl.store(DLA + pid * R + i, dla, mask=i < R)
    tl.store(DLB + pid * S + j, dlb, mask=j < S)


@triton.jit
def _bwd_stream_adjoints(G, C, M, LA, LB, RH, CH, DU0, DUH, DVH, R, S, T, neg_inv_eps,
                         HAS_MASK: tl.constexpr, BR: tl.constexpr, BS: tl.constexpr):
    """Adjoints ``du_t`` [B,T,R], ``dv_t`` [B,T,S] of every iteration's potentials (one program per problem)."""
    pid = tl.program_id(0).to(tl.int64)
    off = pid * R * S
    ar = tl.arange(0, BR)
    ac = tl.arange(0, BS)
    for r0 in range(0, R, BR):  # plan contribution to du_{T-1}
        i = r0 + ar
        acc = _dlogp_sum(G, C, M, LA, LB, RH, CH, pid, off, i, R, S, T, neg_inv_eps, HAS_MASK, True, BR, BS)
        tl.store(DU0 + pid * R + i, acc, mask=i < R)
    for s0 in range(0, S, BS):  # plan contribution to dv_{T-1}
        j = s0 + ac
        acc = _dlogp_sum(G, C, M, LA, LB, RH, CH, pid, off, j, R, S, T, neg_inv_eps, HAS_MASK, False, BS, BR)
        tl.store(DVH + (pid * T + T - 1) * S + j, acc, mask=j < S)
    tl.debug_barrier()
    for tt in range(T):
        t = T - 1 - tt
        for r0 in range(0, R, BR):  # du_t += sum_j wg_ij (-dv_t)_j
            i = r0 + ar
            u = _u(LA, RH, pid, t, T, i, R)
            du = tl.load(DU0 + pid * R + i, mask=(i < R) & (tt == 0), other=0.0)
            for s0 in range(0, S, BS):
                j = s0 + ac
                k = _load_k(C, M, off, i, j, R, S, neg_inv_eps, HAS_MASK)
                c = tl.load(CH + (pid * T + t) * S + j, mask=j < S, other=0.0)
                dv = tl.load(DVH + (pid * T + t) * S + j, mask=j < S, other=0.0)
                du += tl.sum(tl.exp(u[:, None] + k - c[None, :]) * -dv[None, :], 1)
            tl.store(DUH + (pid * T + t) * R + i, du, mask=i < R)
        tl.debug_barrier()
        if t > 0:
            for s0 in range(0, S, BS):  # dv_{t-1} = sum_i wf_ij (-du_t)_i
                j = s0 + ac
                v = _v(LB, CH, pid, t - 1, T, j, S)
                dv = tl.zeros([BS], tl.float32)
                for r0 in range(0, R, BR):
                    i = r0 + ar
                    k = _load_k(C, M, off, i, j, R, S, neg_inv_eps, HAS_MASK)
                    r = tl.load(RH + (pid * T + t) * R + i, mask=i < R, other=0.0)
                    du = tl.load(DUH + (pid * T + t) * R + i, mask=i < R, other=0.0)
                    dv += tl.sum(tl.exp(v[None, :] + k - r[:, None]) * -du[:, None], 0)
                tl.store(DVH + (pid * T + t - 1) * S + j, dv, mask=j < S)
        tl.debug_barrier()


@triton.jit
def _dlogp(G, C, M, LA, LB, RH, CH, pid, off, i, j, R, S, T, neg_inv_eps, HAS_MASK: tl.constexpr):
    """``grad_plan * plan`` on one tile."""
    k = _load_k(C, M, off, i, j, R, S, neg_inv_eps, HAS_MASK)
    g = tl.load(G + off + i[:, None] * S + j[None, :], mask=(i[:, None] < R) & (j[None, :] < S), other=0.0)
    return g.to(tl.float32) * tl.exp(_u(LA, RH, pid, T - 1, T, i, R)[:, None] + _v(LB, CH, pid, T - 1, T, j, S)[None, :] + k)


@triton.jit
def _dlogp_sum(G, C, M, LA, LB, RH, CH, pid, off, outer, R, S, T, neg_inv_eps, HAS_MASK: tl.constexpr,
               ROWS: tl.constexpr, BO: tl.constexpr, BI: tl.constexpr):
    """``grad_plan * plan`` summed over the other axis at rows (``ROWS``) or columns ``outer`` [BO], streamed over
    tiles of ``BI`` (the plan's contribution to the last iteration's potential adjoints)."""
    acc = tl.zeros([BO], tl.float32)
    inner_size = S if ROWS else R
    for x0 in range(0, inner_size, BI):
        inner = x0 + tl.arange(0, BI)
        if ROWS:
            acc += tl.sum(_dlogp(G, C, M, LA, LB, RH, CH, pid, off, outer, inner, R, S, T, neg_inv_eps, HAS_MASK), 1)
        else:
            acc += tl.sum(_dlogp(G, C, M, LA, LB, RH, CH, pid, off, inner, outer, R, S, T, neg_inv_eps, HAS_MASK), 0)
    return acc


@triton.jit
def _bwd_stream_cost(G, C, M, LA, LB, RH, CH, DUH, DVH, DC, R, S, T, neg_inv_eps,
                     HAS_MASK: tl.constexpr, BR: tl.constexpr, BS: tl.constexpr):
    """Cost gradient of one tile, summing every iteration's terms in registers (grid: tiles x B)."""
    n_col_tiles = tl.cdiv(S, BS)
    i = (tl.program_id(0) // n_col_tiles) * BR + tl.arange(0, BR)
    j = (tl.program_id(0) % n_col_tiles) * BS + tl.arange(0, BS)
    pid = tl.program_id(1).to(tl.int64)
    off = pid * R * S
    k = _load_k(C, M, off, i, j, R, S, neg_inv_eps, HAS_MASK)
    dk = _dlogp(G, C, M, LA, LB, RH, CH, pid, off, i, j, R, S, T, neg_inv_eps, HAS_MASK)
    for t in range(T):
        r = tl.load(RH + (pid * T + t) * R + i, mask=i < R, other=0.0)
        c = tl.load(CH + (pid * T + t) * S + j, mask=j < S, other=0.0)
        du = tl.load(DUH + (pid * T + t) * R + i, mask=i < R, other=0.0)
        dv = tl.load(DVH + (pid * T + t) * S + j, mask=j < S, other=0.0)
        dk += tl.exp(_u(LA, RH, pid, t, T, i, R)[:, None] + k - c[None, :]) * -dv[None, :]
        dk += tl.exp(_v(LB, CH, pid, t - 1, T, j, S)[None, :] + k - r[:, None]) * -du[:, None]
    tl.store(DC + off + i[:, None] * S + j[None, :], (dk * neg_inv_eps).to(DC.dtype.element_ty),
             mask=(i[:, None] < R) & (j[None, :] < S))


def _warps(elements: int) -> int:
    """Warps for a tile: ``ELEMS_PER_THREAD`` fp32 elements per thread, 4 to 16 warps."""
    return min(16, max(4, elements // (32 * ELEMS_PER_THREAD)))


def _blocks(R: int, S: int, backward: bool, block: tuple[int, int] | None) -> tuple[bool, int, int, int]:
    """(on-chip?, BR, BS, num_warps) of one pass; ``block`` forces regime 2 with that tile (tests)."""
    BR, BS = triton.next_power_of_2(R), triton.next_power_of_2(S)
    limit = min(ONCHIP_MAX, ONCHIP_BWD_MAX) if backward else ONCHIP_MAX
    if block is None and BR * BS <= limit:
        return True, BR, BS, _warps(BR * BS)
    if block is not None:
        return False, *block, 4
    BS = min(BS, STREAM_COLS)
    BR = min(BR, STREAM_TILE // BS)
    return False, BR, BS, _warps(BR * BS)


@functools.lru_cache(maxsize=1024)
def launch_configs(B: int, R: int, S: int, dtype: torch.dtype, arch: int, masked: bool = False, *, iters: int,
                   eps: float = 0.1, block: tuple[int, int] | None = None) -> tuple[Launch, ...]:
    """The launches of one forward and backward at this shape: ``(forward, *backward)``.

    Regime 1: ``(_fwd_onchip, _bwd_onchip)``; regime 2: ``(_fwd_stream, _bwd_stream_adjoints, _bwd_stream_cost)``.
    ``arch`` is the compute capability (89 = RTX 4090); ``iters`` and ``eps`` are passed to the kernels as
    the launchers pass them (``iters`` is specialised on, ``eps`` is a float and is not); ``block`` forces
    regime 2 with that tile (tests). Cached: the launchers ask on every call (20 µs of Python otherwise).
    """
    triton_type(dtype)  # raises for a dtype without kernels
    data, fp32 = TensorArg(dtype), TensorArg(torch.float32)
    args = dict(C=data, M=TensorArg(torch.uint8) if masked else data, P=data, G=data, DC=data,
                R=R, S=S, T=iters, neg_inv_eps=-1.0 / eps,
                **dict.fromkeys(("LA", "LB", "RH", "CH", "DLA", "DLB", "DU0", "DUH", "DVH"), fp32))
    launches = []
    for backward in (False, True):
        onchip, BR, BS, warps = _blocks(R, S, backward, block)
        const = dict(HAS_MASK=masked, BR=BR, BS=BS)
        kernels = {(False, True): [(_fwd_onchip, warps)], (False, False): [(_fwd_stream, warps)],
                   (True, True): [(_bwd_onchip, warps)],
                   (True, False): [(_bwd_stream_adjoints, warps), (_bwd_stream_cost, STREAM_COST_WARPS)]}
        launches += [make_launch(fn, {n: args[n] for n in fn.arg_names if n in args}, const, w)
                     for fn, w in kernels[backward, onchip]]
    return tuple(launches)


def _mask_arg(cost: Tensor, mask: Tensor | None) -> Tensor:
    return cost if mask is None else aligned(mask.to(torch.uint8))[0]


def triton_forward(
    cost: Tensor, la: Tensor, lb: Tensor, eps: float, iters: int, mask: Tensor | None = None,
    block: tuple[int, int] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Launch the forward: ``plan[B,R,S]`` (cost dtype), ``r[B,T,R]``, ``c[B,T,S]`` (fp32); one launch."""
    B, R, S = cost.shape
    cost, la, lb = aligned(cost, la.float(), lb.float())
    plan = torch.empty_like(cost)
    rh = cost.new_empty((B, iters, R), dtype=torch.float32)
    ch = cost.new_empty((B, iters, S), dtype=torch.float32)
    fwd = launch_configs(B, R, S, cost.dtype, device_arch(cost), mask is not None, iters=iters, eps=eps,
                         block=block)[0]
    wrap_triton(fwd.fn)[(B,)](cost, _mask_arg(cost, mask), la, lb, plan, rh, ch, R, S, iters, -1.0 / eps,
                              **fwd.constexprs, **fwd.options)
    return plan, rh, ch


def triton_backward(
    grad: Tensor, cost: Tensor, la: Tensor, lb: Tensor, rh: Tensor, ch: Tensor, eps: float,
    mask: Tensor | None = None, block: tuple[int, int] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Launch the backward: gradients w.r.t. ``cost`` (cost dtype), ``la``, ``lb`` (fp32)."""
    B, R, S = cost.shape
    T = rh.shape[1]
    grad, cost, la, lb, rh, ch = aligned(grad, cost, la.float(), lb.float(), rh, ch)
    m = _mask_arg(cost, mask)
    dcost = torch.empty_like(cost)
    _, *bwd = launch_configs(B, R, S, cost.dtype, device_arch(cost), mask is not None, iters=T, eps=eps,
                            block=block)
    if len(bwd) == 1:
        dla, dlb = torch.empty_like(la), torch.empty_like(lb)
        wrap_triton(bwd[0].fn)[(B,)](grad, cost, m, la, lb, rh, ch, dcost, dla, dlb, R, S, T, -1.0 / eps,
                                     **bwd[0].constexprs, **bwd[0].options)
        return dcost, dla, dlb
    adjoints, tiles = bwd
    du0 = torch.empty_like(la)
    duh, dvh = torch.empty_like(rh), torch.empty_like(ch)
    wrap_triton(adjoints.fn)[(B,)](grad, cost, m, la, lb, rh, ch, du0, duh, dvh, R, S, T, -1.0 / eps,
                                   **adjoints.constexprs, **adjoints.options)
    grid = (triton.cdiv(R, tiles.constexprs["BR"]) * triton.cdiv(S, tiles.constexprs["BS"]), B)
    wrap_triton(tiles.fn)[grid](grad, cost, m, la, lb, rh, ch, duh, dvh, dcost, R, S, T, -1.0 / eps,
                                **tiles.constexprs, **tiles.options)
    return dcost, duh.sum(1), dvh.sum(1)


# ------------------------------------------------------------------------------------ torch.library op
# The reference math as opaque custom ops: what the Triton ops run off CUDA. Opaque, so torch.compile keeps
# one call instead of unrolling ``iters`` iterations into the graph (minutes of CPU compile time for 50).
@torch.library.custom_op("pcmci::log_sinkhorn_ref", mutates_args=())
def _log_sinkhorn_ref_op(
    cost: Tensor, log_a: Tensor, log_b: Tensor, eps: float, iters: int, mask: Optional[Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    plan, rh, ch = reference_forward(cost, log_a, log_b, eps, iters, mask)
    return plan.to(cost.dtype), rh, ch


@_log_sinkhorn_ref_op.register_fake
def _(cost: Tensor, log_a: Tensor, log_b: Tensor, eps: float, iters: int, mask: Optional[Tensor]) -> tuple:
    B, R, S = cost.shape
    return torch.empty_like(cost), log_a.new_empty((B, iters, R)), log_b.new_empty((B, iters, S))


@torch.library.custom_op("pcmci::log_sinkhorn_ref_backward", mutates_args=())
def _log_sinkhorn_ref_backward_op(
    grad: Tensor, cost: Tensor, log_a: Tensor, log_b: Tensor, rh: Tensor, ch: Tensor, eps: float,
    mask: Optional[Tensor],
) -> tuple[Tensor, Tensor, Tensor]:
    dk, dla, dlb = _torch_backward(grad, _scaled_cost(cost, eps, mask, log_a.dtype), log_a, log_b, rh, ch)
    return (dk * (-1.0 / eps)).to(cost.dtype), dla, dlb


@_log_sinkhorn_ref_backward_op.register_fake
def _(grad: Tensor, cost: Tensor, log_a: Tensor, log_b: Tensor, *args: Any) -> tuple:
    return torch.empty_like(cost), torch.empty_like(log_a), torch.empty_like(log_b)


@triton_op("pcmci::log_sinkhorn", mutates_args=())
def _log_sinkhorn_op(
    cost: Tensor, log_a: Tensor, log_b: Tensor, eps: float, iters: int, mask: Optional[Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    """(plan, r history, c history); Triton on CUDA (or forced), the reference math otherwise."""
    if use_triton(cost):
        return triton_forward(cost, log_a, log_b, eps, iters, mask)
    return torch.ops.pcmci.log_sinkhorn_ref(cost, log_a, log_b, eps, iters, mask)


@triton_op("pcmci::log_sinkhorn_backward", mutates_args=())
def _log_sinkhorn_backward_op(
    grad: Tensor, cost: Tensor, log_a: Tensor, log_b: Tensor, rh: Tensor, ch: Tensor, eps: float,
    mask: Optional[Tensor],
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients w.r.t. (cost, log_a, log_b) of the plan computed by ``pcmci::log_sinkhorn``."""
    if use_triton(cost):
        dcost, dla, dlb = triton_backward(grad, cost, log_a, log_b, rh, ch, eps, mask)
        return dcost, dla.to(log_a.dtype), dlb.to(log_b.dtype)
    return torch.ops.pcmci.log_sinkhorn_ref_backward(grad, cost, log_a, log_b, rh, ch, eps, mask)


def _setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
    cost, log_a, log_b, eps, _, mask = inputs
    ctx.save_for_backward(cost, log_a, log_b, output[1], output[2], mask)
    ctx.eps = eps


def _backward(ctx: Any, grad_plan: Tensor, _grad_r: Tensor, _grad_c: Tensor) -> tuple:
    cost, log_a, log_b, rh, ch, mask = ctx.saved_tensors
    dcost, dla, dlb = torch.ops.pcmci.log_sinkhorn_backward(grad_plan, cost, log_a, log_b, rh, ch, ctx.eps, mask)
    return dcost, dla, dlb, None, None, None


_log_sinkhorn_op.register_autograd(_backward, setup_context=_setup_context)


def _macs(cost_shape: Any, iters: int) -> int:
    B, R, S = cost_shape
    return B * R * S * (2 * iters + 1)


@register_flop_formula(torch.ops.pcmci.log_sinkhorn)
def _flops(cost_shape: Any, la_shape: Any, lb_shape: Any, eps: float, iters: int, *args: Any, **kwargs: Any) -> int:
    return 2 * _macs(cost_shape, iters)


@register_flop_formula(torch.ops.pcmci.log_sinkhorn_backward)
def _flops_backward(grad_shape: Any, cost_shape: Any, la_shape: Any, lb_shape: Any, rh_shape: Any, *args: Any,
                    **kwargs: Any) -> int:
    return 4 * _macs(cost_shape, rh_shape[1])


def fvcore_handle(inputs: list, outputs: list) -> int:
    """fvcore handle for ``pcmci::log_sinkhorn`` (one multiply-add = one FLOP)."""
    return _macs(jit_shape(inputs[0]), int(inputs[4].toIValue()))


def log_sinkhorn(cost: Tensor, eps: float, iters: int, a: Tensor | None = None, b: Tensor | None = None,
                 mask: Tensor | None = None) -> Tensor:
    """Batched log-domain Sinkhorn plan ``[B,R,S]`` (see module docstring); differentiable in cost, a, b.

    cost: [B,R,S] fp32/fp16/bf16; a: [B,R] or [R]; b: [B,S] or [S]; mask: [B,R,S] bool, True = real entry.
    Raises ValueError (eager) or RuntimeError (compiled) when an unmasked cost entry is NaN or inf.
    """
    la, lb = _checked_log_marginals(cost, eps, iters, a, b, mask)
    return torch.ops.pcmci.log_sinkhorn(cost, la, lb, float(eps), int(iters), mask)[0]
