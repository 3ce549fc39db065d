"""``pcmci kernels report``: every Triton launch the dispatchers pick, compiled ahead of time for sm_80/89/90.

For each shape (the paper's stage shapes per dataset, the DESIGN §4 benchmark grid) and dtype, the op's own
``launch_configs`` gives the launches; each distinct one is compiled once per arch (``aot.compile_stats``) and
reported with registers, spill bytes, shared memory and occupancy, next to a roofline lower bound of the op on
an RTX 4090 and an H100. Markdown or JSON; the run fails (exit 1) when any launch spills or exceeds the arch.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from triton import knobs

from . import aot
from ._common import ARCHS, Launch
from .relation import launch_configs as relation_configs
from .roofline import PEAKS, relation_work, sinkhorn_work
from .sinkhorn import _bwd_onchip, _fwd_onchip
from .sinkhorn import launch_configs as sinkhorn_configs

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ROOFLINE_GPUS = ("RTX 4090", "H100")
# The paper preset's stage shapes (pcmci.config 'paper'): batch 8, F = 8 video tokens, D = 512 = K·d with
# K = 8 bases, 50 Sinkhorn iterations; label texts L = classes + auxiliary texts per dataset.
PAPER_BATCH, PAPER_TOKENS, PAPER_BASES, PAPER_HEAD_DIM, PAPER_ITERS = 8, 8, 8, 64, 50
LABEL_TEXTS = {"Breakfast": 10 + 48, "COIN": 180 + 778, "Charades": 157}
BENCH_SINKHORN = [(B, R, S) for B in (8, 64, 256) for R, S in ((10, 8), (48, 16), (200, 64), (200, 2048))]
BENCH_RELATION = [(B, N) for B in (8, 64) for N in (16, 64, 256, 1568)]
# Head widths the relation tables cover, at one N per tile bucket (up to 16, up to 32, larger) and on both
# sides of divisibility by 16 (58 and 64: triton specialises integer arguments divisible by 16); with and
# without a key mask.
HEAD_DIMS = (32, 64, 96, 128)
HEAD_TOKENS = (16, 32, 58, 64)
SHAPES = ("paper", "bench", "heads", "all")


@dataclass(frozen=True)
class Case:
    """One op call: ``op`` is ``sinkhorn`` (shape ``B,R,S``) or ``relation`` (``B,K,N,d,e``)."""

    op: str
    name: str
    shape: tuple[int, ...]
    masked: bool = False

    def launches(self, dtype: torch.dtype, arch: int) -> tuple[Launch, ...]:
        if self.op == "sinkhorn":
            return sinkhorn_configs(*self.shape, dtype, arch, self.masked, iters=PAPER_ITERS)
        return relation_configs(*self.shape, dtype, arch, self.masked)

    def roofline_us(self, dtype: torch.dtype, gpu: str) -> tuple[float, float]:
        """Lower bounds (forward, forward+backward) in microseconds."""
        if self.op == "sinkhorn":
            launches = self.launches(dtype, 80)
            fwd, bwd = sinkhorn_work(*self.shape, PAPER_ITERS, dtype.itemsize, launches[0].fn is _fwd_onchip,
                                     launches[1].fn is _bwd_onchip)
        else:
            prec = self.launches(dtype, 80)[0].constexprs["PREC"]
            name = {torch.float32: "tf32" if prec == "tf32" else "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
            fwd, bwd = relation_work(*self.shape, dtype, name[dtype])
        return 1e6 * fwd.bound_s(PEAKS[gpu]), 1e6 * (fwd + bwd).bound_s(PEAKS[gpu])


def cases(shapes: str) -> list[Case]:
    """``paper`` (stage shapes of the Breakfast, COIN and Charades presets), ``bench`` (DESIGN §4), ``heads``
    (relation at head dims ``HEAD_DIMS``) or ``all``."""
    if shapes not in SHAPES:
        raise ValueError(f"shapes must be one of {', '.join(SHAPES)}, got {shapes!r}")
    out = []
    if shapes in ("paper", "all"):
        head = (PAPER_BASES, PAPER_HEAD_DIM, PAPER_HEAD_DIM)
        for data, L in LABEL_TEXTS.items():
            out.append(Case("sinkhorn", f"{data} ICH", (PAPER_BATCH, L, PAPER_TOKENS)))
            out.append(Case("relation", f"{data} ICI", (PAPER_BATCH, head[0], L, *head[1:])))
        out.append(Case("relation", "IVC", (PAPER_BATCH, head[0], PAPER_TOKENS, *head[1:])))
    if shapes in ("bench", "all"):
        out += [Case("sinkhorn", "bench", s) for s in BENCH_SINKHORN]
        out += [Case("relation", "bench", (B, 8, N, 64, 64)) for B, N in BENCH_RELATION]
    if shapes in ("heads", "all"):
        out += [Case("relation", f"d={d}" + (" masked" if masked else ""), (PAPER_BATCH, PAPER_BASES, N, d, d), masked)
                for d in HEAD_DIMS for N in HEAD_TOKENS for masked in (False, True)]
    return out


_STATS: dict[tuple, aot.KernelStats] = {}  # compiled launches of this process, by _key


def _key(launch: Launch, arch: int) -> tuple:
    """Launches with equal keys compile the same kernel: same function, arch and triton specialisation."""
    return launch.fn.__name__, arch, aot.bind(launch, arch).key()


def _tile(launch: Launch) -> str:
    c = launch.constexprs
    tile = f"{c['BR']}x{c['BS']}" if "BR" in c else f"{c['BM']}x{c['BN']} {c['PREC']}"
    return f"{tile} w{launch.num_warps} s{launch.num_stages}"


def _specialised(launch: Launch, arch: int) -> str:
    """The integer arguments a launch specialises on: ``d,e`` (divisible by 16), ``NB=1`` (a constant)."""
    bound = aot.bind(launch, arch)
    ints = [n for n in bound.divisible() if bound.signature[n].startswith("i")]
    ones = [f"{n}=1" for n, t in bound.signature.items() if t == "constexpr" and n not in launch.constexprs]
    return ",".join(ints + ones) or "-"


def _compile_job(job: tuple[Case, str, int, int]) -> aot.KernelStats:
    case, dname, arch, index = job
    return aot.compile_stats(case.launches(DTYPES[dname], arch)[index], arch)


@contextlib.contextmanager
def _compiling_env() -> Iterator[None]:
    """Child processes without ``TRITON_INTERPRET``: the interpreter's kernels are not compilable."""
    saved = os.environ.pop("TRITON_INTERPRET", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["TRITON_INTERPRET"] = saved


def _compile_all(jobs: dict[tuple, tuple[Case, str, int, int]], workers: int) -> None:
    """Fill ``_STATS`` for every key of ``jobs`` not compiled yet: here, or in ``workers`` fresh processes
    (always when this process runs the Triton interpreter)."""
    todo = [(key, job) for key, job in jobs.items() if key not in _STATS]
    if not todo:
        return
    if workers <= 1 and not knobs.runtime.interpret:
        results = [_compile_job(job) for _, job in todo]
    else:
        spawn = multiprocessing.get_context("spawn")
        with _compiling_env(), ProcessPoolExecutor(max(1, workers), mp_context=spawn) as pool:
            results = list(pool.map(_compile_job, [job for _, job in todo]))
    _STATS.update(zip((key for key, _ in todo), results))


def build(archs: Sequence[int], dtypes: Sequence[str], shapes: str | Sequence[Case], workers: int = 1) -> dict[str, Any]:
    """Compile the dispatch table at ``shapes`` (a name of ``cases`` or the cases themselves); one row per (case,
    dtype, arch, launch), each distinct specialisation compiled once per process (``workers`` in parallel)."""
    chosen = cases(shapes) if isinstance(shapes, str) else list(shapes)
    table = [(case, dname, arch, index, launch) for case in chosen for dname in dtypes for arch in archs
             for index, launch in enumerate(case.launches(DTYPES[dname], arch))]
    _compile_all({_key(launch, arch): (case, dname, arch, index) for case, dname, arch, index, launch in table},
                 workers)
    rows = []
    for case, dname, arch, _, launch in table:
        stats = _STATS[_key(launch, arch)]
        rows.append({"op": case.op, "case": case.name, "shape": list(case.shape), "dtype": dname,
                     "config": _tile(launch), "div16": _specialised(launch, arch), **stats.as_dict(),
                     **aot.occupancy(stats, arch), "problems": aot.check(stats)})
    roof = [{"op": case.op, "case": case.name, "shape": list(case.shape), "dtype": dname,
             **{gpu: dict(zip(("fwd_us", "fwdbwd_us"), case.roofline_us(DTYPES[dname], gpu))) for gpu in ROOFLINE_GPUS}}
            for case in chosen for dname in dtypes]
    distinct = {_key(launch, arch) for *_, arch, _, launch in table}
    name = shapes if isinstance(shapes, str) else "custom"
    return {"archs": list(archs), "dtypes": list(dtypes), "shapes": name, "compiled": len(distinct),
            "ok": not any(r["problems"] for r in rows), "kernels": rows, "roofline": roof}


def _table(head: Sequence[str], body: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in body]


def markdown(report: dict[str, Any]) -> str:
    """Per arch, one row per distinct (case, dtype, launch); then the roofline bounds."""
    out = [f"# Triton kernels, compiled ahead of time ({report['compiled']} distinct compiles)", "",
           ("Each launch compiled with the specialisation a real launch gets (triton's own binder: pointers and "
            "integers divisible by 16 get `tt.divisibility`, integers equal to 1 become constants; column ÷16 / =1 "
            "names the integer arguments). Registers per thread, spills = spill stores + loads (bytes per thread), "
            "shared memory per block; occupancy = resident warps / max warps per SM."), ""]
    for arch in report["archs"]:
        out += [f"## sm_{arch} ({aot.ARCH_LIMITS[arch].gpu})", ""]
        rows = [r for r in report["kernels"] if r["arch"] == arch]
        out += _table(["op", "case", "shape", "dtype", "kernel", "tile, warps, stages", "÷16 / =1", "regs",
                       "spills B", "shared B", "blocks/SM", "warps/SM", "occupancy", "status"],
                      [(r["op"], r["case"], "x".join(map(str, r["shape"])), r["dtype"], r["kernel"], r["config"],
                        r["div16"], r["registers"], r["spills"], r["shared"], r["blocks_per_sm"], r["warps_per_sm"],
                        f"{r['occupancy']:.0%}", "; ".join(r["problems"]) or "ok") for r in rows])
        out.append("")
    out += ["## Roofline lower bound (µs, published peaks)", ""]
    bounds = [(g, k) for g in ROOFLINE_GPUS for k in ("fwd_us", "fwdbwd_us")]
    out += _table(["op", "case", "shape", "dtype", *(f"{g} {k[:-3].replace('fwdbwd', 'fwd+bwd')}" for g, k in bounds)],
                  [(r["op"], r["case"], "x".join(map(str, r["shape"])), r["dtype"],
                    *(f"{r[g][k]:.2f}" for g, k in bounds)) for r in report["roofline"]])
    out += ["", "**all launches spill-free and within shared memory**" if report["ok"] else "**FAIL**: see status"]
    return "\n".join(out) + "\n"


def add_arguments(parser: argparse.ArgumentParser, folder: Callable[[str], str] = str) -> None:
    """The ``kernels report`` options; ``folder`` checks ``--out`` (the caller's check of an output folder)."""
    parser.add_argument("--arch", type=int, nargs="+", default=list(ARCHS), choices=list(aot.ARCH_LIMITS))
    parser.add_argument("--dtype", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--shapes", default="paper", choices=list(SHAPES))
    parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="parallel compiles")
    parser.add_argument("--out", type=folder,
                        help="also write kernels-report.md and kernels-report.json into this folder")
    parser.add_argument("--overwrite", action="store_true", help="replace the report in an --out that holds one")


def run(args: argparse.Namespace) -> int:
    """Print the report; 1 when any launch spills or exceeds its arch's shared memory. A repeated --arch or --dtype
    (its rows listed twice), --workers below 1 or above the cores and an --out holding a report (without
    --overwrite) are refused before any compile."""
    for flag, values in (("--arch", args.arch), ("--dtype", args.dtype)):
        if len(set(values)) != len(values):
            raise ValueError(f"{flag} lists a value twice: {' '.join(map(str, values))}")
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if args.workers > (os.cpu_count() or 1):  # each worker is a process importing torch: hundreds would exhaust memory
        raise ValueError(f"--workers must be at most the {os.cpu_count() or 1} cores here, got {args.workers}")
    reports = ("kernels-report.md", "kernels-report.json")
    held = [name for name in reports if args.out and (Path(args.out) / name).exists()]
    if held and not args.overwrite:
        raise FileExistsError(f"{args.out} holds a report already ({', '.join(held)}); pass another --out, or "
                              "--overwrite to replace it")
    report = build(args.arch, args.dtype, args.shapes, args.workers)
    text = {"json": json.dumps(report, indent=1) + "\n", "md": markdown(report)}
    sys.stdout.write(text["json" if args.json else "md"])
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        for ext, content in text.items():
            (Path(args.out) / f"kernels-report.{ext}").write_text(content)
    return 0 if report["ok"] else 1
