"""Print the table of README.md from the committed ablation files, paired by seed with the demo set's baseline and
weighted baseline (`../weighted-baseline/demo5.json`, the same data and seeds, trained without mixing).

    .venv/bin/python -P docs/results/context-mix/summarize.py
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
SEEDS = 3


def acc(report: dict, variant: str) -> np.ndarray:
    return np.array(report["variants"][variant]["test_ood"]["acc"]["values"][:SEEDS])


def row(label: str, report: dict, variant: str, reference: np.ndarray) -> str:
    entry = report["variants"][variant]
    id_acc = np.array(entry["test_id"]["acc"]["values"][:SEEDS])
    ood = acc(report, variant)
    still = np.array(entry["still_object_acc"]["values"][:SEEDS])
    follows = " / ".join(f"{np.mean(entry['follows'][k]['values'][:SEEDS]):.2f}"
                         for k in ("label", "background", "distractor"))
    gain = 100 * (ood - reference)
    return (f"| {label} | {id_acc.mean():.3f} ± {id_acc.std():.3f} | {ood.mean():.3f} ± {ood.std():.3f} | "
            f"{still.mean():.3f} | {follows} | {gain.mean():+.1f} ± {gain.std():.1f} |")


def main() -> None:
    demo = json.loads((HERE.parent / "weighted-baseline" / "demo5.json").read_text())
    other = json.loads((HERE / "other-class.json").read_text())
    weighted = json.loads((HERE / "weighted.json").read_text())
    base, reweight = acc(demo, "baseline"), acc(demo, "reweight")
    print("| model (demo set, seeds 0-2) | ID acc | OOD acc | still-object (OOD) | follows label / background / "
          "distractor | OOD vs the same model unmixed (paired, points) |")
    print("|---|---|---|---:|---|---:|")
    print(row("baseline", demo, "baseline", base))
    print(row("weighted baseline", demo, "reweight", reweight))
    print(row("baseline + mixing, partner of another class", other, "baseline", base))
    print(row("weighted baseline + mixing, partner of another class", other, "reweight", reweight))
    print(row("weighted baseline + mixing, partner drawn by its weight", weighted, "reweight", reweight))


if __name__ == "__main__":
    main()
