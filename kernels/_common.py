"""Helpers shared by the ops: backend dispatch, launch configs, a NaN-free log-sum-exp, fvcore shape access."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import triton.language as tl
from torch import Tensor

TINY = torch.finfo(torch.float32).tiny  # log(TINY) stands in for log(0) so empty slices stay finite
TINY_TL = tl.constexpr(TINY)  # the same constant for kernels, which may read only constexpr globals

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


@dataclass(frozen=True)
class TensorArg:
    """A tensor argument as a launch's specialisation sees it: its dtype and a data pointer. The launchers pass
    fresh or ``.contiguous()`` torch allocations, which start 16-byte aligned (the CUDA caching allocator
    hands out 512-byte aligned blocks), hence the default aligned pointer; ``data_ptr`` is what triton's
    specialisation reads (``ptr % 16``). Not a tuple: triton specialises tuples element-wise."""

    dtype: torch.dtype
    ptr: int = 0

    def data_ptr(self) -> int:
        return self.ptr


class Launch(NamedTuple):
    """One kernel launch as a launcher makes it: ``fn[grid](**args, **constexprs, num_warps=, num_stages=)``.

    ``args`` holds every runtime argument by name: integers and floats by value, tensors as ``TensorArg``.
    Triton specialises a launch on those values (integers equal to 1 become constants, integers and pointers
    divisible by 16 get ``tt.divisibility``); ``aot.bind`` runs triton's own binder on them, so the AOT report
    compiles exactly the specialisation a launch with these values compiles."""

    fn: Any
    args: dict[str, Any]
    constexprs: dict[str, Any]
    num_warps: int
    num_stages: int = 3  # triton's default on NVIDIA GPUs

    @property
    def options(self) -> dict[str, int]:
        """The launch options, as keyword arguments of the launch."""
        return {"num_warps": self.num_warps, "num_stages": self.num_stages}


def triton_type(dtype: torch.dtype) -> str:
    """Triton's name of a torch dtype (``torch.bfloat16 -> "bf16"``)."""
    if dtype not in _TRITON_TYPES:
        raise ValueError(f"no Triton kernel for dtype {dtype}")
    return _TRITON_TYPES[dtype]


def aligned(*xs: Tensor) -> list[Tensor]:
    """Each tensor contiguous and starting 16-byte aligned, as ``TensorArg`` assumes: a view whose storage offset
    is not a multiple of 16 bytes (``torch.randn(2, ...)`` split in two, a slice) is copied, so every launch
    compiles the specialisation the AOT report checked (triton marks a pointer divisible by 16 or not)."""
    out = []
    for x in xs:
        x = x.contiguous()
        out.append(x if x.storage_offset() * x.element_size() % 16 == 0 else x.clone())
    return out


def make_launch(fn: Any, args: dict[str, Any], constexprs: dict[str, Any], num_warps: int,
                num_stages: int = 3) -> Launch:
    """A ``Launch`` of ``fn`` whose ``args`` and ``constexprs`` name each of its parameters exactly once,
    in ``fn``'s order."""
    names = list(fn.arg_names)
    missing = set(names) - set(args) - set(constexprs)
    extra = (set(args) | set(constexprs)) - set(names)
    if missing or extra or set(args) & set(constexprs):
        raise ValueError(f"{fn.__name__}: arguments missing {sorted(missing)}, unknown {sorted(extra)}")
    return Launch(fn, {n: args[n] for n in names if n in args}, constexprs, num_warps, num_stages)


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
