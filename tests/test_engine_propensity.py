"""IVC's training-time backdoor weights (pcmci.engine.propensity) against loops over counts."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from pcmci.engine.propensity import propensity_weights, reference_config, stratified_folds


def _counts_world(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """3 classes, a static cue ``s`` (3 values) that equals the class with probability 0.8 (a confounder)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, 600)
    s = np.where(rng.random(600) < 0.8, y, rng.integers(0, 3, 600))
    return y, s


def test_weights_match_a_float64_loop() -> None:
    """``w_i = min(P(y_i)/P(y_i|s_i), cap)`` rescaled to mean 1 inside each class, written out as loops."""
    y, s = _counts_world()
    p_y_given_s = np.array([np.mean(y[s == s[i]] == y[i]) for i in range(len(y))])
    got = propensity_weights(torch.tensor(p_y_given_s), torch.tensor(y), max_weight=4.0).numpy()
    want = np.empty(len(y))
    for i in range(len(y)):
        want[i] = min(np.mean(y == y[i]) / p_y_given_s[i], 4.0)
    for c in range(3):
        want[y == c] /= want[y == c].mean()
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_exact_propensities_make_the_static_cue_independent_of_the_label() -> None:
    """With the true ``P(y|s)`` and no cap the weighted data have ``P_w(s|y) = P(s)`` for every class: the
    backdoor's interventional population (a confounder that no longer tells the class). Exact up to float64
    rounding of sums over 600 terms (~1e-13)."""
    y, s = _counts_world(1)
    p_y_given_s = np.array([np.mean(y[s == s[i]] == y[i]) for i in range(len(y))])
    w = propensity_weights(torch.tensor(p_y_given_s), torch.tensor(y), max_weight=1e9).numpy()
    p_s = np.array([np.mean(s == v) for v in range(3)])
    for c in range(3):
        weighted = np.array([w[(y == c) & (s == v)].sum() for v in range(3)]) / w[y == c].sum()
        np.testing.assert_allclose(weighted, p_s, atol=1e-12)
    assert np.mean(s == y) > 0.8  # it was a confounder before the weights


def test_a_cause_present_in_every_clip_of_its_class_moves_no_weight() -> None:
    """A still object that defines its class gives every clip of the class the same ``P(y|s)``, so the class's
    weights stay 1: reweighting never teaches the model to ignore it."""
    targets = torch.tensor([0] * 5 + [1] * 5 + [2] * 4)
    p = torch.tensor([0.97] * 5 + [0.97] * 5 + [0.9, 0.2, 0.9, 0.9])
    w = propensity_weights(p, targets, max_weight=10.0)
    torch.testing.assert_close(w[:10], torch.ones(10, dtype=torch.float64))
    assert w[11] > 1.5 and w[10] < 1.0  # the clip whose frames point elsewhere gains weight within its class


def test_folds_are_seeded_and_hold_every_class() -> None:
    targets = [i % 7 for i in range(50)]
    folds = stratified_folds(targets, 2, seed=3)
    assert folds == stratified_folds(targets, 2, seed=3) and folds != stratified_folds(targets, 2, seed=4)
    for k in range(2):
        assert {t for t, f in zip(targets, folds) if f == k} == set(range(7))
    assert abs(Counter(folds)[0] - Counter(folds)[1]) <= 1
    assert sorted(Counter(stratified_folds(list(range(6)), 2, seed=0)).values()) == [3, 3]  # one clip per class
    from pcmci.config import ConfigError

    with pytest.raises(ConfigError, match="backdoor.reference_folds=2 needs at least 2 training clips"):
        stratified_folds([0], 2, seed=0)


def test_the_backdoor_keys_formerly_under_model_ivc_still_load(caplog: pytest.LogCaptureFixture,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Overrides, YAML files and saved configs that name ``model.ivc.reweight`` (and its siblings) set the
    ``backdoor`` section, with one warning per former key; a true ``reweight`` there only ever took effect with IVC,
    so it reads as ``None``."""
    import pcmci.config
    from pcmci.config import from_dict, load_config, reweights, to_dict

    monkeypatch.setattr(pcmci.config, "_warned", set())

    cfg = load_config("tiny", ["model.ivc.reweight=false", "model.ivc.max_weight=4", "model.ivc.weighting=sample"])
    assert (cfg.backdoor.reweight, cfg.backdoor.max_weight, cfg.backdoor.weighting) == (False, 4.0, "sample")
    for stages, expected in (("[]", False), ("[ivc]", True), ("[ich,ici]", False)):
        saved = to_dict(load_config("tiny", [f"model.stages={stages}"]))
        former = {**saved, "model": {**saved["model"], "ivc": {**saved["model"]["ivc"], "reweight": True}}}
        del former["backdoor"]
        assert reweights(from_dict(former)) is expected and from_dict(former).backdoor.reweight is None
        assert reweights(load_config("tiny", [f"model.stages={stages}", "backdoor.reweight=true"]))
    assert caplog.text.count("config key 'model.ivc.reweight' is now 'backdoor.reweight'") == 1


def test_reference_is_the_baseline_on_one_frame_or_on_the_clip() -> None:
    from pcmci.config import load_config

    cfg = load_config("tiny")
    ref = reference_config(cfg)
    assert ref.model.stages == [] and ref.model.timesformer.frames == 1 and cfg.model.timesformer.frames == 8
    clip = reference_config(load_config("tiny", ["backdoor.reference=clip"]))
    assert clip.model.stages == [] and clip.model.timesformer.frames == 8
    assert reference_config(load_config("tiny", ["model.timesformer.style_mix=0.5"])).model.timesformer.style_mix == 0


@pytest.mark.slow
@pytest.mark.parametrize("reference", ["frame", "clip"])
def test_clip_weights_on_a_synthetic_set(reference: str, synthetic_set: Path) -> None:
    """End to end on the tiny set: one weight per clip, finite, mean 1 within each class."""
    from pcmci.config import load_config
    from pcmci.engine.propensity import clip_weights
    from pcmci.engine.runtime import make_dataset

    cfg = load_config("tiny", [f"data.manifest={synthetic_set}", "backdoor.reference_epochs=1",
                               "optim.batch_size=6", "data.cache_frames=true", f"backdoor.reference={reference}"])
    dataset = make_dataset(cfg, "train", train=True, labels=None)
    w = clip_weights(cfg, dataset, torch.device("cpu"), progress=False)
    targets = torch.tensor([r.target for r in dataset.records])
    assert w.shape == (len(dataset),) and torch.isfinite(w).all() and (w > 0).all()
    for c in targets.unique():
        torch.testing.assert_close(w[targets == c].mean(), torch.tensor(1.0, dtype=torch.float64))
    assert dataset.train  # the read-out switched the sampling to centre frames and back


@pytest.mark.slow
@pytest.mark.parametrize(("weighting", "switches"), [
    ("loss", ["model.stages=[ivc]"]), ("sample", ["model.stages=[ivc]"]),
    ("loss", ["model.stages=[]", "backdoor.reweight=true"]), (None, ["model.stages=[]"]),
    (None, ["model.stages=[ivc]", "backdoor.reweight=false"])])
def test_weighting_either_weighs_the_loss_or_resamples_the_epoch(weighting: str | None, switches: list[str],
                                                                  synthetic_set: Path, tmp_path: Path,
                                                                  monkeypatch) -> None:
    """``loss``: every batch's CE gets its clips' weights and the epoch is a plain shuffle; ``sample``: the epoch
    order is drawn in proportion to the weights and the CE is unweighted; with the IVC stage by default, without it
    when asked (the weighted baseline), and neither without the stage by default or when switched off (None)."""
    import pcmci.engine.train as train_module
    from pcmci.config import load_config
    from pcmci.model.pcmci import PCMCI

    fixed = torch.linspace(0.1, 3.0, 24, dtype=torch.float64)
    monkeypatch.setattr(train_module, "clip_weights", lambda cfg, dataset, *args, **kwargs: fixed[: len(dataset)])
    orders, losses = [], []
    real_loader, real_loss = train_module.make_loader, PCMCI.loss

    def loader(*args, weights=None, **kwargs):
        orders.append(weights)
        return real_loader(*args, weights=weights, **kwargs)

    def loss(self, out, target, steps=None, weights=None):
        losses.append(weights)
        return real_loss(self, out, target, steps, weights)

    monkeypatch.setattr(train_module, "make_loader", loader)
    monkeypatch.setattr(PCMCI, "loss", loss)
    cfg = load_config("tiny", [f"data.manifest={synthetic_set}", f"run.out_dir={tmp_path}", "optim.epochs=1",
                               "optim.batch_size=6", "run.progress=false", "model.dictionaries.clips=12",
                               *switches, f"backdoor.weighting={weighting or 'loss'}"])
    train_module.train(cfg)
    n = len(orders[0]) if orders[0] is not None else None
    if weighting is None:
        assert orders == [None] and losses and all(w is None for w in losses)
    elif weighting == "sample":
        assert n is not None and torch.equal(orders[0], fixed[:n]) and all(w is None for w in losses)
    else:
        assert orders == [None] and losses and all(w is not None and w.shape[0] <= 6 for w in losses)
        assert all(bool(torch.isin(w.cpu().double(), fixed).all()) for w in losses)
