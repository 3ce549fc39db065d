"""The hallucination probe (issue 19): masking test invariants and ICH's proxy mass against a float64 loop."""
import json

import numpy as np
import pytest
import torch

from pcmci.cli import main
from pcmci.config import ClipConfig, ICHConfig
from pcmci.data.captions import render_pair
from pcmci.data.synthetic import Scene, activities
from pcmci.engine.vlm import MODEL, VLMSettings, pretrain_vlm, to_clip_input
from pcmci.experiments.hallucination import hallucination_report, ich_prop_mass, masking_test
from pcmci.model.clip import FrozenCLIP

SCENE = Scene(still_pairs=1)
CLASSES = list(activities(1))


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    out = tmp_path_factory.mktemp("vlm")
    record = pretrain_vlm(out, VLMSettings(clips=14, frames=2, epochs=2, batch=8, eval_clips=7), progress=False)
    return out / record["weights"]


@pytest.fixture(scope="module")
def clip(weights):
    return FrozenCLIP(ClipConfig(name=MODEL, pretrained=str(weights)))


def test_masking_test_sees_the_same_frames_wherever_the_prop_is_hidden(clip):
    result = masking_test(clip, CLASSES, SCENE, seed=11, clips=7, frames=1)
    own, foreign = result["own prop"], result["foreign prop"]
    # with the prop hidden, the own-prop and foreign-prop renderings are the same pixels with the same labels (the
    # probe shares them; that the pixels agree is tested in test_data_captions)
    for rendering in ("prop masked", "both masked"):
        assert own["accuracy"][rendering] == foreign["accuracy"][rendering]
    # a second path: the probability of the prop's label on the unmasked own-prop frames, computed directly
    texts = clip.encode_text(CLASSES)
    direct = []
    for i in range(7):
        shots, label, _ = render_pair(11, i, 0.0, SCENE, prop=i % len(CLASSES), frames=1)
        sims = clip.encode_frames(to_clip_input(shots)[:, None])[:, 0].double() @ texts.double().T
        direct.append(torch.softmax(sims / clip.temperature, -1)[:, label])
    assert own["p_cooccurring_label"]["as is"] == pytest.approx(float(torch.cat(direct).mean()), abs=1e-5)


def _plan_float64(cost: np.ndarray, eps: float, iters: int) -> np.ndarray:
    """Log-domain Sinkhorn, uniform marginals, the update order of kernels/sinkhorn.py, in float64."""
    k = -cost / eps
    la, lb = np.full(cost.shape[0], -np.log(cost.shape[0])), np.full(cost.shape[1], -np.log(cost.shape[1]))
    v = np.zeros(cost.shape[1])
    for _ in range(iters):
        u = la - np.logaddexp.reduce(v[None, :] + k, axis=1)
        v = lb - np.logaddexp.reduce(u[:, None] + k, axis=0)
    return np.exp(u[:, None] + v[None, :] + k)


def test_ich_prop_mass_matches_a_float64_transport_plan(clip):
    cfg = ICHConfig()
    result = ich_prop_mass(clip, CLASSES, SCENE, seed=5, clips=3, ich_cfg=cfg, frames=8)
    assert result["proxy"] == "plan" and list(result["mass_on_prop_frames"])[0] == "plan"
    texts = clip.encode_text(CLASSES).double()
    masses = []
    for i in range(3):
        with_prop, _, _ = render_pair(5, i, 0.0, SCENE, prop=i, hide=frozenset({"actor"}), frames=4)
        without, _, _ = render_pair(5, i, 0.0, SCENE, prop=i, hide=frozenset({"actor", "prop"}), frames=4)
        vp = clip.encode_frames(to_clip_input(np.concatenate([with_prop, without]))[None])[0].double()
        plan = len(CLASSES) * _plan_float64((1 - texts @ vp.T).numpy(), cfg.eps, cfg.iters)
        masses.append(plan[i, :4].sum())
    # the same 50 iterations in float32 (kernel reference path) vs float64: the log-potentials carry ~1e-6
    # relative rounding per iteration on values of order 1/eps = 10, so the plan rows agree to well under 1e-3
    assert result["mass_on_prop_frames"]["plan"]["mean"] == pytest.approx(float(np.mean(masses)), abs=1e-3)
    assert result["mass_on_prop_frames"]["plan"]["std"] == pytest.approx(float(np.std(masses)), abs=1e-3)


def test_the_report_writes_its_numbers_and_plots(weights, tmp_path):
    report = hallucination_report(weights, tmp_path, clips=2)
    written = json.loads((tmp_path / "hallucination.json").read_text())
    assert written["masking"] == report["masking"] and written["ich_proxy"] == report["ich_proxy"]
    assert (tmp_path / "masking_test.png").stat().st_size > 0 and (tmp_path / "ich_overalignment.png").exists()
    assert "| own prop | as is |" in (tmp_path / "hallucination.md").read_text()


@pytest.mark.parametrize(("weights", "message"), [
    ("", "--hallucination '' names no weights (model.clip.pretrained is unset); give a weights file or a tag "
     "such as pcmci-synth"),
    ("{tmp}", "model.clip.pretrained={tmp}: a folder, not a weights file: {tmp}"),
    ("bogus", "model.clip.pretrained='bogus': unknown open_clip pretrained tag for 'pcmci-tiny-clip'; known tags: "
              "['pcmci-synth']"),
])
def test_weights_that_name_no_vlm_are_refused_before_any_probe(weights, message, tmp_path, capsys):
    """Found by a bug hunt: ``--hallucination ''`` probed a randomly initialised VLM and wrote its report (rc 0); a
    folder was called "no such file"; the unknown-tag message listed no tag, not even the shipped pcmci-synth."""
    out = tmp_path / "out"
    code = main(["--quiet", "diagnose", "--hallucination", weights.format(tmp=tmp_path), "--out", str(out)])
    assert code == 1 and capsys.readouterr().err == f"pcmci: error: {message.format(tmp=tmp_path)}\n"
    assert not out.exists()
