"""What an eager ``log_sinkhorn`` call costs around its one Triton kernel, measured without a GPU.

On an H200 the fused forward at B=8, 10x8 / 48x16 (50 iterations) took 0.39 ms, about 50 bare kernel launches
(bench/results/h200-2026-11-26.md). This script runs the op's eager path on CPU with ``PCMCI_KERNELS=triton`` and
the Triton launch replaced by a recorder, and reports per call:

- the aten ops the host issues (each one is a kernel launch or an allocation on CUDA) and the host syncs
  (``aten::_local_scalar_dense``: the NaN/inf check's ``bool()``), counted with a ``TorchDispatchMode``;
- the host time of the whole call and of its parts (input checks, NaN/inf check, marginals, launch table,
  allocations), medians of ``--repeats`` timed calls after warm-up.

    python bench/sinkhorn_overhead.py [--repeats 200] [--out bench/results/cpu-DATE-sinkhorn-overhead.md]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pcmci.kernels import sinkhorn as sk

SHAPES = [(8, 10, 8), (8, 48, 16), (8, 58, 8)]  # the H200's small cases and the paper's Breakfast ICH
EPS, ITERS = 0.1, 50


class _Ops(TorchDispatchMode):
    """Counts the aten ops dispatched inside the mode."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        self.ops[str(func.overloadpacket.__name__)] += 1
        return func(*args, **(kwargs or {}))


def _stub_launch() -> list[Any]:
    """Replace the op's Triton launch by a recorder (the kernel does not run; outputs stay uninitialised)."""
    launched: list[Any] = []

    class Recorder:
        def __init__(self, fn: Any) -> None:
            self.fn = fn

        def __getitem__(self, grid: Any) -> Callable[..., None]:
            return lambda *args, **kwargs: launched.append(self.fn)

    sk.wrap_triton = Recorder
    return launched


def _median_us(fn: Callable[[], Any], repeats: int) -> float:
    for _ in range(10):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e6 * statistics.median(times)


def _general_marginals(cost: torch.Tensor, a: Any, b: Any, mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The marginals as computed before the uniform shortcut: from an all-valid mask (six ops each)."""
    B, R, S = cost.shape
    dt, dev = sk.acc_dtype(cost), cost.device
    return (sk._log_marginal(None, torch.ones(B, R, dtype=torch.bool, device=dev), dt),
            sk._log_marginal(None, torch.ones(B, S, dtype=torch.bool, device=dev), dt))


class _Before:
    """The op as it was before issue 16's overhead changes: uncached launch table, six-op uniform marginals."""

    def __enter__(self) -> None:
        self.saved = sk.launch_configs, sk._log_marginals
        sk.launch_configs, sk._log_marginals = sk.launch_configs.__wrapped__, _general_marginals

    def __exit__(self, *exc: Any) -> None:
        sk.launch_configs, sk._log_marginals = self.saved


def _before(fn: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        with _Before():
            return fn()
    return run


def measure(B: int, R: int, S: int, repeats: int) -> dict[str, Any]:
    cost = torch.rand(B, R, S)
    la, lb = sk._log_marginals(cost, None, None, None)
    with _Ops() as counter:
        sk.log_sinkhorn(cost, EPS, ITERS)
    with _Before(), _Ops() as before:
        sk.log_sinkhorn(cost, EPS, ITERS)
    torch.testing.assert_close(_general_marginals(cost, None, None, None), (la, lb), rtol=0, atol=0)
    parts = {
        "whole call, before (uncached table, six-op marginals)": _before(lambda: sk.log_sinkhorn(cost, EPS, ITERS)),
        "whole call (log_sinkhorn)": lambda: sk.log_sinkhorn(cost, EPS, ITERS),
        "input checks": lambda: sk._check_inputs(cost, EPS, ITERS, None),
        "NaN/inf check (host sync on CUDA)": lambda: sk._check_finite(cost, None),
        "uniform marginals, before (from an all-valid mask)": lambda: _general_marginals(cost, None, None, None),
        "uniform marginals": lambda: sk._log_marginals(cost, None, None, None),
        "launch table, before (uncached)": lambda: sk.launch_configs.__wrapped__(B, R, S, cost.dtype, 80,
                                                                                 iters=ITERS, eps=EPS),
        "launch table (launch_configs, cached)": lambda: sk.launch_configs(B, R, S, cost.dtype, 80, iters=ITERS,
                                                                           eps=EPS),
        "launcher (allocations, casts, launch)": lambda: sk.triton_forward(cost, la, lb, EPS, ITERS),
    }
    return {"shape": (B, R, S), "ops": dict(counter.ops), "aten_ops": sum(counter.ops.values()),
            "aten_ops_before": sum(before.ops.values()),
            "syncs": counter.ops.get("_local_scalar_dense", 0),
            "us": {name: _median_us(fn, repeats) for name, fn in parts.items()}}


def markdown(rows: list[dict[str, Any]], repeats: int) -> str:
    names = list(rows[0]["us"])
    out = ["# Host cost of an eager `log_sinkhorn` call around its Triton kernel", "",
           f"`python bench/sinkhorn_overhead.py --repeats {repeats}` on {platform.machine()} CPU "
           f"({os.cpu_count()} cores, {torch.get_num_threads()} threads), torch {torch.__version__}; "
           "PCMCI_KERNELS=triton with the kernel launch stubbed out; 50 iterations, no mask, uniform marginals. "
           "Median µs per call.", "",
           "| part | " + " | ".join("B={}, {}x{}".format(*r["shape"]) for r in rows) + " |",
           "|---|" + "---|" * len(rows)]
    out += [f"| {n} | " + " | ".join(f"{r['us'][n]:.1f}" for r in rows) + " |" for n in names]
    out += [f"| aten ops issued (each a launch or allocation on CUDA), before | "
            + " | ".join(str(r["aten_ops_before"]) for r in rows) + " |",
            f"| aten ops issued (each a launch or allocation on CUDA) | "
            + " | ".join(str(r["aten_ops"]) for r in rows) + " |",
            "| host syncs (`_local_scalar_dense`) | " + " | ".join(str(r["syncs"]) for r in rows) + " |", "",
            "aten ops of one call: " + ", ".join(f"{op} x{n}" for op, n in sorted(rows[0]["ops"].items())), ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--out", help="also write the Markdown table to this file")
    args = parser.parse_args(argv)
    os.environ["PCMCI_KERNELS"] = "triton"
    launched = _stub_launch()
    rows = [measure(*shape, args.repeats) for shape in SHAPES]
    assert launched and all(fn is sk._fwd_onchip for fn in launched)
    text = markdown(rows, args.repeats)
    sys.stdout.write(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
