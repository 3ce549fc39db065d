"""`pcmci demo` end to end on a very small synthetic set: report files, keys and plots."""
from __future__ import annotations

import json

import pytest

from pcmci.cli import main


def test_demo_writes_report_json_markdown_and_plots(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    code = main(["--quiet", "demo", "--out", str(out), "--epochs", "1", "--train", "12", "--test", "12",
                 "--seeds", "2"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    for variant in ("oracle", "baseline", "full"):
        for split in ("id", "ood"):
            for metric in ("acc", "map", "acc_std", "map_std"):
                assert 0.0 <= report[variant][split][metric] <= 1.0
            assert len(report["runs"][variant][split]["acc"]["values"]) == 2
        assert len(report["flip_rate"][variant]["values"]) == 2
        assert 0.0 <= report["flip_rate"][variant]["mean"] <= 1.0
    md = (out / "report.md").read_text()
    assert "| model | ID acc | OOD acc | ID mAP | OOD mAP | flip rate |" in md and "±" in md
    assert "| oracle |" in md
    assert set(report["setup"]["support"]) == {"train", "test_id", "test_ood"} and "Positivity: " in md
    meta = json.loads((out / "data-unconfounded" / "meta.json").read_text())
    assert meta["confound"] == 0.0 and meta["n_train"] == 12
    confounded = json.loads((out / "data" / "meta.json").read_text())
    assert report["setup"]["rendered_sha256"] == confounded["rendered_sha256"] != meta["rendered_sha256"]
    # the demo's scene: a moving camera and one still-object pair, 5 classes (no order-only pairs)
    assert meta["scene"]["camera"] > 0 and report["setup"]["still_object_classes"] == ["fry egg", "boil egg"]
    assert list(meta["activities"]) == ["make cereal", "fry egg", "make juice", "make sandwich", "boil egg"]
    for cell in report["still_object_acc"].values():
        assert all(0.0 <= v <= 1.0 for v in cell["values"])
    assert set(report["weights"]) == {"full"} and report["weights"]["full"]["clips"] == 12  # only IVC has weights
    assert "backdoor weights" in md
    for png in ("training_curves.png", "id_ood_acc.png", "id_ood_map.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert report["profile"]["params"] > 1e5 and report["profile"]["flops_per_clip"] > 1e6
    assert (out / "profile" / "profile.json").is_file() and "profile/profile.md" in md
    assert "report:" in capsys.readouterr().out


@pytest.mark.parametrize(("train", "test"), [("0", "12"), ("12", "0"), ("12", "1")])
def test_no_training_or_test_videos_is_refused_before_any_work(train, test, tmp_path, capsys) -> None:
    """Found by a bug hunt: --train 0 synthesized two sets, --test 0 or 1 trained a model too, and then each stopped
    on an empty split of the demo's own manifest."""
    out = tmp_path / "demo"
    assert main(["--quiet", "demo", "--out", str(out), "--epochs", "1", "--train", train, "--test", test]) == 1
    assert capsys.readouterr().err == (f"pcmci: error: --train must be >= 1 and --test >= 2 (half test_id, half "
                                       f"test_ood), got {train} and {test}\n")
    assert not out.exists()


def test_positivity_sentence_claims_extrapolation_only_when_training_lacks_the_ood_combinations() -> None:
    from pcmci.experiments.demo import _positivity

    assert "extrapolation" in _positivity({"train": 0.006, "test_id": 0.008, "test_ood": 0.758})
    assert "extrapolation" not in _positivity({"train": 0.18, "test_id": 0.23, "test_ood": 0.758})
