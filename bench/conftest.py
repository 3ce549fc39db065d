"""Benchmark collection (files named ``bench_*.py``) and a per-group ratio table printed after the run."""
from __future__ import annotations

from collections import defaultdict

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("python_files", "bench_*.py")


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    """For each benchmark group with an ``impl`` parameter: best time per impl and speed-up vs ``reference``;
    peak memory (MiB) and the fused kernel's % of its roofline where recorded (CUDA)."""
    session = getattr(config, "_benchmarksession", None)
    groups: dict[str, dict[str, float]] = defaultdict(dict)
    notes: dict[str, list[str]] = defaultdict(list)
    for bench in getattr(session, "benchmarks", []):
        impl = (bench.params or {}).get("impl")
        if impl is None or bench.stats is None:
            continue
        groups[bench.group][impl] = bench.stats.min
        extra = bench.extra_info or {}
        if "peak_mem_mb" in extra:
            notes[bench.group].append(f"{impl} {extra['peak_mem_mb']:.0f}MiB")
        if "roofline_pct" in extra:
            notes[bench.group].append(f"fused {extra['roofline_pct']:.1f}% roofline")
    if not groups:
        return
    impls = sorted({i for g in groups.values() for i in g}, key=["fused", "reference", "compiled", "pot", "pot_numpy64"].index)
    write = terminalreporter.write_line
    write("")
    write("min time in ms (speed-up vs eager reference, >1 = faster)")
    write(f"{'group':<34}" + "".join(f"{i:>22}" for i in impls))
    for name in sorted(groups):
        times = groups[name]
        ref = times.get("reference")
        cells = []
        for impl in impls:
            t = times.get(impl)
            cells.append("-" if t is None else f"{t * 1e3:.3f}" + (f" ({ref / t:.2f}x)" if ref else ""))
        write(f"{name:<34}" + "".join(f"{c:>22}" for c in cells) + "  " + ", ".join(notes[name]))
