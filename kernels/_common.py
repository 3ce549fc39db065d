"""Helpers shared by the ops: backend dispatch, a NaN-free log-sum-exp, fvcore shape access."""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor

TINY = torch.finfo(torch.float32).tiny  # log(TINY) stands in for log(0) so empty slices stay finite

_MODES = ("auto", "reference", "triton")


def use_triton(x: Tensor) -> bool:
    """Triton on CUDA, reference elsewhere; ``PCMCI_KERNELS=reference|triton`` forces one (``auto`` = default)."""
    mode = os.environ.get("PCMCI_KERNELS", "auto")
    if mode not in _MODES:
        raise ValueError(f"PCMCI_KERNELS must be one of {_MODES}, got {mode!r}")
    return mode == "triton" or (mode == "auto" and x.is_cuda)


def acc_dtype(x: Tensor) -> torch.dtype:
    """Accumulation dtype of the reference path: fp32, or fp64 for fp64 inputs (gradcheck)."""
    return torch.promote_types(x.dtype, torch.float32)


def safe_lse(x: Tensor, dim: int) -> Tensor:
    """``logsumexp`` that gives ``log(TINY)`` (not -inf/NaN) on all -inf slices, with finite gradients."""
    m = x.amax(dim, keepdim=True).detach()
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    return (x - m).exp().sum(dim).clamp_min(TINY).log() + m.squeeze(dim)


def jit_shape(value: Any) -> list[int]:
    """Shape of a TorchScript graph value, as fvcore handles receive them."""
    return list(value.type().sizes())
