"""Helpers shared by the ops: backend dispatch, launch configs, a NaN-free log-sum-exp, fvcore shape access."""
from __future__ import annotations

import os
from typing import Any, NamedTuple

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


ARCHS = (80, 89, 90)  # the compute capabilities every dispatch table covers (A100, RTX 4090 / L40, H100)
DEFAULT_ARCH = 80  # the table the Triton interpreter (no GPU) runs
_TRITON_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
                 torch.uint8: "u8"}


class Launch(NamedTuple):
    """One kernel launch as ``triton.compile(ASTSource(fn, signature, constexprs), options={"num_warps": ...})``
    takes it: the launcher passes ``constexprs`` and ``num_warps``, the AOT report compiles exactly this."""

    fn: Any
    signature: dict[str, str]
    constexprs: dict[str, Any]
    num_warps: int


def triton_type(dtype: torch.dtype) -> str:
    """Triton's name of a torch dtype (``torch.bfloat16 -> "bf16"``)."""
    if dtype not in _TRITON_TYPES:
        raise ValueError(f"no Triton kernel for dtype {dtype}")
    return _TRITON_TYPES[dtype]


def signature(fn: Any, types: dict[str, str], constexprs: dict[str, Any]) -> dict[str, str]:
    """The full ``ASTSource`` signature of ``fn``: ``types`` for runtime arguments, ``"constexpr"`` for the rest."""
    missing = set(fn.arg_names) - set(types) - set(constexprs)
    if missing:
        raise ValueError(f"{fn.__name__}: no type or constexpr for {sorted(missing)}")
    return {name: "constexpr" if name in constexprs else types[name] for name in fn.arg_names}


def device_arch(x: Tensor) -> int:
    """Compute capability of ``x``'s GPU as an int (``(8, 9) -> 89``); ``DEFAULT_ARCH`` off CUDA (interpreter)."""
    if not x.is_cuda:
        return DEFAULT_ARCH
    major, minor = torch.cuda.get_device_capability(x.device)
    return 10 * major + minor


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
