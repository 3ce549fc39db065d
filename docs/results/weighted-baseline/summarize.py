"""Print the tables of README.md from the committed ablation files (paired by seed: the seeds share the data).

    .venv/bin/python -P docs/results/weighted-baseline/summarize.py
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
RESULTS = HERE.parent


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def values(report: dict, variant: str, key: str, split: str = "test_ood") -> np.ndarray:
    entry = report["variants"][variant]
    found = entry[split]["acc"] if key == "acc" else entry[key]
    return np.array(found["values"][split] if isinstance(found.get("values"), dict) else found["values"])


def cell(x: np.ndarray) -> str:
    return f"{x.mean():.3f} ± {x.std():.3f}"


def balance(report: dict, variant: str, seeds: int | None = None) -> str:
    """Weighted own-class shares of background and distractor, and the effective size: mean over the first
    ``seeds`` seeds (all by default)."""
    w = report["variants"][variant].get("weights")
    if not w:
        return "– | – | –"
    mean = [np.mean(x["values"][:seeds]) for x in (w["weighted"]["background"], w["weighted"]["distractor"],
                                                    w["effective_size"])]
    return f"{mean[0]:.3f} | {mean[1]:.3f} | {mean[2]:.0f}"


def follows(report: dict, variant: str, seeds: int | None = None) -> str:
    """Shares of the all-different OOD clips named by their label, background, distractor (first ``seeds`` seeds)."""
    f = report["variants"][variant]["follows"]
    return " / ".join(f"{np.mean(f[k]['values'][:seeds]):.2f}" for k in ("label", "background", "distractor"))


def demo_table(report: dict) -> None:
    print(f"Demo set, {report['seeds']} seeds ({report['seconds']:.0f} s):\n")
    print("| variant | ID acc | OOD acc | still-object (OOD) | follows label / background / distractor | "
          "weighted background | weighted distractor | effective size |")
    print("|---|---:|---:|---:|---|---:|---:|---:|")
    for v in report["variants"]:
        print(f"| {v} | {cell(values(report, v, 'acc', 'test_id'))} | {cell(values(report, v, 'acc'))} | "
              f"{cell(values(report, v, 'still_object_acc'))} | {follows(report, v)} | {balance(report, v)} |")
    print("\nPaired OOD differences (points, per seed):\n")
    for a, b in (("reweight", "baseline"), ("full", "baseline"), ("full", "reweight")):
        d = 100 * (values(report, a, "acc") - values(report, b, "acc"))
        print(f"- {a} − {b}: {d.mean():+.1f} ± {d.std():.1f} ({', '.join(f'{x:+.1f}' for x in d)})")


def reference_table() -> None:
    """reference=clip against reference=frame, same seeds (0-2), same commands otherwise."""
    demo = load(HERE / "demo5.json")
    rows = [("demo", "reweight", demo, HERE / "refclip.json", "reweight"),
            ("demo", "full", demo, HERE / "refclip.json", "full"),
            ("famA", "reweight", load(RESULTS / "recipe-knobs" / "famA-weights.json"), HERE / "refclip-famA.json",
             "reweight"),
            ("famB", "reweight", load(RESULTS / "recipe-knobs" / "famB-weights.json"), HERE / "refclip-famB.json",
             "reweight")]
    print("\nReferences on whole clips (`backdoor.reference=clip`) against single frames, seeds 0-2:\n")
    print("| set | variant | reference | OOD acc | still-object (OOD) | weighted background | weighted distractor | "
          "effective size |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for name, variant, frame, clip_path, clip_variant in rows:
        # the famA/famB frame rows are the weighted baseline of ../recipe-knobs (named "baseline" there: a patch)
        frame_variant = variant if variant in frame["variants"] else "baseline"
        for label, report, v in (("frame", frame, frame_variant), ("clip", None, clip_variant)):
            if report is None:
                if not clip_path.exists():
                    continue
                report = load(clip_path)
            acc = values(report, v, "acc")[:3]
            still = values(report, v, "still_object_acc")[:3] if report["variants"][v].get("still_object_acc") \
                else None
            print(f"| {name} | {variant} | {label} | {cell(acc)} | {cell(still) if still is not None else 'n/a'} | "
                  f"{balance(report, v, 3)} |")


def more_data_table() -> None:
    """The demo scene with three times the training clips (``more-data.json``) against the demo set, seeds 0-2."""
    more, demo = load(HERE / "more-data.json"), load(HERE / "demo5.json")
    print("\nThree times the training clips (2160, same scene, same confounding, same test splits), seeds 0-2:\n")
    print("| variant | training clips | ID acc | OOD acc | still-object (OOD) | "
          "follows label / background / distractor |")
    print("|---|---:|---:|---:|---:|---|")
    for v in more["variants"]:
        for n, report in ((720, demo), (2160, more)):
            accuracies = (cell(values(report, v, "acc", split)[:3]) for split in ("test_id", "test_ood"))
            print(f"| {v} | {n} | {' | '.join(accuracies)} | "
                  f"{cell(values(report, v, 'still_object_acc')[:3])} | {follows(report, v, 3)} |")
    base = values(more, "baseline", "acc")
    for v in [v for v in more["variants"] if v != "baseline"]:
        d = 100 * (values(more, v, "acc") - base)
        per_seed = ", ".join(f"{x:+.1f}" for x in d)
        print(f"\n- {v} − baseline at 2160 clips: {d.mean():+.1f} ± {d.std():.1f} ({per_seed})")


def more_data_followups() -> None:
    """Three times the clips: a third of the epochs (``more-data-10ep.json``), and which stage costs — each trained
    on the backdoor weights (``more-data-stages.json``, ``more-data-ivc-norelation.json``) — paired by seed with the
    30-epoch runs of ``more-data.json``."""
    more = load(HERE / "more-data.json")
    short = load(HERE / "more-data-10ep.json")
    print("\nThree times the training clips for a third of the epochs (10; the demo's compute), seeds 0-2:\n")
    print("| variant | ID acc | OOD acc | still-object (OOD) | OOD vs 30 epochs (paired, points) |")
    print("|---|---:|---:|---:|---:|")
    for v in short["variants"]:
        d = 100 * (values(short, v, "acc") - values(more, v, "acc"))
        print(f"| {v} | {cell(values(short, v, 'acc', 'test_id'))} | {cell(values(short, v, 'acc'))} | "
              f"{cell(values(short, v, 'still_object_acc'))} | {d.mean():+.1f} ± {d.std():.1f} |")
    rows = [("reweight (no stage)", more, "reweight"), ("full (ich, ici, ivc)", more, "full")]
    for name, path, variant in (("ich + ici", "more-data-stages.json", "ich+ici"),
                                ("ivc", "more-data-stages.json", "ivc"),
                                ("ivc without its relation encoder", "more-data-ivc-norelation.json", "ivc")):
        if (HERE / path).exists() and variant in load(HERE / path)["variants"]:
            rows.append((name, load(HERE / path), variant))
    print("\nWhich stage costs at 2160 clips (30 epochs, every row on the backdoor weights), seeds 0-2:\n")
    print("| stages | ID acc | OOD acc | still-object (OOD) | follows label / background / distractor | "
          "OOD − reweight (paired, points) |")
    print("|---|---:|---:|---:|---|---:|")
    reweight = values(more, "reweight", "acc")
    for name, report, v in rows:
        d = 100 * (values(report, v, "acc") - reweight)
        print(f"| {name} | {cell(values(report, v, 'acc', 'test_id'))} | {cell(values(report, v, 'acc'))} | "
              f"{cell(values(report, v, 'still_object_acc'))} | {follows(report, v)} | {d.mean():+.1f} ± {d.std():.1f} |")


if __name__ == "__main__":
    demo_table(load(HERE / "demo5.json"))
    reference_table()
    more_data_table()
    more_data_followups()
