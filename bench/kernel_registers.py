"""On a GPU: the registers, spills and shared memory of the kernels Triton really compiled, next to the AOT
prediction of ``pcmci kernels report`` for the same launch (``bench/gpu_suite.sh report``).

    python bench/kernel_registers.py PREDICTION.json [--shapes paper] > registers.md

Runs a forward and backward of every op case at every dtype of the prediction through the registered ops
(the launchers' own compile), then reads each kernel's JIT cache. Exit 1 when a real compile spills.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from pcmci.kernels import log_sinkhorn, relation_product
from pcmci.kernels.report import DTYPES, PAPER_ITERS, cases


def _run(case: Any, dtype: torch.dtype) -> None:
    g = torch.Generator("cuda").manual_seed(0)
    if case.op == "sinkhorn":
        cost = torch.rand(*case.shape, device="cuda", generator=g).to(dtype).requires_grad_()
        log_sinkhorn(cost, 0.1, PAPER_ITERS).float().sum().backward()
        return
    B, K, N, d, e = case.shape
    q, k = (torch.randn(B, K, N, d, device="cuda", generator=g).to(dtype).requires_grad_() for _ in range(2))
    v = torch.randn(B, K, N, e, device="cuda", generator=g).to(dtype).requires_grad_()
    relation_product(q, k, v, torch.full((K,), 1 / K, device="cuda", requires_grad=True)).float().sum().backward()


def _compiled(fn: Any) -> list[dict[str, Any]]:
    """Every kernel the JIT compiled for ``fn``: name, warps, constexprs, pointer types, registers, spills, shared."""
    out = []
    for kernel_cache, *_ in fn.device_caches.values():
        for kernel in kernel_cache.values():
            kernel._init_handles()
            names = kernel.src.fn.arg_names
            out.append({"kernel": kernel.name, "num_warps": kernel.metadata.num_warps,
                        "constexprs": {names[k[0]]: v for k, v in kernel.src.constants.items()},
                        "signature": dict(kernel.src.signature), "registers": kernel.n_regs,
                        "spills": kernel.n_spills, "shared": kernel.metadata.shared})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prediction", help="JSON of pcmci kernels report --json")
    parser.add_argument("--shapes", default="paper", choices=["paper", "bench", "all"])
    args = parser.parse_args(argv)
    arch = 10 * torch.cuda.get_device_capability()[0] + torch.cuda.get_device_capability()[1]
    predicted = {(r["case"], tuple(r["shape"]), r["dtype"], r["kernel"]): r
                 for r in json.loads(Path(args.prediction).read_text())["kernels"] if r["arch"] == arch}
    print(f"| case | shape | dtype | kernel | config | AOT regs | real regs | AOT spills | real spills | "
          f"AOT shared | real shared |\n|{'---|' * 11}")
    status = 0
    for case in cases(args.shapes):
        for dname, dtype in DTYPES.items():
            for launch in case.launches(dtype, arch):  # the launches the op picks here
                launch.fn.device_caches.clear()
            _run(case, dtype)
            torch.cuda.synchronize()
            for launch in case.launches(dtype, arch):
                real = [c for c in _compiled(launch.fn) if c["num_warps"] == launch.num_warps
                        and all(c["constexprs"].get(k) == v for k, v in launch.constexprs.items())]
                aot = predicted.get((case.name, case.shape, dname, launch.fn.__name__))
                for c in real:
                    status |= c["spills"] > 0
                    print(f"| {case.name} | {'x'.join(map(str, case.shape))} | {dname} | {c['kernel']} | "
                          f"{aot['config'] if aot else '?'} | {aot['registers'] if aot else '?'} | {c['registers']} | "
                          f"{aot['spills'] if aot else '?'} | {c['spills']} | {aot['shared'] if aot else '?'} | "
                          f"{c['shared']} |")
                if not real:
                    print(f"| {case.name} | {'x'.join(map(str, case.shape))} | {dname} | {launch.fn.__name__} | "
                          f"not launched with the predicted config | | | | | | |")
                    status = 1
    return int(status)


if __name__ == "__main__":
    sys.exit(main())
