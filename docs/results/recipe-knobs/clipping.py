"""Share of optimiser steps whose gradient norm (before clipping) exceeds ``optim.grad_clip`` = 1, per quarter of
training, from runs' ``metrics.jsonl``; ``clipping.txt`` is its output on the 5-seed demo ablation's runs:

    .venv/bin/python -P docs/results/recipe-knobs/clipping.py runs/ablate-demo5/{baseline,full}-seed{0,1,2,3,4}
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def main(runs: list[str]) -> None:
    print("| run | steps | share clipped, quarters 1-4 | all |")
    print("|---|---:|---|---:|")
    for run in runs:
        rows = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]
        norms = np.array([r["grad_norm"] for r in rows if "step" in r])
        quarters = np.array_split(norms > 1.0, 4)
        shares = " / ".join(f"{q.mean():.2f}" for q in quarters)
        print(f"| {Path(run).name} | {len(norms)} | {shares} | {(norms > 1.0).mean():.2f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
