"""Ahead-of-time compile of a ``Launch`` for an NVIDIA arch without a GPU, and what the hardware makes of it.

``bind(launch, arch) -> Bound``: the specialisation a launch with ``launch.args`` compiles, computed by triton's
own launcher code (the binder ``JITFunction.run`` builds with ``create_function_from_signature`` and its
``_pack_args``): integers equal to 1 become constants, integers and pointers divisible by 16 get
``tt.divisibility = 16``, floats are not specialised, options are the backend's ``parse_options``.
``compile_stats(launch, arch) -> KernelStats``: ``triton.compile`` of exactly that ``ASTSource`` and those
options for ``GPUTarget("cuda", arch, 32)``; the ``ptxas -v`` log of triton's bundled ptxas gives registers,
spill bytes and stack, ``metadata.shared`` the shared memory.
``occupancy(stats, arch)`` turns those into resident blocks and warps per SM from the arch's limits.
Nothing is cached outside a temporary directory.
"""
from __future__ import annotations

import io
import re
import tempfile
from contextlib import redirect_stdout
from dataclasses import asdict, dataclass
from typing import Any

import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import JITFunction, create_function_from_signature

from ._common import Launch


@dataclass(frozen=True)
class ArchLimits:
    """Per-SM resources of one compute capability (CUDA programming guide, table of technical specifications).
    ``smem_per_block`` is the opt-in maximum one block may use; each resident block also reserves 1 KB."""

    gpu: str
    regs_per_sm: int
    max_warps_per_sm: int
    max_blocks_per_sm: int
    smem_per_sm: int
    smem_per_block: int
    max_regs_per_thread: int = 255
    reg_unit: int = 256  # registers are allocated per warp in units of 256
    reserved_smem_per_block: int = 1024


ARCH_LIMITS = {
    80: ArchLimits("A100", 65536, 64, 32, 164 * 1024, 163 * 1024),
    89: ArchLimits("RTX 4090", 65536, 48, 24, 100 * 1024, 99 * 1024),
    90: ArchLimits("H100", 65536, 64, 32, 228 * 1024, 227 * 1024),
}

_PTXAS_LINE = re.compile(r"Used (\d+) registers")
_SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


@dataclass(frozen=True)
class KernelStats:
    """What ptxas and triton report for one compiled launch (per thread: registers, stack; per block: shared)."""

    kernel: str
    arch: int
    num_warps: int
    registers: int
    spill_stores: int
    spill_loads: int
    stack: int
    shared: int

    @property
    def spills(self) -> int:
        return self.spill_stores + self.spill_loads

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "spills": self.spills}


def _limits(arch: int) -> ArchLimits:
    if arch not in ARCH_LIMITS:
        raise ValueError(f"no limits for sm_{arch}; known: {', '.join(f'sm_{a}' for a in ARCH_LIMITS)}")
    return ARCH_LIMITS[arch]


def _parse_ptxas(log: str) -> tuple[int, int, int, int]:
    """(registers, stack bytes, spill stores, spill loads) from a ``ptxas -v`` log."""
    regs, spills = _PTXAS_LINE.search(log), _SPILLS.search(log)
    if regs is None or spills is None:
        raise RuntimeError(f"unexpected ptxas -v output:\n{log}")
    stack, stores, loads = (int(x) for x in spills.groups())
    return int(regs.group(1)), stack, stores, loads


@dataclass(frozen=True)
class Bound:
    """What triton's launcher hands ``triton.compile`` for one launch: the ``ASTSource`` signature (argument
    name -> type, ``"constexpr"`` for constants), the constants by argument path, the attributes by argument path
    (``[["tt.divisibility", 16]]`` or ``[]``) and the backend options."""

    signature: dict[str, str]
    constexprs: dict[tuple[int, ...], Any]
    attrs: dict[tuple[int, ...], list]
    options: dict[str, Any]

    def key(self) -> str:
        """A hashable summary: two launches with equal keys compile the same kernel."""
        return repr((self.signature, sorted(self.constexprs.items()), sorted(self.attrs.items()),
                     sorted(self.options.items())))

    def divisible(self) -> list[str]:
        """Names of the arguments marked divisible by 16, in argument order."""
        names = list(self.signature)
        return [names[path[0]] for path, attr in sorted(self.attrs.items()) if ["tt.divisibility", 16] in attr]


_JIT: dict[Any, JITFunction] = {}


def jit_function(fn: Any) -> JITFunction:
    """``fn`` as a ``JITFunction``; under ``TRITON_INTERPRET=1`` kernels are ``InterpretedFunction`` objects,
    whose Python function is wrapped once (only for binding: it is never compiled in this process)."""
    if isinstance(fn, JITFunction):
        return fn
    if fn not in _JIT:
        _JIT[fn] = JITFunction(fn.fn)
    return _JIT[fn]


def bind_values(fn: Any, arch: int, args: tuple, kwargs: dict[str, Any]) -> Bound:
    """Triton's specialisation of ``fn[grid](*args, **kwargs)`` launched on ``sm_{arch}``: its binder (what
    ``JITFunction.run`` calls on every launch) and ``_pack_args`` (what it calls before compiling), with the
    ``debug`` and ``instrumentation_mode`` options ``run`` adds. Tensors (real ones, or ``TensorArg``) are
    read through ``dtype`` and ``data_ptr()`` only."""
    jit = jit_function(fn)
    backend = make_backend(GPUTarget("cuda", arch, 32))
    kwargs = {**kwargs, "debug": knobs.runtime.debug, "instrumentation_mode": knobs.compilation.instrumentation_mode}
    binder = create_function_from_signature(jit.signature, jit.params, backend)
    bound_args, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = jit._pack_args(backend, kwargs, bound_args, specialization, options)
    return Bound(signature, constexprs, attrs, dict(options.__dict__))


def bind(launch: Launch, arch: int) -> Bound:
    """The specialisation ``launch`` compiles on ``sm_{arch}`` (see ``bind_values``)."""
    return bind_values(launch.fn, arch, (), {**launch.args, **launch.constexprs, **launch.options})


def compile_launch(launch: Launch, arch: int) -> tuple[Any, str]:
    """``triton.compile`` of ``launch`` for ``sm_{arch}`` ahead of time, with the specialisation and options of a
    real launch (``bind``): the compiled kernel (``asm`` holds ttgir, ptx, cubin) and the ``ptxas -v`` log of
    the compile that produced its cubin."""
    _limits(arch)
    bound = bind(launch, arch)
    source = ASTSource(jit_function(launch.fn), bound.signature, bound.constexprs, bound.attrs)
    log = io.StringIO()
    with tempfile.TemporaryDirectory() as tmp, knobs.cache.scope(), knobs.nvidia.scope(), redirect_stdout(log):
        knobs.cache.dir = tmp
        knobs.nvidia.dump_ptxas_log = True
        kernel = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=bound.options)
    return kernel, log.getvalue()


def compile_stats(launch: Launch, arch: int) -> KernelStats:
    """``compile_launch``'s registers, spills and stack from the ``ptxas -v`` log, shared memory from the
    kernel's metadata."""
    kernel, log = compile_launch(launch, arch)
    regs, stack, stores, loads = _parse_ptxas(log)
    return KernelStats(launch.fn.__name__, arch, launch.num_warps, regs, stores, loads, stack, kernel.metadata.shared)


def occupancy(stats: KernelStats, arch: int) -> dict[str, Any]:
    """Resident blocks and warps per SM, the limiting resource, and whether the launch fits at all."""
    lim = _limits(arch)
    warps = stats.num_warps
    regs_per_warp = -(-max(stats.registers, 1) * 32 // lim.reg_unit) * lim.reg_unit
    by = {
        "registers": (lim.regs_per_sm // regs_per_warp) // warps,
        "shared": lim.smem_per_sm // (stats.shared + lim.reserved_smem_per_block),
        "warps": lim.max_warps_per_sm // warps,
        "blocks": lim.max_blocks_per_sm,
    }
    fits = stats.shared <= lim.smem_per_block and stats.registers <= lim.max_regs_per_thread and by["registers"] > 0
    blocks = min(by.values()) if fits else 0
    return {"fits": fits, "blocks_per_sm": blocks, "warps_per_sm": blocks * warps,
            "occupancy": blocks * warps / lim.max_warps_per_sm, "limited_by": min(by, key=by.__getitem__)}


def check(stats: KernelStats) -> list[str]:
    """The reasons a compiled launch is not acceptable: spills, or more shared memory than the arch allows."""
    lim = _limits(stats.arch)
    problems = []
    if stats.spills:
        problems.append(f"spills {stats.spill_stores} B stores / {stats.spill_loads} B loads")
    if stats.shared > lim.smem_per_block:
        problems.append(f"shared memory {stats.shared} B > {lim.smem_per_block} B ({lim.gpu})")
    return problems
