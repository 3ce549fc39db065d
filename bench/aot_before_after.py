"""The relation dispatch table before issue 16 against the current one, both compiled ahead of time with the
specialisation a real launch gets (``aot.bind``), on one arch, fp32 and bf16: configs, registers, spills, shared
memory, status. Runs without ``TRITON_INTERPRET`` (it compiles in this process).

    python bench/aot_before_after.py --arch 89 --shapes all > bench/results/aot-DATE-sm89-before-after.md

"Before" is the table of commit 40c0120 (one 16x16 / 8-warp / 3-stage tile for every fp32 kernel; 16-bit tiles
by N only: 16x16 w8, 32x32 w4, or 64x64 w8 / 64x64 w8 / 64x32 w8; the mask read as uint8), which the old
report, compiling with pointer divisibility only, passed as spill-free.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from pcmci.kernels import report
from pcmci.kernels import relation as rel

_OLD_FP32 = ((16, 16, 8, 3),) * 3
_OLD_HALF = {16: _OLD_FP32, 32: ((32, 32, 4, 3),) * 3, 64: ((64, 64, 8, 3), (64, 64, 8, 3), (64, 32, 8, 3))}


def _old_blocks(N: int, width: int, dtype: torch.dtype) -> tuple[tuple[int, int, int, int], ...]:
    if dtype.itemsize > 2:
        return _OLD_FP32
    return _OLD_HALF[16 if N <= 16 else 32 if N <= 32 else 64]


def _old_mask_dtype(fn: Any, dtype: torch.dtype, width: int) -> torch.dtype:
    return torch.uint8  # every kernel read the mask as uint8


@contextmanager
def _old_table() -> Iterator[None]:
    current = rel._blocks, rel._mask_dtype
    rel._blocks, rel._mask_dtype = _old_blocks, _old_mask_dtype
    rel._launch_configs.cache_clear()
    try:
        yield
    finally:
        rel._blocks, rel._mask_dtype = current
        rel._launch_configs.cache_clear()


def _relation_rows(built: dict[str, Any]) -> dict[tuple, dict[str, Any]]:
    return {(r["case"], tuple(r["shape"]), r["dtype"], r["kernel"]): r for r in built["kernels"] if r["op"] == "relation"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=89)
    parser.add_argument("--shapes", default="all", choices=list(report.SHAPES))
    args = parser.parse_args(argv)
    dtypes = ["fp32", "bf16"]  # fp16 takes bf16's tiles
    chosen = [c for c in report.cases(args.shapes) if c.op == "relation"]
    # compiled in this process (workers=1): worker processes would import the current table
    with _old_table():
        before = _relation_rows(report.build([args.arch], dtypes, chosen, workers=1))
    after = _relation_rows(report.build([args.arch], dtypes, chosen, workers=1))
    failing = {name: sum(bool(r["problems"]) for r in rows.values()) for name, rows in (("before", before),
                                                                                          ("after", after))}
    print(f"# Relation dispatch table on sm_{args.arch}, before and after issue 16\n")
    print(f"`python bench/aot_before_after.py --arch {args.arch} --shapes {args.shapes}`; both compiled with the "
          "launch's own specialisation. Launches that spill or exceed shared memory: "
          f"**{failing['before']} of {len(before)} before, {failing['after']} of {len(after)} after**.\n")
    print("| case | shape | dtype | kernel | before: tile | regs | spills B | shared B | status | after: tile | regs "
          "| spills B | shared B | status |\n|" + "---|" * 14)
    for key, old in before.items():
        new = after[key]
        cells = [*map(str, (key[0], "x".join(map(str, key[1])), key[2], key[3]))]
        for r in (old, new):
            cells += [r["config"], str(r["registers"]), str(r["spills"]), str(r["shared"]),
                      "; ".join(r["problems"]) or "ok"]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
