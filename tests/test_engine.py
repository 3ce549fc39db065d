"""Training, resume, evaluation and checkpoints on a small synthetic set."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, confusion_matrix as sk_confusion, top_k_accuracy_score

import pcmci.engine.train as train_module
from pcmci.config import load_config
from pcmci.engine.checkpoint import load_checkpoint, save_checkpoint
from pcmci.engine.evaluate import evaluate, load_model, predict, split_metrics
from pcmci.engine.metrics import average_precision, confusion_matrix, mean_average_precision, topk_accuracy
from pcmci.engine.runtime import make_dataset
from pcmci.engine.train import cosine_with_warmup, train
from pcmci.engine.plots import read_metrics


def tiny_cfg(manifest: Path, out: Path, *overrides: str):
    return load_config("tiny", [f"data.manifest={manifest}", f"run.out_dir={out}", "optim.epochs=2",
                                "optim.batch_size=6", "run.progress=false", "model.dictionaries.clips=12", *overrides])


def test_average_precision_equals_sklearn() -> None:
    rng = np.random.default_rng(0)
    for trial in range(300):
        n = int(rng.integers(2, 60))
        y = rng.random(n) < 0.3
        if not y.any():
            continue
        s = rng.integers(0, 4, n).astype(float) if trial % 2 else rng.random(n)
        assert average_precision(s, y) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_map_topk_confusion_equal_sklearn() -> None:
    rng = np.random.default_rng(1)
    scores = rng.random((80, 6))
    labels = rng.integers(0, 6, 80)
    onehot = np.eye(6)[labels]
    assert mean_average_precision(scores, labels) == pytest.approx(
        average_precision_score(onehot, scores, average="macro"), abs=1e-12)
    for k in (1, 3, 5):
        assert topk_accuracy(scores, labels, k) == pytest.approx(
            top_k_accuracy_score(labels, scores, k=k, labels=range(6)))
    np.testing.assert_array_equal(confusion_matrix(scores.argmax(1), labels, 6),
                                  sk_confusion(labels, scores.argmax(1), labels=range(6)))
    multi = rng.random((40, 5)) < 0.3
    multi[0] = True
    ms = rng.random((40, 5))
    assert mean_average_precision(ms, multi) == pytest.approx(average_precision_score(multi, ms, average="macro"))


def test_cosine_schedule_warms_up_then_decays() -> None:
    f = cosine_with_warmup(total_steps=100, warmup_steps=10)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5) and f(100) == pytest.approx(0.0)


@pytest.mark.parametrize("flood", [0.0, 0.5, 5.0])
def test_flooding_descends_above_the_level_and_ascends_below(flood: float) -> None:
    """``|L - b| + b``: the gradient is ``sign(L - b) dL``. The reference is autograd on the plain loss of a
    model with one linear layer, scaled by that sign (b = 0: plain descent)."""
    torch.manual_seed(0)

    class Linear(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(6, 3)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"logits": self.fc(x.flatten(1))}

        def loss(self, out, target, steps, weights):
            return torch.nn.functional.cross_entropy(out["logits"], target)

    model, x, y = Linear(), torch.randn(4, 6), torch.tensor([0, 1, 2, 1])
    _, loss = train_module.forward_backward(model, model, x, y, torch.zeros(4, 0), 0.5, False, flood=flood)
    got = model.fc.weight.grad.clone()
    model.zero_grad()
    torch.nn.functional.cross_entropy(model.fc(x), y).backward()
    sign = 1.0 if float(loss.detach()) > flood or flood == 0 else -1.0
    assert flood != 5.0 or sign == -1.0  # the loss of 3 classes at init is about log 3 < 5: this case ascends
    torch.testing.assert_close(got, 0.5 * sign * model.fc.weight.grad, rtol=1e-6, atol=1e-7)


def test_checkpoint_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(2)}, "config": {}, "epoch": 0})

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"model": {"w": torch.zeros(2)}, "config": {}, "epoch": 1})
    monkeypatch.undo()
    state = load_checkpoint(path)
    assert state["epoch"] == 0 and torch.equal(state["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]


def test_checkpoint_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "none.pt")
    with pytest.raises(FileNotFoundError, match="checkpoint is a folder, not a file"):
        load_checkpoint(tmp_path)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="unreadable or corrupt"):
        load_checkpoint(tmp_path / "bad.pt")


def test_train_eval_and_resume_reproduce_the_uninterrupted_run(synthetic_set: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    full = tiny_cfg(synthetic_set, tmp_path / "full")
    ckpt = train(full)
    steps_full, epochs_full = read_metrics(tmp_path / "full" / "metrics.jsonl")
    assert len(epochs_full) == 2 and all(np.isfinite(r["loss"]) for r in steps_full)

    saves = []
    real_save = train_module.save_checkpoint

    def crash_mid_second_epoch(path, state):
        real_save(path, state)
        saves.append(state["epoch"])
        monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", crash)

    real_clip = torch.nn.utils.clip_grad_norm_
    calls = []

    def crash(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated crash in the second step of epoch 1, after one logged step")
        return real_clip(*args, **kwargs)

    monkeypatch.setattr(train_module, "save_checkpoint", crash_mid_second_epoch)
    part = tiny_cfg(synthetic_set, tmp_path / "part")
    with pytest.raises(KeyboardInterrupt):
        train(part)
    monkeypatch.undo()
    assert saves == [0] and load_checkpoint(tmp_path / "part" / "checkpoint.pt")["epoch"] == 0
    assert read_metrics(tmp_path / "part" / "metrics.jsonl")[0][-1]["epoch"] == 1
    train(part, resume=True)
    steps_part, epochs_part = read_metrics(tmp_path / "part" / "metrics.jsonl")
    assert [r["step"] for r in steps_part] == [r["step"] for r in steps_full]
    np.testing.assert_allclose([r["loss"] for r in steps_part], [r["loss"] for r in steps_full], rtol=1e-5)
    a, _ = load_model(ckpt, torch.device("cpu"))
    b, _ = load_model(tmp_path / "part" / "checkpoint.pt", torch.device("cpu"))
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5, msg=name)

    results = evaluate(ckpt, ["test_id", "test_ood"], tmp_path / "eval", progress=False)
    for split in ("test_id", "test_ood"):
        assert (tmp_path / "eval" / f"confusion_{split}.png").stat().st_size > 1000
        saved = json.loads((tmp_path / "eval" / f"eval_{split}.json").read_text())
        assert saved["acc"] == pytest.approx(results[split]["acc"])
        assert 0.0 <= saved["acc"] <= saved["top5"] <= 1.0
        assert np.array(saved["confusion"]).sum() == saved["videos"] > 0
        assert "| class | videos | acc | AP |" in (tmp_path / "eval" / f"eval_{split}.md").read_text()


def test_eval_metrics_match_sklearn_on_model_scores(synthetic_set: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(synthetic_set, tmp_path, "optim.epochs=1")
    ckpt = train(cfg)
    model, cfg = load_model(ckpt, torch.device("cpu"))
    data = make_dataset(cfg, "test_ood", train=False, labels=None)
    scores, labels = predict(model, torch.utils.data.DataLoader(data, batch_size=4), torch.device("cpu"), progress=False)
    np.testing.assert_allclose(scores.sum(1), 1.0, rtol=1e-5)
    metrics = split_metrics(scores, labels, model.classes)
    present = sorted(set(labels.tolist()))
    onehot = np.eye(len(model.classes))[labels][:, present]
    assert metrics["map"] == pytest.approx(average_precision_score(onehot, scores[:, present], average="macro"))
    assert metrics["acc"] == pytest.approx(float((scores.argmax(1) == labels).mean()))
