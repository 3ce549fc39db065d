"""``pcmci predict`` follows the checkpoint's data config and prints JSON; eval and predict name a label mismatch."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from test_cli import run_cli, write_short_video

from pcmci.data.decode import VideoDecodeError, sample_clip


@pytest.fixture(scope="module")
def checkpoint(synthetic_set: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch tiny model trained with ``data.pad_short_videos=true``."""
    out = tmp_path_factory.mktemp("run")
    overrides = [f"data.manifest={synthetic_set}", f"run.out_dir={out}", "optim.epochs=1", "optim.batch_size=12",
                 "model.stages=[]", "data.pad_short_videos=true"]
    from pcmci.cli import main

    assert main(["--quiet", "train", "tiny", *overrides]) == 0
    return out / "checkpoint.pt"


def relabelled(synthetic_set: Path, out: Path, rename: dict[str, str], order: list[int] | None = None) -> Path:
    """The synthetic test_ood split as a manifest whose labels.json renames / reorders the classes."""
    labels = json.loads((synthetic_set.parent / "labels.json").read_text())
    classes = [rename.get(c, c) for c in labels["classes"]]
    labels["classes"] = [classes[i] for i in order] if order else classes
    out.mkdir()
    (out / "labels.json").write_text(json.dumps(labels))
    rows = [r for r in csv.DictReader(synthetic_set.open()) if r["split"] == "test_ood"]
    with (out / "manifest.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "path": str(synthetic_set.parent / r["path"]), "label": rename.get(r["label"], r["label"])}
                         for r in rows)
    return out / "manifest.csv"


def test_predict_pads_a_short_video_as_the_checkpoint_says_and_prints_json(checkpoint, synthetic_set, tmp_path,
                                                                           capsys) -> None:
    video = tmp_path / "short.webm"
    write_short_video(video, 3)
    with pytest.raises(VideoDecodeError, match="has 3 frames"):
        sample_clip(video, 8, train=False)  # the default would refuse it; the checkpoint's config pads
    code, out, _ = run_cli(capsys, "predict", str(checkpoint), str(video), "--topk", "3", "--json")
    result = json.loads(out)
    probs = [row["prob"] for row in result["top"]]
    classes = json.loads((synthetic_set.parent / "labels.json").read_text())["classes"]
    assert code == 0 and result["video"] == str(video) and len(probs) == 3
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    assert {row["label"] for row in result["top"]} <= set(classes)


def test_predict_refuses_a_topk_below_one(checkpoint, synthetic_set, capsys) -> None:
    video = sorted((synthetic_set.parent / "videos").glob("test_ood_*"))[0]
    code, out, err = run_cli(capsys, "predict", str(checkpoint), str(video), "--topk", "0")
    assert code == 1 and out == "" and "--topk must be at least 1, got 0" in err


def test_eval_and_predict_name_a_label_mismatch(checkpoint, synthetic_set, tmp_path, capsys) -> None:
    classes = json.loads((synthetic_set.parent / "labels.json").read_text())["classes"]
    first = classes[0]
    other = relabelled(synthetic_set, tmp_path / "other", {first: "juggle"})
    code, _, err = run_cli(capsys, "eval", str(checkpoint), "--manifest", str(other), "--splits", "test_ood")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"pcmci: error: {other}:") and "unknown label 'juggle'" in err
    video = synthetic_set.parent / next(csv.DictReader(synthetic_set.open()))["path"]
    code, _, err = run_cli(capsys, "predict", str(checkpoint), str(video), "--labels", str(other.parent / "labels.json"))
    assert code == 1 and "['juggle']" in err and "labels file" in err


def test_eval_reads_a_manifests_rows_by_class_name(checkpoint, synthetic_set, tmp_path, capsys) -> None:
    """The same test_ood videos with the checkpoint's labels.json, with one in another order, and without one and
    without the first class (classes would come sorted from the rows, one short): each row is scored against the
    checkpoint's class of its name, so the confusion matrix is the first one's (less the dropped class's row)."""
    classes = json.loads((synthetic_set.parent / "labels.json").read_text())["classes"]
    same = relabelled(synthetic_set, tmp_path / "same", {})
    shuffled = relabelled(synthetic_set, tmp_path / "shuffled", {}, order=[1, 0, *range(2, len(classes))])
    subset = relabelled(synthetic_set, tmp_path / "subset", {})
    (subset.parent / "labels.json").unlink()
    rows = [r for r in csv.DictReader(subset.open()) if r["label"] != classes[0]]
    with subset.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    confusion = {}
    for name, manifest in (("same", same), ("shuffled", shuffled), ("subset", subset)):
        code, out, err = run_cli(capsys, "eval", str(checkpoint), "--manifest", str(manifest), "--splits",
                                 "test_ood", "--out", str(tmp_path / f"eval-{name}"), "--json")
        assert code == 0, err
        confusion[name] = json.loads((tmp_path / f"eval-{name}" / "eval_test_ood.json").read_text())["confusion"]
    assert confusion["shuffled"] == confusion["same"]
    assert confusion["subset"][0] == [0] * len(classes) and confusion["subset"][1:] == confusion["same"][1:]
    assert sum(map(sum, confusion["subset"])) == len(rows) > 0