"""``pcmci ablate``: the paper's variants on one dataset, each trained for N seeds with the same hyperparameters.

Variants: the no-intervention baseline, each stage alone, each pair (in the paper's order), the full model and the
reversed order. Every run is ``pcmci train`` + ``pcmci eval`` on ``data.eval_splits``; the report holds mean ± std
of accuracy and mAP per split (``ablation.json``, ``ablation.md``, ``ablation_acc.png``, ``ablation_map.png``).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from .config import STAGE_NAMES, Config, load_config
from .engine.evaluate import evaluate
from .engine.plots import plot_grouped_bars
from .engine.train import train

log = logging.getLogger(__name__)
VARIANTS: dict[str, list[str]] = {
    "baseline": [],
    "ich": ["ich"],
    "ici": ["ici"],
    "ivc": ["ivc"],
    "ich+ici": ["ich", "ici"],
    "ich+ivc": ["ich", "ivc"],
    "ici+ivc": ["ici", "ivc"],
    "full": list(STAGE_NAMES),
    "reversed": list(reversed(STAGE_NAMES)),
}
METRICS = ("acc", "map")


def summarise(values: list[float]) -> dict[str, Any]:
    """``{"mean", "std", "values"}`` (population std; 0 for one seed)."""
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": [float(v) for v in values]}


def variant_config(source: str, overrides: list[str], stages: list[str], seed: int, out_dir: Path) -> Config:
    """The config of one run: ``source`` + ``overrides``, with the variant's stages, the seed and its folder."""
    stage_list = "[" + ",".join(stages) + "]"
    return load_config(source, [*overrides, f"model.stages={stage_list}", f"run.seed={seed}",
                                f"run.out_dir={out_dir}"])


def run_ablation(source: str, overrides: list[str], seeds: int, out: str | Path, variants: list[str] | None = None,
                 device: str = "auto", progress: bool = True) -> dict[str, Any]:
    """Train and evaluate every variant for ``seeds`` seeds; returns the report (also written under ``out``)."""
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    names = variants or list(VARIANTS)
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; valid: {', '.join(VARIANTS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tic = time.perf_counter()
    splits = variant_config(source, overrides, [], 0, out).data.eval_splits
    runs: dict[str, dict[str, dict[str, list[float]]]] = {}
    for name in names:
        runs[name] = {split: {m: [] for m in METRICS} for split in splits}
        for seed in range(seeds):
            cfg = variant_config(source, overrides, VARIANTS[name], seed, out / f"{name}-seed{seed}")
            cfg.run.device = device if device != "auto" else cfg.run.device
            cfg.run.progress = cfg.run.progress and progress
            log.info("ablation: %s (stages=%s), seed %d", name, VARIANTS[name], seed)
            results = evaluate(train(cfg), splits, device=cfg.run.device, progress=progress)
            for split in splits:
                for metric in METRICS:
                    runs[name][split][metric].append(results[split][metric])
    report = {
        "config": source, "overrides": overrides, "seeds": seeds, "splits": splits,
        "variants": {name: {"stages": VARIANTS[name],
                            **{split: {m: summarise(v) for m, v in ms.items()} for split, ms in per.items()}}
                     for name, per in runs.items()},
        "seconds": round(time.perf_counter() - tic, 1),
    }
    write_report(report, out)
    return report


def write_report(report: dict[str, Any], out: Path) -> None:
    """``ablation.json``, ``ablation.md`` and one grouped bar chart per metric."""
    (out / "ablation.json").write_text(json.dumps(report, indent=2))
    (out / "ablation.md").write_text(markdown(report))
    for metric, label in (("acc", "top-1 accuracy"), ("map", "mAP")):
        values = {name: {split: (v[split][metric]["mean"], v[split][metric]["std"]) for split in report["splits"]}
                  for name, v in report["variants"].items()}
        plot_grouped_bars(values, out / f"ablation_{metric}.png", label,
                          f"{label} by variant ({report['seeds']} seed(s))")


def markdown(report: dict[str, Any]) -> str:
    """The ablation table: one row per variant, mean ± std per split and metric."""
    splits = report["splits"]
    head = " | ".join(f"{s} {m}" for s in splits for m in ("acc", "mAP"))
    rows = []
    for name, v in report["variants"].items():
        cells = " | ".join(f"{v[s][m]['mean']:.4f} ± {v[s][m]['std']:.4f}" for s in splits for m in METRICS)
        rows.append(f"| {name} | `{v['stages']}` | {cells} |")
    return "\n".join([
        f"# Ablation: {report['config']} {' '.join(report['overrides'])}".rstrip(),
        "",
        f"{report['seeds']} seed(s) per variant, same hyperparameters for every variant, {report['seconds']} s in all.",
        "",
        f"| variant | stages | {head} |",
        "|---|---|" + "---:|" * (2 * len(splits)),
        *rows,
        "",
        "![accuracy](ablation_acc.png)",
        "![mAP](ablation_map.png)",
        "",
    ])
