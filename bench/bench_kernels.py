"""Kernel microbenchmarks (pytest-benchmark) at the DESIGN §4 shapes.

Implementations per group: ``fused`` (the registered op: Triton on CUDA; on CPU it dispatches to the
reference ops with the replay backward), ``reference`` (eager pure-PyTorch spec, autograd backward),
``compiled`` (``torch.compile`` of the reference, dynamic shapes: one compile per pass), ``pot`` (POT's
log-domain solver looped over the batch with its torch backend, same device and dtype as the others: the fair
row) and ``pot_numpy64`` (its numpy backend in float64, CPU only); POT rows are Sinkhorn forward only.
Passes: ``fwd`` and ``fwdbwd``.
On CUDA ``extra_info`` holds peak memory and, for the fused kernels, % of the bandwidth/exp roofline.

    python -m pytest bench/bench_kernels.py --benchmark-json=bench/results/cpu-DATE-kernels.json

Without CUDA only the CPU cases run (the batched reference vs POT bar, plus small compile/relation cases).
"""
from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import pytest
import torch

from pcmci.kernels import log_sinkhorn, log_sinkhorn_reference, relation_product, relation_reference
from pcmci.kernels import sinkhorn as sk
from pcmci.kernels._common import device_arch
from pcmci.kernels.roofline import PEAKS, Work, relation_work, sinkhorn_work


CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
ITERS, EPS = 50, 0.1
FULL = CUDA or os.environ.get("PCMCI_BENCH_FULL") == "1"  # the DESIGN §4 grid; CPU default: the bar's cases
# PCMCI_BENCH_SHAPES=paper: the paper presets' stage shapes instead (batch 8, Breakfast/COIN/Charades label texts
# against 8 frames; relation over those texts and over the 8 video tokens), plus the streamed B=8 200x2048 case
PAPER_SHAPES = os.environ.get("PCMCI_BENCH_SHAPES") == "paper"
SINKHORN_CASES = (
    [(8, L, 8) for L in (58, 958, 157)] + [(8, 200, 2048)] if PAPER_SHAPES
    else [(B, R, S) for B in (8, 64, 256) for R, S in ((10, 8), (48, 16), (200, 64), (200, 2048))]
    if FULL else [(64, 48, 16)]
)
RELATION_CASES = ([(8, N) for N in (58, 958, 157, 8)] if PAPER_SHAPES
                  else [(B, N) for B in (8, 64) for N in (16, 64, 256, 1568)] if FULL else [(8, 64)])
K_BASES, HEAD_DIM = 8, 64

_compiled: dict[str, Callable] = {}


def _compile(name: str, fn: Callable) -> Callable:
    if name not in _compiled:
        _compiled[name] = torch.compile(fn, dynamic=True)
    return _compiled[name]


def _sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def _run(benchmark, fn: Callable[[], object], rounds: int = 5 if CUDA else 10) -> None:
    """Warm up (compiles, autotune), then time ``fn`` with device sync; records peak memory on CUDA."""
    try:
        fn()
        _sync()
        if CUDA:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fn()
            _sync()
            benchmark.extra_info["peak_mem_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        pytest.skip("out of memory")

    def timed() -> None:
        fn()
        _sync()

    benchmark.pedantic(timed, rounds=rounds, warmup_rounds=1, iterations=1)


def _roofline(benchmark, work: Work) -> None:
    """Record the fused kernel's % of its roofline lower bound at the device's published peaks (CUDA only)."""
    name = torch.cuda.get_device_name() if CUDA else ""
    peaks = next((v for k, v in PEAKS.items() if k in name), None)
    if peaks and benchmark.stats:
        benchmark.extra_info["roofline_pct"] = 100 * work.bound_s(peaks) / benchmark.stats.stats.min


def _sinkhorn_work(B: int, R: int, S: int, backward: bool, dtype: torch.dtype) -> Work:
    launches = sk.launch_configs(B, R, S, dtype, device_arch(torch.empty(0, device=DEVICE)), iters=ITERS)
    fwd, bwd = sinkhorn_work(B, R, S, ITERS, dtype.itemsize, launches[0].fn is sk._fwd_onchip,
                             launches[1].fn is sk._bwd_onchip)
    return fwd + bwd if backward else fwd


def _pot_loop(cost: torch.Tensor, numpy64: bool) -> Callable[[], object]:
    """POT's log-domain solver looped over the batch: its torch backend on the cost's device and dtype (the fair
    row), or its numpy backend in float64 (``pot_numpy64``, CPU only)."""
    ot = pytest.importorskip("ot")
    B, R, S = cost.shape
    if numpy64:
        a, b, c = np.full(R, 1 / R), np.full(S, 1 / S), cost.double().cpu().numpy()
    else:
        a = torch.full((R,), 1 / R, dtype=cost.dtype, device=DEVICE)
        b, c = torch.full((S,), 1 / S, dtype=cost.dtype, device=DEVICE), cost
    return lambda: [ot.sinkhorn(a, b, c[i], EPS, method="sinkhorn_log", numItermax=ITERS, stopThr=0.0)
                    for i in range(B)]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("impl", ["fused", "reference", "compiled", "pot", "pot_numpy64"])
@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwdbwd"])
@pytest.mark.parametrize("B,R,S", SINKHORN_CASES, ids=[f"B{b}-{r}x{s}" for b, r, s in SINKHORN_CASES])
def test_sinkhorn(benchmark, B: int, R: int, S: int, backward: bool, impl: str) -> None:
    benchmark.group = f"sinkhorn-{'fwdbwd' if backward else 'fwd'}-B{B}-{R}x{S}"
    if impl.startswith("pot") and backward:
        pytest.skip("POT: forward only")
    if impl == "pot_numpy64" and CUDA:
        pytest.skip("POT's numpy backend runs on the CPU")
    if impl == "compiled" and not CUDA and backward:
        pytest.skip("CPU: compiling 50 unrolled iterations with backward takes minutes")
    cost = torch.rand(B, R, S, device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(0))
    if impl.startswith("pot"):
        _run(benchmark, _pot_loop(cost, impl == "pot_numpy64"), rounds=2 if B * R * S > 1e6 else 3)
        return
    fn = {"fused": log_sinkhorn, "reference": log_sinkhorn_reference,
          "compiled": _compile(f"sinkhorn-{backward}", log_sinkhorn_reference)}[impl]
    cost.requires_grad_(backward)

    def step() -> None:
        plan = fn(cost, EPS, ITERS)
        if backward:
            plan.backward(torch.ones_like(plan))

    _run(benchmark, step)
    if impl == "fused":
        _roofline(benchmark, _sinkhorn_work(B, R, S, backward, cost.dtype))


@pytest.mark.parametrize("impl", ["fused", "reference", "compiled"])
@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwdbwd"])
@pytest.mark.parametrize("B,N", RELATION_CASES, ids=[f"B{b}-N{n}" for b, n in RELATION_CASES])
def test_relation(benchmark, B: int, N: int, backward: bool, impl: str) -> None:
    benchmark.group = f"relation-{'fwdbwd' if backward else 'fwd'}-B{B}-N{N}"
    dtype = torch.bfloat16 if CUDA else torch.float32
    g = torch.Generator(DEVICE).manual_seed(0)
    q, k, v = (torch.randn(B, K_BASES, N, HEAD_DIM, device=DEVICE, generator=g, dtype=dtype).requires_grad_(backward)
               for _ in range(3))
    prior = torch.full((K_BASES,), 1 / K_BASES, device=DEVICE, requires_grad=backward)
    fn = {"fused": relation_product, "reference": relation_reference,
          "compiled": _compile(f"relation-{backward}", relation_reference)}[impl]

    def step() -> None:
        out = fn(q, k, v, prior)
        if backward:
            out.backward(torch.ones_like(out))

    _run(benchmark, step)
    if impl == "fused":
        fwd, bwd = relation_work(B, K_BASES, N, HEAD_DIM, HEAD_DIM, dtype, "bf16" if CUDA else "fp32")
        _roofline(benchmark, fwd + bwd if backward else fwd)
