"""``pcmci ablate``: the paper's variants on one dataset, each trained for N seeds with the same hyperparameters.

Variants: the no-intervention baseline, the weighted baseline ``reweight`` (no stage, trained on the backdoor
weights that come with IVC by default: the row the stages must beat), each stage alone, each pair (in the paper's
order), the full model and the reversed order; then switches inside a stage, named: ``ivc-noreweight`` (IVC's
front-door without the training-time backdoor weights), ``ivc-mediator-only`` (the clip reaches the head only
through ``P(m|V)``, IVC's former default), ``ivc-static`` and ``full-static`` (the still-pixel shortcut: the clip's
mean frame and temporal-mean token removed, no weights — what main did before it was replaced), run only when named.
Every run is ``pcmci train`` + ``pcmci eval`` on ``data.eval_splits``; the report holds mean ± std of accuracy and
mAP per split, and on synthetic sets the counterfactual flip rate, the still-object accuracy (the classes told apart
only by a still tool) and what the models follow (label or a confounder's class,
:func:`~pcmci.experiments.diagnose.follows`) on the last split, and the balance of the backdoor weights
(``ablation.json``, ``ablation.md``, ``ablation_acc.png``, ``ablation_map.png``). Each finished run is kept in its
folder and reused when the ablation is run again with the same config, seed and training code
(:func:`source_digest`); a run interrupted mid-training (Ctrl-C, a killed job) is resumed from its last epoch's
checkpoint by the next ablation with the same key. ``--jobs N`` trains N runs at a time, in worker processes that
end with the ablation (killed or not, none trains on as an orphan); two ablations cannot write to one folder at once.
"""
from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import logging
import multiprocessing
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .. import kernels
from ..config import STAGE_NAMES, Config, ConfigError, load_config
from ..data.datasets import read_video_set
from ..data.watchdog import exit_with_parent
from ..engine.evaluate import evaluate
from ..engine.plots import plot_grouped_bars
from ..engine.runtime import resolve_device
from ..engine.train import train
from .diagnose import CONFOUNDERS, counterfactual_scores, synthetic_pairs

log = logging.getLogger(__name__)
VARIANTS: dict[str, list[str]] = {
    "baseline": [],
    "reweight": [],
    "ich": ["ich"],
    "ici": ["ici"],
    "ivc": ["ivc"],
    "ich+ici": ["ich", "ici"],
    "ich+ivc": ["ich", "ivc"],
    "ici+ivc": ["ici", "ivc"],
    "full": list(STAGE_NAMES),
    "reversed": list(reversed(STAGE_NAMES)),
    "ivc-noreweight": ["ivc"],
    "ivc-mediator-only": ["ivc"],
    "ivc-static": ["ivc"],
    "full-static": list(STAGE_NAMES),
}
_STATIC = ["model.ivc.static=true", "model.ivc.static_input=true", "backdoor.reweight=false"]
SWITCHES: dict[str, list[str]] = {  # config choices of a variant beyond its stages
    "reweight": ["backdoor.reweight=true"],
    "ivc-noreweight": ["backdoor.reweight=false"], "ivc-mediator-only": ["model.ivc.mediator_only=true"],
    "ivc-static": _STATIC, "full-static": _STATIC,
}
ON_REQUEST = ("ivc-noreweight", "ivc-mediator-only", "ivc-static", "full-static")  # switches inside a stage
DEFAULT_VARIANTS = [v for v in VARIANTS if v not in ON_REQUEST]
METRICS = ("acc", "map")
SCORES = ("flip_rate", "still_object_acc")  # counterfactual scores on the last split (synthetic sets)
EXTRAS = (*SCORES, "follows", "weights")  # what a run records beyond the metrics (None where it does not apply)
_PACKAGE = Path(__file__).resolve().parents[1]
# What trains and evaluates a run (the kernels live elsewhere in an editable install); not the studies' reporting.
TRAINING_SOURCES = (_PACKAGE / "config.py", _PACKAGE / "data", _PACKAGE / "model", _PACKAGE / "engine",
                    Path(kernels.__file__).resolve().parent)


def source_digest(roots: tuple[Path, ...] = TRAINING_SOURCES) -> str:
    """SHA-256 of the Python files (and folders of them) in ``roots``, by default the code that trains and evaluates
    a run: a finished run is reused only by an ablation whose training code is the code that trained it."""
    digest = hashlib.sha256()
    files = {p for root in roots for p in ([root] if root.is_file() else root.rglob("*.py"))
             if "__pycache__" not in p.parts}
    for path in sorted(files):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def summarise(values: list[float]) -> dict[str, Any]:
    """``{"mean", "std", "values"}`` (population std; 0 for one seed)."""
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": [float(v) for v in values]}


def summarise_follows(found: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Seeds' :func:`~pcmci.experiments.diagnose.follows` shares, each summarised over the seeds (same clips)."""
    if not found:
        return None
    return {"clips": found[0]["clips"], **{k: summarise([f[k] for f in found]) for k in found[0] if k != "clips"}}


def summarise_weights(found: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Seeds' :func:`~pcmci.experiments.diagnose.backdoor_balance`: the weighted shares and the effective size
    summarised over the seeds; the unweighted shares and ``1/C`` are the data's, the same for every seed."""
    if not found:
        return None
    first = found[0]
    return {"clips": first["clips"], "independence": first["independence"], "unweighted": first["unweighted"],
            "effective_size": summarise([f["effective_size"] for f in found]),
            "weighted": {k: summarise([f["weighted"][k] for f in found]) for k in first["weighted"]}}


def variant_config(source: str, overrides: list[str], stages: list[str], seed: int, out_dir: Path,
                   switches: list[str] | None = None) -> Config:
    """The config of one run: ``source`` + ``overrides``, with the variant's stages and switches, the seed and its
    folder."""
    stage_list = "[" + ",".join(stages) + "]"
    return load_config(source, [*overrides, *(switches or []), f"model.stages={stage_list}", f"run.seed={seed}",
                                f"run.out_dir={out_dir}"])


def run_key(source: str, overrides: list[str], name: str, seed: int) -> dict[str, Any]:
    """What a finished run is reused under: its config, stages, switches, seed and the training code's digest."""
    return {"config": source, "overrides": overrides, "stages": VARIANTS[name], "switches": SWITCHES.get(name, []),
            "seed": seed, "source": source_digest()}


def other_configs(source: str, overrides: list[str], todo: list[tuple[str, int]], out: Path) -> list[str]:
    """The run folders in ``out`` that hold a run of another configuration than this ablation's (config, overrides,
    stages or switches differ; a run of the same configuration by older training code is simply retrained) or a
    checkpoint no ablation stamped (a ``pcmci train`` run): an ablation would delete their checkpoints and results."""
    found = []
    for name, seed in todo:
        saved = out / f"{name}-seed{seed}" / "ablation_run.json"
        if not saved.is_file() and (saved.parent / "checkpoint.pt").exists():
            found.append(f"{saved.parent} (a checkpoint.pt without ablation_run.json: not a run of pcmci ablate)")
            continue
        try:
            theirs = json.loads(saved.read_text()).get("key", {}) if saved.is_file() else None
        except (OSError, ValueError, AttributeError):
            theirs = {}
        if theirs is None:
            continue
        ours = run_key(source, overrides, name, seed)
        changed = sorted(k for k in ours if k != "source" and theirs.get(k) != ours[k])
        if changed:
            found.append(f"{saved.parent} ({', '.join(f'{k}: {theirs.get(k)!r}' for k in changed)})")
    return found


def run_one(source: str, overrides: list[str], name: str, seed: int, out: Path, device: str,
            progress: bool) -> dict[str, Any]:
    """Train + evaluate one (variant, seed); the result is kept in ``out/<name>-seed<k>/ablation_run.json`` and
    reused by a later ablation with the same config, stages, seed and training code. The file is stamped with that
    key before training starts, so a later ablation with the same key resumes an interrupted run from its
    checkpoint (and one with another key starts it over). The counterfactual scores are computed from the checkpoint
    each time (seconds), so a reused run reports what today's diagnostics measure."""
    run_dir = out / f"{name}-seed{seed}"
    cfg = variant_config(source, overrides, VARIANTS[name], seed, run_dir, SWITCHES.get(name))
    cfg.run.device = device if device != "auto" else cfg.run.device
    cfg.run.progress = cfg.run.progress and progress
    key = run_key(source, overrides, name, seed)
    saved, checkpoint = run_dir / "ablation_run.json", run_dir / "checkpoint.pt"
    splits = cfg.data.eval_splits
    done = json.loads(saved.read_text()) if saved.is_file() else {}
    same_run = done.get("key") == key and checkpoint.is_file()
    if same_run and "results" in done:
        log.info("ablation: reusing %s (stages=%s), seed %d from %s", name, VARIANTS[name], seed, saved)
    else:
        if same_run:
            log.info("ablation: resuming %s (stages=%s), seed %d from %s", name, VARIANTS[name], seed, checkpoint)
        else:
            log.info("ablation: %s (stages=%s), seed %d", name, VARIANTS[name], seed)
            checkpoint.unlink(missing_ok=True)  # another key's checkpoint: never resumed under this key's stamp
            _write_json(saved, {"key": key})
        checkpoint = train(cfg, resume=same_run)
        results = evaluate(checkpoint, splits, device=cfg.run.device, progress=progress)
        done = {"key": key, "results": {s: {m: float(results[s][m]) for m in METRICS} for s in splits}}
        _write_json(saved, done)
    pairs = synthetic_pairs(cfg, splits[-1], limit=240)
    scores = dict.fromkeys(EXTRAS) if pairs is None else counterfactual_scores(checkpoint, pairs, cfg.run.device)
    return {**done, **scores}


def check_inputs(source: str, overrides: list[str], device: str) -> None:
    """What would stop the first run only once it trained (minutes, its folder stamped), checked before any run: the
    device, and that the data's training split and each evaluation split have rows."""
    cfg = load_config(source, overrides)
    resolve_device(device if device != "auto" else cfg.run.device)
    videos = read_video_set(cfg.data)
    for split in (cfg.data.train_split, *cfg.data.eval_splits):
        videos.split(split)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically (temporary file + rename)."""
    tmp = path.with_suffix(".tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


@contextlib.contextmanager
def out_lock(out: Path) -> Iterator[None]:
    """Hold ``out/.ablate.lock`` (an exclusive ``flock``, released by the OS when the holder dies) for the block; a
    second ablation into ``out`` stops with one line instead of training into the same run folders."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / ".ablate.lock").open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            raise ConfigError(f"{out} is in use by another pcmci ablate (pid {holder}); wait for it to finish or "
                              "pass another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _worker_init(threads: int, level: int, parent: int | None = None, interval: float = 1.0) -> None:
    """A worker's set-up: threads, logging and, given the ablation's pid, an end with it (a killed ablation leaves
    no orphan training on; the interrupted run's last checkpoint is resumed by the next ablation)."""
    if parent is not None:
        threading.Thread(target=exit_with_parent, args=(parent, interval), daemon=True).start()
    torch.set_num_threads(threads)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")


def variant_names(seeds: int, jobs: int, variants: list[str] | None) -> list[str]:
    """The variants to run (``variants`` or the default set), once ``--seeds``, ``--jobs`` and ``--variants`` are
    checked."""
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    names = variants or DEFAULT_VARIANTS
    if len(set(names)) != len(names):  # each run would be trained (twice, at once with --jobs) and counted twice
        raise ConfigError(f"--variants lists a variant twice: {names}")
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise ConfigError(f"unknown variant(s) {unknown}; valid: {', '.join(VARIANTS)}")
    return names


def run_ablation(source: str, overrides: list[str], seeds: int, out: str | Path, variants: list[str] | None = None,
                 device: str = "auto", progress: bool = True, jobs: int = 1,
                 overwrite: bool = False) -> dict[str, Any]:
    """Train and evaluate every variant for ``seeds`` seeds, ``jobs`` runs at a time (each in its own process,
    with ``cpu_count / jobs`` threads); returns the report (also written under ``out``). Runs of another
    configuration in ``out`` are refused unless ``overwrite`` (they would be deleted)."""
    names = variant_names(seeds, jobs, variants)
    out = Path(out)
    tic = time.perf_counter()
    splits = variant_config(source, overrides, [], 0, out).data.eval_splits
    todo = [(name, seed) for name in names for seed in range(seeds)]
    threads = torch.get_num_threads() if jobs == 1 else max(1, (os.cpu_count() or 1) // jobs)  # per run
    with out_lock(out):
        others = [] if overwrite else other_configs(source, overrides, todo, out)
        if others:
            raise ConfigError(f"{out} holds runs of another configuration, which this ablation would delete: "
                              f"{'; '.join(others)}; pass another --out, or --overwrite to replace them")
        if jobs == 1:
            done = [run_one(source, overrides, name, seed, out, device, progress) for name, seed in todo]
        else:
            initargs = (threads, logging.getLogger().getEffectiveLevel(), os.getpid())
            with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
                                     initargs=initargs) as pool:
                futures = [pool.submit(run_one, source, overrides, name, seed, out, device, False)
                           for name, seed in todo]
                done = [f.result() for f in tqdm(futures, desc="ablation runs", disable=not progress)]
    runs = {name: {split: {m: [] for m in METRICS} for split in splits} for name in names}
    scores: dict[str, dict[str, list[Any]]] = {name: {s: [] for s in EXTRAS} for name in names}
    for (name, _), result in zip(todo, done):
        for split in splits:
            for metric in METRICS:
                runs[name][split][metric].append(result["results"][split][metric])
        for score in EXTRAS:
            if result.get(score) is not None:
                scores[name][score].append(result[score])
    report = {
        "config": source, "overrides": overrides, "seeds": seeds, "splits": splits,
        "variants": {name: {"stages": VARIANTS[name], "switches": SWITCHES.get(name, []),
                            **{split: {m: summarise(v) for m, v in ms.items()} for split, ms in per.items()},
                            **{s: summarise(scores[name][s]) if scores[name][s] else None for s in SCORES},
                            "follows": summarise_follows(scores[name]["follows"]),
                            "weights": summarise_weights(scores[name]["weights"])}
                     for name, per in runs.items()},
        "seconds": round(time.perf_counter() - tic, 1),
        "environment": environment(variant_config(source, overrides, [], 0, out), threads),
    }
    write_report(report, out)
    return report


def environment(cfg: Config, threads: int) -> dict[str, Any]:
    """What the numbers depend on beyond the config and the code: the library versions, the threads per run, and
    for a synthetic set the digest of its rendered pixels (``meta.json``; a set re-synthesized elsewhere can decode
    to other pixels, and a run follows every pixel)."""
    meta = Path(cfg.data.manifest).parent / "meta.json" if cfg.data.manifest else None
    digest = json.loads(meta.read_text()).get("rendered_sha256") if meta is not None and meta.is_file() else None
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "av": importlib.metadata.version("av"), "threads_per_run": threads,
            "data_rendered_sha256": digest}


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
    """The ablation table: one row per variant, mean ± std per split and metric, then the counterfactual scores
    (n/a where the set has none); below it what the models follow and the balance of the backdoor weights, where
    the runs have them."""
    splits = report["splits"]
    head = (" | ".join(f"{s} {m}" for s in splits for m in ("acc", "mAP"))
            + f" | {splits[-1]} flip rate | {splits[-1]} still-object acc")
    rows = []
    for name, v in report["variants"].items():
        cells = " | ".join(f"{v[s][m]['mean']:.4f} ± {v[s][m]['std']:.4f}" for s in splits for m in METRICS)
        for score in SCORES:
            cell = v.get(score)
            cells += " | " + ("n/a" if cell is None else f"{cell['mean']:.4f} ± {cell['std']:.4f}")
        switches = " ".join(v.get("switches", []))
        rows.append(f"| {name} | `{v['stages']}`{' ' + switches if switches else ''} | {cells} |")
    return "\n".join([
        f"# Ablation: {report['config']} {' '.join(report['overrides'])}".rstrip(),
        "",
        f"{report['seeds']} seed(s) per variant, same hyperparameters for every variant, {report['seconds']} s in all.",
        "",
        f"| variant | stages | {head} |",
        "|---|---|" + "---:|" * (2 * len(splits) + len(SCORES)),
        *rows,
        "",
        f"Flip rate: share of `{splits[-1]}` videos whose prediction changes when the same motion is re-rendered with "
        "another background and distractor (and prop, in sets with props; synthetic sets only; lower is better). "
        f"Still-object acc: accuracy on the `{splits[-1]}` videos of the classes told apart from a twin only by a "
        "tool that sits still (synthetic sets with still-object pairs only).",
        "",
        *_follows_table(report),
        *_weights_table(report),
        "![accuracy](ablation_acc.png)",
        "![mAP](ablation_map.png)",
        "",
    ])


def _cell(summary: dict[str, Any]) -> str:
    return f"{summary['mean']:.3f} ± {summary['std']:.3f}"


def _follows_table(report: dict[str, Any]) -> list[str]:
    """Which class the predictions name on clips whose confounders each point elsewhere (synthetic sets)."""
    found = {name: v["follows"] for name, v in report["variants"].items() if v.get("follows")}
    if not found:
        return []
    names = [k for k in CONFOUNDERS if any(k in f for f in found.values())]
    rows = [f"| {name} | {_cell(f['label'])} | " + " | ".join(_cell(f[k]) if k in f else "n/a" for k in names) + " |"
            for name, f in found.items()]
    clips = next(iter(found.values()))["clips"]
    return [f"What the models follow: on the {clips} `{report['splits'][-1]}` clips whose label and confounders each "
            "point to a different class, the share of predictions that name the label or a confounder's class.", "",
            "| variant | label | " + " | ".join(f"{k}'s class" for k in names) + " |",
            "|---|---:|" + "---:|" * len(names), *rows, ""]


def _weights_table(report: dict[str, Any]) -> list[str]:
    """How the backdoor weights balance each confounder of the training split (variants trained with them)."""
    found = {name: v["weights"] for name, v in report["variants"].items() if v.get("weights")}
    if not found:
        return []
    first = next(iter(found.values()))
    names = list(first["weighted"])
    rows = [f"| {name} | {w['effective_size']['mean']:.0f} ± {w['effective_size']['std']:.0f} | "
            + " | ".join(_cell(w["weighted"][k]) for k in names) + " |"
            for name, w in found.items()]
    unweighted = ", ".join(f"{k} {first['unweighted'][k]:.3f}" for k in names)
    return [f"The backdoor weights: share of the {first['clips']} training clips whose confounder is their own "
            f"class's, weighted (unweighted: {unweighted}; independence 1/C = {first['independence']:.3f}), and the "
            "weights' effective sample size. A confounder the references missed keeps its unweighted "
            "share.", "",
            "| variant | effective size | " + " | ".join(f"weighted {k}" for k in names) + " |",
            "|---|---:|" + "---:|" * len(names), *rows, ""]
