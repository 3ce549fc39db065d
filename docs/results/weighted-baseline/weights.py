"""How the backdoor weights of the weighted baseline's runs spread over the 720 training clips (``weights.txt``).

    .venv/bin/python -P docs/results/weighted-baseline/weights.py runs/ablate-reweight5 \
        > docs/results/weighted-baseline/weights.txt

Reads ``clip_weights`` from each ``reweight-seed*/checkpoint.pt`` of the ablation folder (written by the command
in README.md; indexed like the manifest's training rows), and each clip's background id from ``runs/easy/meta.json``.
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import torch


def main(folder: Path) -> None:
    meta = json.loads(Path("runs/easy/meta.json").read_text())
    by_path = {v["path"]: v for v in meta["videos"]}
    with open("runs/easy/manifest.csv", newline="") as f:  # the training split in the dataset's (manifest) order
        train = [by_path[row["path"]] for row in csv.DictReader(f) if row["split"] == "train"]
    own = torch.tensor([v["background"] == v["label"] for v in train])
    print(f"{folder}: {len(train)} training clips, {int((~own).sum())} with another class's background")
    print("| seed | weight < 1 | 1 to 5 | >= 5 | clips >= 5 whose background is another class's "
          "| weight mass on them |")
    print("|---|---:|---:|---:|---:|---:|")
    for ckpt in sorted(folder.glob("reweight-seed*/checkpoint.pt")):
        w = torch.load(ckpt, map_location="cpu", weights_only=False)["clip_weights"]
        heavy = w >= 5
        print(f"| {ckpt.parent.name.split('seed')[1]} | {int((w < 1).sum())} | {int(((w >= 1) & (w < 5)).sum())} | "
              f"{int(heavy.sum())} | {int((heavy & ~own).sum())} | {float(w[heavy].sum() / w.sum()):.2f} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
