"""Safe checkpoints: no pickled code is ever run, exports round-trip, unwritable folders give one clear error."""
from __future__ import annotations

import errno
import re
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import tiny_run_overrides
from former_names import pre_split_formats, with_former_names

from pcmci.cli import main
from pcmci.config import load_config
from pcmci.engine.checkpoint import CheckpointWriteError, load_checkpoint, save_checkpoint
from pcmci.engine.evaluate import load_model
from pcmci.engine.export import export_checkpoint
from pcmci.engine.train import train
from pcmci.errors import ConfigError, DataError, WeightsError
from pcmci.model import PCMCI


class _Payload:
    """Unpickling this calls ``Path.touch`` on a marker file: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_a_malicious_pickle_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"model": {}, "config": {}, "epoch": 0, "payload": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(RuntimeError, match="refusing to load it"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_training_checkpoints_are_plain_data(tiny_run: Path) -> None:
    state = torch.load(tiny_run / "checkpoint.pt", weights_only=True)
    assert state["labels"]["classes"] and isinstance(state["config"]["optim"]["lr"], float)
    assert state["world"] == 1 and state["epoch"] == 1


def test_checkpoints_and_metrics_keep_the_format_the_former_code_wrote(tiny_run: Path) -> None:
    """The training loop's split into build_run / train_one_epoch / MetricsSink changed no file format: the same
    checkpoint entries, optimiser state over the same parameters in the same order, the same metrics records."""
    formats = pre_split_formats()
    state, former = load_checkpoint(tiny_run / "checkpoint.pt"), formats["checkpoint"]
    assert list(state) == former["keys"] and list(state["optimizer"]) == former["optimizer"]
    assert len(state["optimizer"]["param_groups"][0]["params"]) == former["params"]
    assert list(state["rng"]) == former["rng"] and list(state["labels"]) == former["labels"]
    with_former_names(state["model"], "tiny_run")  # every tensor where the former code put it, with its shape
    records = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert {tuple(r) for r in records} == {tuple(formats["metrics"]["step"]), tuple(formats["metrics"]["epoch"])}


def test_export_then_from_pretrained_gives_identical_outputs(tiny_run: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    assert main(["--quiet", "export", str(tiny_run / "checkpoint.pt"), "--out", str(tmp_path / "export")]) == 0
    assert "model.safetensors" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["config.json", "labels.json", "model.safetensors"]
    assert json.loads((tmp_path / "export" / "labels.json").read_text())["classes"]
    trained, _ = load_model(tiny_run / "checkpoint.pt", torch.device("cpu"))
    loaded = PCMCI.from_pretrained(tmp_path / "export")
    assert not loaded.training and loaded.dictionaries_ready
    frames = torch.rand(2, 8, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(loaded(frames)["logits"], trained(frames)["logits"])
    weights = (tmp_path / "export" / "model.safetensors").read_bytes()
    argv = ["--quiet", "export", str(tiny_run / "checkpoint.pt"), "--out", str(tmp_path / "export")]
    assert main(argv) == 1 and "holds an export already (model.safetensors, config.json" in capsys.readouterr().err
    assert (tmp_path / "export" / "model.safetensors").read_bytes() == weights
    assert main([*argv, "--overwrite"]) == 0
    with pytest.raises(FileNotFoundError, match="missing model.safetensors"):
        (tmp_path / "export" / "model.safetensors").unlink()
        PCMCI.from_pretrained(tmp_path / "export")


def _edit_export(export: Path, to: Path, name: str, change) -> Path:
    """A copy of ``export`` at ``to`` whose JSON file ``name`` is ``change(its content)``."""
    shutil.copytree(export, to)
    (to / name).write_text(json.dumps(change(json.loads((to / name).read_text()))))
    return to


def test_from_pretrained_refuses_labels_that_differ_from_the_exported_ones(tiny_run: Path, tmp_path: Path) -> None:
    """A reordered or renamed labels.json loaded silently and named every prediction wrongly; the export now records
    the names in model.safetensors. An export written before that (no names recorded) loads as before."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    export = tmp_path / "export"
    export_checkpoint(tiny_run / "checkpoint.pt", export)
    classes = json.loads((export / "labels.json").read_text())["classes"]
    with safe_open(str(export / "model.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["classes"]) == classes
    swapped = _edit_export(export, tmp_path / "swapped", "labels.json", lambda c: {**c, "classes": c["classes"][::-1]})
    with pytest.raises(WeightsError) as refused:
        PCMCI.from_pretrained(swapped)
    assert str(refused.value) == (
        f"{swapped / 'labels.json'} does not list the classes {swapped / 'model.safetensors'} was exported with: "
        f"classes[0] is {classes[-1]!r}, exported {classes[0]!r} ({len(classes)} classes against {len(classes)}); "
        "restore the exported labels.json")
    fewer = _edit_export(export, tmp_path / "fewer", "labels.json", lambda c: {**c, "actions": c["actions"][:-1]})
    actions = json.loads((export / "labels.json").read_text())["actions"]
    with pytest.raises(WeightsError, match=re.escape(f"actions[{len(actions) - 1}] is absent, exported "
                                                     f"{actions[-1]!r} ({len(actions) - 1} actions against")):
        PCMCI.from_pretrained(fewer)
    save_file(load_file(swapped / "model.safetensors"), swapped / "model.safetensors", metadata={"format": "pt"})
    assert PCMCI.from_pretrained(swapped).classes == classes[::-1]


def test_an_export_that_does_not_fit_together_is_one_error(tiny_run: Path, tmp_path: Path) -> None:
    """Weights of another config were load_state_dict's multi-line RuntimeError, a config.json list an
    AttributeError, ``"actions": "abc"`` three actions; a CLIP file named in config.json but gone refused an export
    that holds CLIP's tensors."""
    export = tmp_path / "export"
    export_checkpoint(tiny_run / "checkpoint.pt", export)
    wider = _edit_export(export, tmp_path / "wider", "config.json",
                         lambda c: {**c, "model": {**c["model"], "timesformer": {**c["model"]["timesformer"],
                                                                                 "width": 128}}})
    with pytest.raises(WeightsError) as refused:
        PCMCI.from_pretrained(wider)
    assert str(refused.value) == (
        f"{wider / 'model.safetensors'} does not fit the model {wider / 'config.json'} and labels.json build: size "
        "mismatch for video.cls_token: copying a param with shape torch.Size([1, 1, 64]) from checkpoint, the shape "
        "in current model is torch.Size([1, 1, 128])")
    (wider / "config.json").write_text("[1]")
    with pytest.raises(ConfigError, match=re.escape(f"{wider / 'config.json'}: expected a JSON object (the run's "
                                                    "config), got a list")):
        PCMCI.from_pretrained(wider)
    letters = _edit_export(export, tmp_path / "letters", "labels.json", lambda c: {**c, "actions": "abc"})
    with pytest.raises(DataError, match=re.escape(f"{letters / 'labels.json'}: 'actions' must be a list of strings")):
        PCMCI.from_pretrained(letters)
    moved = _edit_export(export, tmp_path / "moved", "config.json",
                         lambda c: {**c, "model": {**c["model"], "clip": {**c["model"]["clip"],
                                                                         "pretrained": str(tmp_path / "gone.pt")}}})
    frames = torch.rand(1, 8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(PCMCI.from_pretrained(moved)(frames)["logits"],
                           PCMCI.from_pretrained(export)(frames)["logits"])


def test_a_full_disk_keeps_the_last_good_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(2)}, "config": {}, "epoch": 0})
    (tmp_path / ".checkpoint.pt.killed.tmp").write_bytes(b"half a checkpoint")  # left by a kill mid-write

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(CheckpointWriteError, match="No space left on device .the previous checkpoint is unchanged"):
        save_checkpoint(path, {"model": {"w": torch.zeros(2)}, "config": {}, "epoch": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    assert load_checkpoint(path)["epoch"] == 0


def test_an_unwritable_out_dir_is_one_clear_error(synthetic_set: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the run folder should be")
    with pytest.raises(CheckpointWriteError, match="run.out_dir=.* is not writable"):
        train(load_config("tiny", tiny_run_overrides(synthetic_set, blocker / "run")))
    assert main(["train", "tiny", *tiny_run_overrides(synthetic_set, blocker / "run")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("pcmci: error: run.out_dir=") and "\n" not in err


def _without(d: dict, key: str) -> dict:
    return {k: v for k, v in d.items() if k != key}


@pytest.mark.parametrize("name, change, message", [
    ("no-labels", lambda s: _without(s, "labels"), "lacks 'labels'"),
    ("no-classes", lambda s: {**s, "labels": {"classes": [], "actions": []}}, "'labels' is not {'classes'"),
    ("labels-list", lambda s: {**s, "labels": ["a"]}, "'labels' is not {'classes'"),
    ("config-str", lambda s: {**s, "config": "hello"}, "'config' is not a dict"),
    ("model-str", lambda s: {**s, "model": "x"}, "'model' is not a dict of tensors"),
    ("model-empty", lambda s: {**s, "model": {}}, "its weights do not fit the model .*Missing key"),
    ("class-dropped", lambda s: {**s, "labels": {**s["labels"], "classes": s["labels"]["classes"][1:]}},
     "its weights do not fit the model .*size mismatch"),
    ("epoch-str", lambda s: {**s, "epoch": "x"}, "'epoch' is not an integer"),
])
def test_a_checkpoint_with_bad_contents_is_refused_in_one_line(tiny_run: Path, tmp_path: Path, capsys, name,
                                                               change, message) -> None:
    """A file that unpickles but whose entries are not what ``pcmci train`` writes: one line naming the file and the
    entry, from eval (and so from predict, diagnose, export, which load through the same function)."""
    state = torch.load(tiny_run / "checkpoint.pt", weights_only=True)
    path = tmp_path / f"{name}.pt"
    torch.save(change(state), path)
    assert main(["--quiet", "eval", str(path), "--out", str(tmp_path / "eval")]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"pcmci: error: checkpoint {path}")
    assert re.search(message, err), err


def test_resume_from_a_checkpoint_that_cannot_restore_the_run_says_so(tiny_run: Path, tmp_path: Path, capsys,
                                                                      synthetic_set: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    state = torch.load(tiny_run / "checkpoint.pt", weights_only=True)
    torch.save({**state, "optimizer": {}}, out / "checkpoint.pt")
    code = main(["--quiet", "train", "tiny", *tiny_run_overrides(synthetic_set, out), "--resume"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith(f"pcmci: error: --resume: {out / 'checkpoint.pt'} cannot restore this run")
