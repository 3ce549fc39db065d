"""Work of the fused kernels (HBM bytes, exps, matmul FLOPs) and a roofline lower bound on their time.

``bound = max(bytes / bandwidth, exps / exp rate, flops / matmul peak)`` from published peaks: the time no
implementation of that launch sequence can beat on the device. Exp rate = SMs x 16 MUFU ops/clock x boost clock.
FLOPs here are torch's convention (one multiply-add = 2).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Peaks:
    """Published dense peaks of one GPU: bytes/s, exp/s, matmul FLOP/s per input precision."""

    bandwidth: float
    exps: float
    matmul: dict[str, float]  # "bf16"/"fp16" tensor cores (fp32 accumulate), "tf32", "fp32" (CUDA cores)


PEAKS = {
    "RTX 4090": Peaks(1008e9, 128 * 16 * 2.52e9,
                      {"bf16": 165.2e12, "fp16": 165.2e12, "tf32": 82.6e12, "fp32": 82.6e12}),
    "A100": Peaks(2.039e12, 108 * 16 * 1.41e9, {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12}),
    "H100": Peaks(3.35e12, 132 * 16 * 1.98e9, {"bf16": 989e12, "fp16": 989e12, "tf32": 494e12, "fp32": 67e12}),
    "H200": Peaks(4.8e12, 132 * 16 * 1.98e9, {"bf16": 989e12, "fp16": 989e12, "tf32": 494e12, "fp32": 67e12}),
}


@dataclass(frozen=True)
class Work:
    """What one pass must move and compute at least; ``precision`` picks the matmul peak."""

    bytes: float
    exps: float
    flops: float = 0.0
    precision: str = "fp32"

    def __add__(self, other: Work) -> Work:
        return Work(self.bytes + other.bytes, self.exps + other.exps, self.flops + other.flops, self.precision)

    def bound_s(self, peaks: Peaks) -> float:
        """Roofline lower bound in seconds."""
        return max(self.bytes / peaks.bandwidth, self.exps / peaks.exps, self.flops / peaks.matmul[self.precision])


def sinkhorn_work(B: int, R: int, S: int, iters: int, itemsize: int, fwd_onchip: bool,
                  bwd_onchip: bool) -> tuple[Work, Work]:
    """(forward, backward) of the fused Sinkhorn: on chip the cost is read once per launch, streamed once per
    half-iteration; ~one exp per entry per half-iteration forward, the backward replays ~2 (streamed: ~4)."""
    size, T, n = B * R * S * itemsize, iters, B * R * S
    fwd = Work(size * (2 if fwd_onchip else 2 * T + 2), n * (2 * T + 1))
    bwd = Work(size * (3 if bwd_onchip else 2 * T + 7), n * (2 * T + 1 if bwd_onchip else 4 * T + 3))
    return fwd, bwd


def relation_work(B: int, K: int, N: int, d: int, e: int, dtype: torch.dtype, precision: str) -> tuple[Work, Work]:
    """(forward, backward) of the fused relation op: q, k, v read once per pass (out, dout, lse, gradients
    once); maps recomputed in the backward (3 more exps per entry, 5d+4e more multiply-adds per map entry)."""
    item = dtype.itemsize
    qkv = B * K * N * (2 * d + e) * item
    maps = B * K * N * N
    fwd = Work(qkv + B * N * e * item + 4 * B * K * N, maps, 2 * maps * (d + e), precision)
    bwd = Work(2 * qkv + B * N * e * item + 8 * B * K * N, 3 * maps, 2 * maps * (5 * d + 4 * e), precision)
    return fwd, bwd
