"""K-base relation products.

``relation_product(q[B,K,N,d], k[B,K,N,d], v[B,K,N,e], prior[K], mask=None, return_maps=False) -> out[B,N,e]``
with ``out = sum_k prior_k softmax(q_k k_k^T / sqrt(d)) v_k``; ``mask[B,N]`` marks valid keys (True = real).
A query row with no valid key gets a zero output (and zero map row).

Triton (CUDA): one forward kernel fused across the K bases (grid: query blocks x B); each program runs an
online softmax over key tiles per base and accumulates ``prior_k · O_k`` in registers, so no ``B×K×N×e``
tensor reaches HBM; it stores the per-base log-sum-exp ``[B,K,N]``. The backward recomputes the maps
(FlashAttention-style): one kernel gives ``dq`` and the row terms ``rowdot = dout·O_k`` (whose sum is
``d prior``), a second gives ``dk`` and ``dv``.

Dispatch (the op's body): Triton on CUDA, the reference math elsewhere; ``PCMCI_KERNELS=reference|triton``
forces one. Head widths ``max(d, e)`` over ``MAX_WIDTH`` (128) always run the reference math: no tile of the
dispatch table is verified spill-free there.

FLOPs: ``B·K·N·N·(d+e) + B·K·N·e`` multiply-adds forward (``q k^T``, ``P v``, the prior-weighted sum),
twice that backward; ``fvcore_handle`` counts one multiply-add as one FLOP (fvcore's convention), the
``torch.utils.flop_counter`` formulas count two (torch's).
"""
from __future__ import annotations

import functools
import math
from typing import Any, Optional

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton
from torch.utils.flop_counter import register_flop_formula

from ._common import TINY_TL, Launch, TensorArg, acc_dtype, aligned, device_arch, jit_shape, make_launch, safe_lse, triton_type, use_triton


# ----------------------------------------------------------------------------------------- reference (spec)
def _check_inputs(q: Tensor, k: Tensor, v: Tensor, prior: Tensor, mask: Tensor | None) -> None:
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(f"relation: q and k must both be [B,K,N,d], got {tuple(q.shape)} and {tuple(k.shape)}")
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"relation: v must be [B,K,N,e] matching q {tuple(q.shape)}, got {tuple(v.shape)}")
    if prior.shape != (q.shape[1],):
        raise ValueError(f"relation: prior must be [K={q.shape[1]}], got {tuple(prior.shape)}")
    if mask is not None and (mask.shape != (q.shape[0], q.shape[2]) or mask.dtype != torch.bool):
        raise ValueError(f"relation: mask must be bool [B,N]={(q.shape[0], q.shape[2])}, got {tuple(mask.shape)}")


def _scores(q: Tensor, k: Tensor, mask: Tensor | None) -> Tensor:
    """Scaled scores ``[B,K,N,N]`` in the accumulation dtype, -inf at masked keys."""
    dt = acc_dtype(q)
    s = torch.einsum("bknd,bkmd->bknm", q.to(dt), k.to(dt)) / math.sqrt(q.shape[-1])
    return s if mask is None else s.masked_fill(~mask[:, None, None, :], float("-inf"))


def reference_forward(q: Tensor, k: Tensor, v: Tensor, prior: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """``out[B,N,e]`` (v dtype) and the per-base log-sum-exp ``[B,K,N]`` (accumulation dtype)."""
    s = _scores(q, k, mask)
    lse = safe_lse(s, -1)
    maps = torch.exp(s - lse[..., None])
    out = torch.einsum("k,bknm,bkme->bne", prior.to(s.dtype), maps, v.to(s.dtype))
    return out.to(v.dtype), lse


def _torch_backward(
    dout: Tensor, q: Tensor, k: Tensor, v: Tensor, prior: Tensor, mask: Tensor | None, lse: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients w.r.t. (q, k, v, prior) by recomputing the maps from the stored log-sum-exp."""
    s = _scores(q, k, mask)
    dt = s.dtype
    p = torch.exp(s - lse[..., None])
    vv, pr = v.to(dt), prior.to(dt)[None, :, None, None]
    rowdot = torch.einsum("bknm,bkme,bne->bkn", p, vv, dout.to(dt))
    dok = pr * dout.to(dt)[:, None]
    dv = torch.einsum("bknm,bkne->bkme", p, dok)
    ds = p * (torch.einsum("bkne,bkme->bknm", dok, vv) - pr * rowdot[..., None]) / math.sqrt(q.shape[-1])
    dq = torch.einsum("bknm,bkmd->bknd", ds, k.to(dt))
    dk = torch.einsum("bknm,bknd->bkmd", ds, q.to(dt))
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), rowdot.sum((0, 2)).to(prior.dtype)


def _maps(q: Tensor, k: Tensor, mask: Tensor | None) -> Tensor:
    s = _scores(q, k, mask)
    return torch.exp(s - safe_lse(s, -1)[..., None]).to(q.dtype)


def relation_reference(
    q: Tensor, k: Tensor, v: Tensor, prior: Tensor, mask: Tensor | None = None, return_maps: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """Reference relation product; returns ``out[B,N,e]`` (and the maps ``G[B,K,N,N]`` if asked)."""
    _check_inputs(q, k, v, prior, mask)
    out = reference_forward(q, k, v, prior, mask)[0]
    return (out, _maps(q, k, mask)) if return_maps else out


# ---------------------------------------------------------------------------------------------- Triton
@triton.jit
def _key_valid(M, b, rn, N, HAS_MASK: tl.constexpr):
    valid = rn < N
    if HAS_MASK:
        valid = valid & (tl.load(M + b * N + rn, mask=valid, other=0) != 0)
    return valid


@triton.jit
def _tile(X, bk, rows, N, width, BW: tl.constexpr):
    """Rows ``rows`` of ``X[bk]`` ([N, width], zero-padded to BW columns)."""
    cols = tl.arange(0, BW)
    return tl.load(X + (bk * N + rows[:, None]) * width + cols[None, :],
                   mask=(rows[:, None] < N) & (cols[None, :] < width), other=0.0)


@triton.jit
def _relation_fwd(Q, Kt, V, PRIOR, M, OUT, LSE, N, NB, d, e, scale,
                  HAS_MASK: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
                  BE: tl.constexpr, PREC: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    acc = tl.zeros([BM, BE], tl.float32)
    for kb in range(NB):
        bk = b * NB + kb
        q = _tile(Q, bk, rm, N, d, BD)
        m_i = tl.full([BM], float("-inf"), tl.float32)
        l_i = tl.zeros([BM], tl.float32)
        o = tl.zeros([BM, BE], tl.float32)
        for n0 in range(0, N, BN):
            rn = n0 + tl.arange(0, BN)
            kt = _tile(Kt, bk, rn, N, d, BD)
            vt = _tile(V, bk, rn, N, e, BE)
            s = tl.dot(q, tl.trans(kt), input_precision=PREC) * scale
            s = tl.where(_key_valid(M, b, rn, N, HAS_MASK)[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp(m_i - m_safe)
            p = tl.exp(s - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            o = o * alpha[:, None] + tl.dot(p.to(vt.dtype), vt, input_precision=PREC)
            m_i = m_new
        l_safe = tl.maximum(l_i, TINY_TL)
        acc += tl.load(PRIOR + kb).to(tl.float32) * o / l_safe[:, None]
        lse = tl.log(l_safe) + tl.where(m_i == float("-inf"), 0.0, m_i)
        tl.store(LSE + bk * N + rm, lse, mask=rm < N)
    re = tl.arange(0, BE)
    tl.store(OUT + (b * N + rm[:, None]) * e + re[None, :], acc.to(OUT.dtype.element_ty),
             mask=(rm[:, None] < N) & (re[None, :] < e))


@triton.jit
def _base_program(PRIOR, NB):
    """A backward program's (batch·base) index ``bk`` on grid axis 1, its batch ``b`` and prior ``pk``."""
    bk = tl.program_id(1).to(tl.int64)
    return bk, bk // NB, tl.load(PRIOR + bk % NB).to(tl.float32)


@triton.jit
def _probs(q, kt, lse, valid, scale, PREC: tl.constexpr):
    """Recomputed softmax tile ``exp(q kt^T * scale - lse)`` with invalid entries set to 0."""
    s = tl.dot(q, tl.trans(kt), input_precision=PREC) * scale
    return tl.where(valid, tl.exp(s - lse[:, None]), 0.0)


@triton.jit
def _relation_bwd_dq(Q, Kt, V, PRIOR, M, DOUT, LSE, DQ, ROWDOT, N, NB, d, e, scale,
                     HAS_MASK: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
                     BE: tl.constexpr, PREC: tl.constexpr):
    """Per (query block, b·K): ``rowdot = dout·O_k`` (recomputing ``O_k``), then ``dq``."""
    bk, b, pk = _base_program(PRIOR, NB)
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    q = _tile(Q, bk, rm, N, d, BD)
    lse = tl.load(LSE + bk * N + rm, mask=rm < N, other=0.0)
    dout = _tile(DOUT, b, rm, N, e, BE).to(tl.float32)
    o = tl.zeros([BM, BE], tl.float32)
    for n0 in range(0, N, BN):
        rn = n0 + tl.arange(0, BN)
        vt = _tile(V, bk, rn, N, e, BE)
        p = _probs(q, _tile(Kt, bk, rn, N, d, BD), lse, _key_valid(M, b, rn, N, HAS_MASK)[None, :], scale, PREC)
        o += tl.dot(p.to(vt.dtype), vt, input_precision=PREC)
    rowdot = tl.sum(o * dout, 1)
    tl.store(ROWDOT + bk * N + rm, rowdot, mask=rm < N)
    dok = (pk * dout).to(V.dtype.element_ty)
    dq = tl.zeros([BM, BD], tl.float32)
    for n0 in range(0, N, BN):
        rn = n0 + tl.arange(0, BN)
        kt = _tile(Kt, bk, rn, N, d, BD)
        p = _probs(q, kt, lse, _key_valid(M, b, rn, N, HAS_MASK)[None, :], scale, PREC)
        dp = tl.dot(dok, tl.trans(_tile(V, bk, rn, N, e, BE)), input_precision=PREC)
        ds = p * (dp - pk * rowdot[:, None])
        dq += tl.dot(ds.to(kt.dtype), kt, input_precision=PREC)
    rd = tl.arange(0, BD)
    tl.store(DQ + (bk * N + rm[:, None]) * d + rd[None, :], (dq * scale).to(DQ.dtype.element_ty),
             mask=(rm[:, None] < N) & (rd[None, :] < d))


@triton.jit
def _relation_bwd_dkdv(Q, Kt, V, PRIOR, M, DOUT, LSE, ROWDOT, DK, DV, N, NB, d, e, scale,
                       HAS_MASK: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
                       BE: tl.constexpr, PREC: tl.constexpr):
    """Per (key block, b·K): ``dk``, ``dv``, looping over query blocks."""
    bk, b, pk = _base_program(PRIOR, NB)
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    kt = _tile(Kt, bk, rn, N, d, BD)
    vt = _tile(V, bk, rn, N, e, BE)
    key_ok = _key_valid(M, b, rn, N, HAS_MASK)
    dk = tl.zeros([BN, BD], tl.float32)
    dv = tl.zeros([BN, BE], tl.float32)
    for m0 in range(0, N, BM):
        rm = m0 + tl.arange(0, BM)
        q = _tile(Q, bk, rm, N, d, BD)
        lse = tl.load(LSE + bk * N + rm, mask=rm < N, other=0.0)
        rowdot = tl.load(ROWDOT + bk * N + rm, mask=rm < N, other=0.0)
        dok = (pk * _tile(DOUT, b, rm, N, e, BE).to(tl.float32)).to(vt.dtype)
        p = _probs(q, kt, lse, key_ok[None, :] & (rm[:, None] < N), scale, PREC)
        dv += tl.dot(tl.trans(p.to(vt.dtype)), dok, input_precision=PREC)
        ds = p * (tl.dot(dok, tl.trans(vt), input_precision=PREC) - pk * rowdot[:, None])
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PREC)
    rd = tl.arange(0, BD)
    re = tl.arange(0, BE)
    tl.store(DK + (bk * N + rn[:, None]) * d + rd[None, :], (dk * scale).to(DK.dtype.element_ty),
             mask=(rn[:, None] < N) & (rd[None, :] < d))
    tl.store(DV + (bk * N + rn[:, None]) * e + re[None, :], dv.to(DV.dtype.element_ty),
             mask=(rn[:, None] < N) & (re[None, :] < e))


# Dispatch table: (query block BM, key block BN, warps, pipeline stages) of [_relation_fwd, _relation_bwd_dq,
# _relation_bwd_dkdv], by padded head width (BD/BE up to 32, 64 or 128). Each row is the largest tile (then most
# stages, then most warps) that compiles spill-free and within shared memory on sm_80, sm_89 and sm_90 with the
# specialisation of a real launch (triton 3.8; ``pcmci kernels report --shapes heads``, tests/test_kernels_aot.py).
# fp32 dots (full fp32 on CUDA cores, or TF32) hold whole operand rows per thread: 16x16 tiles throughout.
# 16-bit dots take tiles by N: 16x16 up to N = 16, 32x32 up to 32, 64-row tiles beyond; at width 128 the
# 64x64 dq tiles need two stages on sm_89 (3 stages: 106,496 B > 101,376 B of an RTX 4090), the forward 64x32
# key blocks (64x64 spills on sm_80), and dk/dv 32x32 tiles (64x32 with a mask spills 88 B on sm_90).
MAX_WIDTH = 128
_FP32_BLOCKS = {32: ((16, 16, 4, 3), (16, 16, 8, 2), (16, 16, 8, 3)),
                64: ((16, 16, 8, 2), (16, 16, 8, 2), (16, 16, 8, 3)),
                128: ((16, 16, 4, 3), (16, 16, 8, 1), (16, 16, 8, 3))}
_HALF_BLOCKS = {16: {32: ((16, 16, 8, 3), (16, 16, 8, 2), (16, 16, 8, 3)), 64: ((16, 16, 8, 3),) * 3,
                     128: ((16, 16, 8, 3),) * 3},
                32: {32: ((32, 32, 4, 3), (32, 32, 4, 3), (32, 32, 4, 2)),
                     64: ((32, 32, 4, 3), (32, 32, 4, 2), (32, 32, 4, 3)), 128: ((32, 32, 4, 3),) * 3},
                64: {32: ((64, 64, 8, 2), (64, 32, 8, 3), (64, 64, 8, 3)),
                     64: ((64, 64, 8, 3), (64, 64, 8, 3), (64, 32, 8, 3)),
                     128: ((64, 32, 8, 3), (64, 64, 8, 2), (32, 32, 8, 3))}}


def _mask_dtype(fn: Any, dtype: torch.dtype, width: int) -> torch.dtype:
    """How a kernel reads the key mask: uint8, except the fp32 forward at width 128, which reads int32 (with
    uint8 triton vectorises the mask loads when N is divisible by 16 and the unpacking spills 16-40 B on sm_89
    and sm_90; int32 costs more registers everywhere else and spills there, e.g. the 16-bit 64x64 forward)."""
    return torch.int32 if fn is _relation_fwd and dtype == torch.float32 and width > 64 else torch.uint8


def _blocks(N: int, width: int, dtype: torch.dtype) -> tuple[tuple[int, int, int, int], ...]:
    """(BM, BN, num_warps, num_stages) per kernel for ``N`` tokens and head width ``width = max(d, e)``."""
    if width > MAX_WIDTH:
        raise ValueError(f"relation: Triton tiles cover head widths up to {MAX_WIDTH}, got {width}")
    padded = max(32, triton.next_power_of_2(width))
    if dtype.itemsize > 2:
        return _FP32_BLOCKS[padded]
    return _HALF_BLOCKS[16 if N <= 16 else 32 if N <= 32 else 64][padded]


def launch_configs(B: int, K: int, N: int, d: int, e: int, dtype: torch.dtype, arch: int, masked: bool = False, *,
                   tf32: bool | None = None) -> tuple[Launch, ...]:
    """The launches of one forward and backward: ``(_relation_fwd, _relation_bwd_dq, _relation_bwd_dkdv)``.

    ``arch`` is the compute capability (89 = RTX 4090; the table is the same on sm_80/89/90); fp32 inputs
    multiply in TF32 when ``tf32`` (default: ``torch.backends.cuda.matmul.allow_tf32``), else in full fp32
    (``"ieee"``).
    """
    tf32 = torch.backends.cuda.matmul.allow_tf32 if tf32 is None else tf32
    return _launch_configs(B, K, N, d, e, dtype, masked, tf32)


@functools.lru_cache(maxsize=1024)
def _launch_configs(B: int, K: int, N: int, d: int, e: int, dtype: torch.dtype, masked: bool,
                    tf32: bool) -> tuple[Launch, ...]:
    """``launch_configs`` with ``tf32`` resolved, cached (the launchers ask on every call)."""
    prec = "tf32" if tf32 and dtype == torch.float32 else "ieee"  # ignored by tl.dot for 16-bit inputs
    triton_type(dtype)  # raises for a dtype without kernels
    data, fp32 = TensorArg(dtype), TensorArg(torch.float32)
    args = dict(N=N, NB=K, d=d, e=e, scale=1.0 / math.sqrt(d),
                **dict.fromkeys(("Q", "Kt", "V", "OUT", "DOUT", "DQ", "DK", "DV"), data),
                **dict.fromkeys(("PRIOR", "LSE", "ROWDOT"), fp32))
    launches = []
    for fn, (BM, BN, warps, stages) in zip((_relation_fwd, _relation_bwd_dq, _relation_bwd_dkdv),
                                           _blocks(N, max(d, e), dtype)):
        const = dict(HAS_MASK=masked, BM=BM, BN=BN, BD=max(16, triton.next_power_of_2(d)),
                     BE=max(16, triton.next_power_of_2(e)), PREC=prec)
        mask = TensorArg(_mask_dtype(fn, dtype, max(d, e))) if masked else data
        launches.append(make_launch(fn, {n: {**args, "M": mask}[n] for n in fn.arg_names if n in args or n == "M"},
                                    const, warps, stages))
    return tuple(launches)


def _launches(q: Tensor, v: Tensor, mask: Tensor | None) -> tuple[Launch, ...]:
    B, K, N, d = q.shape
    return launch_configs(B, K, N, d, v.shape[3], q.dtype, device_arch(q), mask is not None)


def _mask_arg(launch: Launch, q: Tensor, mask: Tensor | None) -> Tensor:
    """The ``M`` argument of ``launch``: the mask in the dtype its kernel reads (``q``, unread, without one)."""
    return q if mask is None else aligned(mask.to(launch.args["M"].dtype))[0]


def triton_forward(q: Tensor, k: Tensor, v: Tensor, prior: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Launch the fused forward: ``out[B,N,e]`` (v dtype) and ``lse[B,K,N]`` (fp32)."""
    B, K, N, d = q.shape
    q, k, v, prior = aligned(q, k, v, prior)
    out = v.new_empty((B, N, v.shape[3]))
    lse = q.new_empty((B, K, N), dtype=torch.float32)
    fwd = _launches(q, v, mask)[0]
    wrap_triton(fwd.fn)[(triton.cdiv(N, fwd.constexprs["BM"]), B)](
        q, k, v, prior, _mask_arg(fwd, q, mask), out, lse, N, K, d, v.shape[3], 1.0 / math.sqrt(d), **fwd.constexprs,
        **fwd.options)
    return out, lse


def triton_backward(
    dout: Tensor, q: Tensor, k: Tensor, v: Tensor, prior: Tensor, mask: Tensor | None, lse: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Launch the recomputing backward: gradients w.r.t. (q, k, v, prior)."""
    B, K, N, d = q.shape
    dout, q, k, v, prior, lse = aligned(dout, q, k, v, prior, lse)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    rowdot = torch.empty_like(lse)
    _, bwd_dq, bwd_dkdv = _launches(q, v, mask)
    args = (N, K, d, v.shape[3], 1.0 / math.sqrt(d))
    wrap_triton(bwd_dq.fn)[(triton.cdiv(N, bwd_dq.constexprs["BM"]), B * K)](
        q, k, v, prior, _mask_arg(bwd_dq, q, mask), dout, lse, dq, rowdot, *args, **bwd_dq.constexprs,
        **bwd_dq.options)
    wrap_triton(bwd_dkdv.fn)[(triton.cdiv(N, bwd_dkdv.constexprs["BN"]), B * K)](
        q, k, v, prior, _mask_arg(bwd_dkdv, q, mask), dout, lse, rowdot, dk, dv, *args, **bwd_dkdv.constexprs,
        **bwd_dkdv.options)
    return dq, dk, dv, rowdot.sum((0, 2)).to(prior.dtype)


# ------------------------------------------------------------------------------------ torch.library op
def _triton_fits(q: Tensor, v: Tensor) -> bool:
    """Whether this call runs the Triton kernels: ``use_triton`` and a head width the dispatch table covers."""
    return use_triton(q) and max(q.shape[-1], v.shape[-1]) <= MAX_WIDTH


@triton_op("pcmci::relation", mutates_args=())
def _relation_op(q: Tensor, k: Tensor, v: Tensor, prior: Tensor, mask: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """(out, lse); Triton on CUDA (or forced), the reference math otherwise."""
    if _triton_fits(q, v):
        return triton_forward(q, k, v, prior, mask)
    return reference_forward(q, k, v, prior, mask)


@triton_op("pcmci::relation_backward", mutates_args=())
def _relation_backward_op(
    dout: Tensor, q: Tensor, k: Tensor, v: Tensor, prior: Tensor, mask: Optional[Tensor], lse: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients w.r.t. (q, k, v, prior) of ``pcmci::relation``'s output."""
    if _triton_fits(q, v):
        return triton_backward(dout, q, k, v, prior, mask, lse)
    return _torch_backward(dout, q, k, v, prior, mask, lse)


def _setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
    q, k, v, prior, mask = inputs
    ctx.save_for_backward(q, k, v, prior, mask, output[1])


def _backward(ctx: Any, dout: Tensor, _dlse: Tensor) -> tuple:
    q, k, v, prior, mask, lse = ctx.saved_tensors
    return (*torch.ops.pcmci.relation_backward(dout, q, k, v, prior, mask, lse), None)


_relation_op.register_autograd(_backward, setup_context=_setup_context)


def _macs(q_shape: Any, v_shape: Any) -> int:
    B, K, N, d = q_shape
    e = v_shape[3]
    return B * K * N * (N * (d + e) + e)


@register_flop_formula(torch.ops.pcmci.relation)
def _flops(q_shape: Any, k_shape: Any, v_shape: Any, *args: Any, **kwargs: Any) -> int:
    return 2 * _macs(q_shape, v_shape)


@register_flop_formula(torch.ops.pcmci.relation_backward)
def _flops_backward(dout_shape: Any, q_shape: Any, k_shape: Any, v_shape: Any, *args: Any, **kwargs: Any) -> int:
    return 4 * _macs(q_shape, v_shape)


def fvcore_handle(inputs: list, outputs: list) -> int:
    """fvcore handle for ``pcmci::relation`` (one multiply-add = one FLOP)."""
    return _macs(jit_shape(inputs[0]), jit_shape(inputs[2]))


def relation_maps(q: Tensor, k: Tensor, mask: Tensor | None = None) -> Tensor:
    """The relation bases alone, ``G[B,K,N,N] = softmax(q k^T / sqrt(d))`` (masked keys get 0)."""
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(f"relation_maps: q and k must both be [B,K,N,d], got {tuple(q.shape)} and {tuple(k.shape)}")
    return _maps(q, k, mask)


def relation_product(
    q: Tensor, k: Tensor, v: Tensor, prior: Tensor, mask: Tensor | None = None, return_maps: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """K-base relation product ``out[B,N,e]`` (see module docstring); differentiable in q, k, v, prior.

    ``return_maps=True`` also returns the maps ``G[B,K,N,N]`` (computed separately, for inspection).
    """
    _check_inputs(q, k, v, prior, mask)
    out = torch.ops.pcmci.relation(q, k, v, prior, mask)[0]
    return (out, _maps(q, k, mask)) if return_maps else out
