"""Causal diagnostics on hand-built cases with known answers, and the command end to end."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from pcmci.cli import main
from pcmci.experiments.diagnose import flip_rate, repeated_frame, shuffled, static_bias_probes, time_reversed


def clips_with_motion_and_colour(n: int = 8, frames: int = 6) -> tuple[Tensor, Tensor]:
    """Class 1: a dot moving right on a red-tinted clip; class 0: moving left on a blue-tinted one."""
    labels = torch.arange(n) % 2
    clips = torch.zeros(n, frames, 3, 8, 8)
    for i, y in enumerate(labels.tolist()):
        clips[i, :, 0 if y else 2] = 0.3
        for f in range(frames):
            col = 1 + f if y else frames - f
            clips[i, f, 1, 4, col] = 1.0
    return clips, labels


class StaticModel(nn.Module):
    """Reads the tint: red vs blue mean."""

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        red, blue = x[:, :, 0].mean((1, 2, 3)), x[:, :, 2].mean((1, 2, 3))
        return {"logits": torch.stack([blue, red], -1)}


class MotionModel(nn.Module):
    """Reads the dot's displacement from the first to the last frame (a tie predicts class 0)."""

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        cols = torch.arange(x.shape[-1], dtype=x.dtype)
        pos = (x[:, :, 1].sum(-2) * cols).sum(-1) / x[:, :, 1].sum((-1, -2)).clamp_min(1e-6)
        shift = pos[:, -1] - pos[:, 0]
        return {"logits": torch.stack([torch.zeros_like(shift), shift], -1)}


def test_probe_transforms() -> None:
    clips = torch.arange(2 * 5, dtype=torch.float32).view(2, 5, 1, 1, 1).expand(2, 5, 3, 2, 2)
    assert (repeated_frame(clips)[:, :, 0, 0, 0] == clips[:, 2:3, 0, 0, 0]).all()
    assert time_reversed(clips)[0, :, 0, 0, 0].tolist() == [4, 3, 2, 1, 0]
    order = shuffled(clips)[0, :, 0, 0, 0].tolist()
    assert sorted(order) == [0, 1, 2, 3, 4] and all(o != i for i, o in enumerate(order))


def test_static_bias_probes_tell_a_static_model_from_a_motion_model() -> None:
    clips, labels = clips_with_motion_and_colour()
    static = static_bias_probes(StaticModel(), clips, labels)
    assert static == {"original": 1.0, "repeated frame": 1.0, "time-reversed": 1.0, "shuffled": 1.0}
    motion = static_bias_probes(MotionModel(), clips, labels)
    assert motion["original"] == 1.0
    assert motion["repeated frame"] == 0.5  # no motion left: every clip scores a tie -> class 0
    assert motion["time-reversed"] == 0.0  # every direction flips


def test_flip_rate_known_answer() -> None:
    assert flip_rate(torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 0, 0])) == 0.5
    with pytest.raises(ValueError, match="equal, non-empty"):
        flip_rate(torch.tensor([0, 1]), torch.tensor([0]))


@pytest.mark.slow
def test_diagnose_command_end_to_end(synthetic_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    assert main(["--quiet", "train", "tiny", f"data.manifest={synthetic_set}", f"run.out_dir={run}",
                 "optim.epochs=1", "optim.batch_size=6", "model.dictionaries.clips=12"]) == 0
    video = sorted((synthetic_set.parent / "videos").glob("test_ood_*"))[0]
    assert main(["--quiet", "diagnose", str(run / "checkpoint.pt"), "--split", "test_ood", "--video", str(video),
                 "--limit", "6"]) == 0
    report = json.loads((run / "diagnose" / "diagnose.json").read_text())
    assert report["videos"] == 6 and set(report["probes"]) == {"original", "repeated frame", "time-reversed", "shuffled"}
    assert report["counterfactual"]["pairs"] == 6 and 0.0 <= report["counterfactual"]["flip_rate"] <= 1.0
    _check_balance_against_a_loop(report["weights"], run / "checkpoint.pt", synthetic_set)
    maps = report["video"]["maps"]
    plan = maps["ICH transport plan L·Q = proxy weights O (labels x frames)"]  # the default proxy is the plan
    assert len(plan) == 14  # 6 classes + 8 actions
    for row in plan:
        assert sum(row) == pytest.approx(1.0, abs=1e-3)
    assert (run / "diagnose" / "stage_maps.png").stat().st_size > 0
    assert "flip rate" in capsys.readouterr().out

    baseline = tmp_path / "baseline"  # no stages: the probes run, and there are no maps to draw
    assert main(["--quiet", "train", "tiny", f"data.manifest={synthetic_set}", f"run.out_dir={baseline}",
                 "model.stages=[]", "optim.epochs=1", "optim.batch_size=6"]) == 0
    assert main(["--quiet", "diagnose", str(baseline / "checkpoint.pt"), "--video", str(video), "--limit", "6"]) == 0
    assert json.loads((baseline / "diagnose" / "diagnose.json").read_text())["video"]["maps"] == {}
    assert "nothing to draw" in (baseline / "diagnose" / "diagnose.md").read_text()


def _check_balance_against_a_loop(balance: dict, checkpoint: Path, manifest: Path) -> None:
    """IVC's weights read back from the checkpoint and matched to the training rows of ``manifest.csv`` by their
    order there (a second path from the one ``backdoor_balance`` takes, which matches dataset records by path), then
    the weighted own-class share of each confounder summed in float64, one clip at a time."""
    weights = torch.load(checkpoint, weights_only=True)["clip_weights"].tolist()
    meta = json.loads((manifest.parent / "meta.json").read_text())
    rows = [r for r in csv.DictReader(manifest.open()) if r["split"] == "train"]
    videos = {v["path"]: v for v in meta["videos"]}
    assert balance["clips"] == len(rows) == len(weights)
    for name in ("background", "distractor"):
        own = total = 0.0
        for row, w in zip(rows, weights):
            video = videos[row["path"]]
            total += w
            own += w if video[name] == video["label"] else 0.0
        assert balance["weighted"][name] == pytest.approx(own / total, rel=1e-12, abs=1e-12)
        share = sum(videos[r["path"]][name] == videos[r["path"]]["label"] for r in rows) / len(rows)
        assert balance["unweighted"][name] == pytest.approx(share, abs=1e-12)
    assert balance["effective_size"] == pytest.approx(sum(weights) ** 2 / sum(w * w for w in weights), rel=1e-9)
    assert balance["independence"] == pytest.approx(1 / len(meta["activities"]))


def test_follows_counts_only_clips_whose_confounders_all_point_elsewhere() -> None:
    """Five clips by hand: the first two have label and both confounders on three different classes; the third's
    background is its own class, the fourth's confounders agree with each other, the fifth is the label's own."""
    from pcmci.experiments.diagnose import CounterfactualPairs, follows

    empty = torch.zeros(5, 1)
    labels = torch.tensor([0, 1, 2, 3, 4])
    confounders = torch.tensor([[1, 2], [3, 4], [2, 0], [1, 1], [4, 4]])
    pairs = CounterfactualPairs(empty, empty, labels, confounders, ("background", "distractor"))
    found = follows(torch.tensor([1, 4, 2, 1, 4]), pairs)  # clip 0 names its background, clip 1 its distractor
    assert found == {"clips": 2, "label": 0.0, "background": 0.5, "distractor": 0.5}
    assert follows(labels, pairs)["label"] == 1.0
    assert follows(labels[2:], CounterfactualPairs(empty, empty, labels[2:], confounders[2:], pairs[4])) is None


def test_still_object_accuracy_and_an_uninformative_probe_is_named(tiny_model) -> None:
    from pcmci.experiments.diagnose import still_object_accuracy, uninformative_probes

    pred, labels = torch.tensor([0, 6, 5, 6, 1]), torch.tensor([0, 6, 6, 6, 2])
    assert still_object_accuracy(pred, labels, [5, 6]) == pytest.approx(2 / 3)
    assert still_object_accuracy(pred, labels, [4]) is None
    model = tiny_model()
    assert uninformative_probes(model) == {}
    model.cfg.ivc.static_input = True
    clips, labels = torch.rand(2, 8, 3, 64, 64), torch.tensor([0, 1])
    probes = static_bias_probes(model.eval(), clips, labels)
    assert probes["repeated frame"] is None and probes["original"] is not None
    assert "all-zero input" in uninformative_probes(model)["repeated frame"]


def test_mediator_collapse_against_a_loop(tiny_model) -> None:
    """Entropy share and effective rank recomputed from IVC's own maps with explicit loops (float64)."""
    import numpy as np

    from pcmci.experiments.diagnose import mediator_collapse

    model = tiny_model().eval()
    clips = torch.rand(3, 8, 3, 64, 64)
    got = mediator_collapse(model, clips, batch=2)
    with torch.no_grad():
        state = model.initial_state(clips)
        for stage in model.stages()[:-1]:
            state = stage(state)
        v_prime, m, _ = model.ivc.encode(state.video, state.texts)
        a = model.ivc.mediator_weights(v_prime, m).double().numpy()
        m_hat = np.concatenate([a[i] @ m[i].double().numpy() for i in range(3)])
    ent = np.mean([-(row * np.log(row)).sum() for clip in a for row in clip]) / np.log(a.shape[-1])
    sv = np.linalg.svd(m_hat, compute_uv=False)
    p = sv / sv.sum()
    assert got["pm_entropy"] == pytest.approx(ent, rel=1e-5)
    assert got["mediator_effective_rank"] == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-4)
    assert mediator_collapse(tiny_model([]), clips) is None


def test_label_codependency_against_float64_cosines(tiny_model) -> None:
    """Cosines at T recomputed from the model's frozen label texts in float64; word sharing read off the names."""
    import numpy as np
    import torch.nn.functional as F

    from pcmci.experiments.diagnose import label_codependency

    model = tiny_model(["ici"]).eval()
    clip = torch.rand(1, 8, 3, 64, 64)
    got = label_codependency(model, clip)
    c = model.num_queries
    t = F.layer_norm(model.text.double(), (model.text.shape[-1],))[:c].numpy()
    t = t / np.linalg.norm(t, axis=1, keepdims=True)
    expected = {(model.classes[a], model.classes[b]): float(t[a] @ t[b]) for a in range(c) for b in range(a + 1, c)}
    assert len(got["pairs"]) == c * (c - 1) // 2
    for pair in got["pairs"]:
        assert pair["cos_T"] == pytest.approx(expected[tuple(pair["labels"])], abs=1e-6)
        assert pair["shared"] == bool(set(pair["labels"][0].split()) & set(pair["labels"][1].split()))
    assert any(abs(p["cos_T_star"] - p["cos_T"]) > 1e-4 for p in got["pairs"])  # ICI moved the texts
    assert label_codependency(tiny_model([]).eval(), clip) is None  # no stage touches the texts


def test_a_bad_video_stops_diagnose_before_any_probe(tiny_model, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a bug hunt: a missing --video was opened only after every probe had run (minutes on a real split) and
    written probes.png over the one of the earlier report in --out. (A missing or empty path is now refused by
    argparse, test_cli; a file that is not a video still needs the decoder.)"""
    from pcmci.config import preset
    from pcmci.experiments import diagnose

    monkeypatch.setattr(diagnose, "load_model", lambda *_: (tiny_model(), preset("tiny")))
    monkeypatch.setattr(diagnose, "load_clips", lambda *_: pytest.fail("probes started"))
    video, out = tmp_path / "notes.webm", tmp_path / "out"
    video.write_text("not a video")
    assert main(["--quiet", "diagnose", str(tmp_path / "checkpoint.pt"), "--video", str(video), "--out", str(out)]) == 1
    assert capsys.readouterr().err.startswith(f"pcmci: error: cannot decode {video}: not a video / corrupt")
    assert not out.exists()


def test_an_empty_split_is_refused_not_read_as_the_default(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a bug hunt: ``--split ''`` (an unset variable) probed the config's last eval split instead, and said
    so nowhere but in the report."""
    monkeypatch.setattr("pcmci.experiments.diagnose.diagnose", lambda *_: pytest.fail("diagnosed"))
    assert main(["--quiet", "diagnose", str(tmp_path / "c.pt"), "--split", "", "--out", str(tmp_path)]) == 1
    assert capsys.readouterr().err == ("pcmci: error: --split is empty; give a split name, or leave --split out for "
                                       "the config's last eval split\n")
