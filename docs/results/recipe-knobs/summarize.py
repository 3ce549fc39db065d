"""Print the recipe-knob table of README.md from the committed ablation files (paired by seed with the main recipe).

    .venv/bin/python -P docs/results/recipe-knobs/summarize.py
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
MAIN = HERE.parent / "ablation-demo-5seeds"
KNOBS = [  # (file, knob as passed to pcmci ablate, oracle file or None)
    ("wd0.5.json", "optim.weight_decay=0.5 (main: 0.05)", None),
    ("ep15.json", "optim.epochs=15 (main: 30)", None),
    ("crop0.5.json", "data.train_crop_scale=0.5 (main: 1, no crop jitter)", None),
    ("flood0.2.json", "optim.flood=0.2 (main: 0, no flooding)", None),
    ("clip100.json", "optim.grad_clip=100 (main: 1)", None),
    ("resample.json", "model.ivc.weighting=sample (main: loss)", None),
    ("motion.json", "model.timesformer.motion_embed=true (main: false)", "motion-c0.json"),
]


def ood(report: dict, variant: str, split: str = "test_ood") -> np.ndarray:
    return np.array(report["variants"][variant][split]["acc"]["values"])


def follows(report: dict) -> str:
    shares = report["variants"]["full"]["follows"]
    return " / ".join(f"{shares[k]['mean']:.2f}" for k in ("label", "background", "distractor"))


def pair(report: dict, variant: str) -> str:
    return f"{ood(report, variant, 'test_id').mean():.3f} / {ood(report, variant).mean():.3f}"


def cell(values: np.ndarray) -> str:
    return f"{values.mean():.3f} ± {values.std():.3f}"


def main() -> None:
    main_report = json.loads((MAIN / "ablation.json").read_text())
    oracle = json.loads((MAIN / "oracle" / "ablation.json").read_text())["variants"]["baseline"]
    print("| recipe | seeds | baseline ID / OOD | full ID / OOD | full − baseline, OOD (paired by seed) | "
          "full still-object | full follows label / bg / distractor | oracle ID / OOD |")
    print("|---|---:|---|---|---|---:|---|---|")
    n = 5
    b, f = ood(main_report, "baseline"), ood(main_report, "full")
    still = np.array(main_report["variants"]["full"]["still_object_acc"]["values"])
    o_id, o_ood = (np.array(oracle[s]["acc"]["values"]) for s in ("test_id", "test_ood"))
    print(f"| main (`tiny` defaults) | {n} | {pair(main_report, 'baseline')} | {pair(main_report, 'full')} | "
          f"{cell(f - b)} | {cell(still)} | {follows(main_report)} | "
          f"{o_id.mean():.3f} / {o_ood.mean():.3f} (3 seeds) |")
    for name, knob, oracle_file in KNOBS:
        report = json.loads((HERE / name).read_text())
        kb, kf = ood(report, "baseline"), ood(report, "full")
        k = len(kb)
        still = np.array(report["variants"]["full"]["still_object_acc"]["values"])
        shift = f" (main, same seeds: {cell(f[:k] - b[:k])})"
        oracle_cell = ""
        if oracle_file:
            o = json.loads((HERE / oracle_file).read_text())["variants"]["baseline"]
            o_id, o_ood = (np.array(o[s]["acc"]["values"]) for s in ("test_id", "test_ood"))
            oracle_cell = f"{o_id.mean():.3f} / {o_ood.mean():.3f} ({len(o_id)} seeds)"
        print(f"| `{knob}` | {k} | {pair(report, 'baseline')} | {pair(report, 'full')} | {cell(kf - kb)}{shift} | "
              f"{cell(still)} | {follows(report)} | {oracle_cell} |")


if __name__ == "__main__":
    main()
