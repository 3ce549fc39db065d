"""Faults and resume: a real SIGKILL mid-epoch, reuse of an out_dir, configs that changed between runs."""
from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch
from conftest import tiny_run_overrides
from engine_runs import assert_same_run, kill_at_first_step_of_epoch, one_thread, pcmci_command
from former_names import with_former_config_keys, with_former_names

from pcmci.cli import main
from pcmci.config import ConfigError, load_config
from pcmci.engine.checkpoint import load_checkpoint, save_checkpoint
from pcmci.engine.run_state import config_changes
from pcmci.engine.train import train


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_reproduces_the_run(synthetic_set: Path, tiny_run: Path, tmp_path: Path) -> None:
    overrides = tiny_run_overrides(synthetic_set, tmp_path)
    status = kill_at_first_step_of_epoch(pcmci_command("train", "tiny", *overrides), tmp_path / "metrics.jsonl", epoch=1)
    assert status == -signal.SIGKILL
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["epoch"] == 0 and set(state["rng"]) == {"torch", "cuda", "numpy", "python"}
    with one_thread():
        train(load_config("tiny", overrides), resume=True)
    assert_same_run(tmp_path, tiny_run, atol=1e-5)


def test_out_dir_with_a_checkpoint_is_reused_only_with_resume_or_overwrite(
        synthetic_set: Path, tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = ["train", "tiny", *tiny_run_overrides(synthetic_set, tiny_run)]
    assert main(run) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "already holds a checkpoint" in err and "--resume" in err and "--overwrite" in err
    assert main([*run, "--resume", "--overwrite"]) == 1
    assert "not both" in capsys.readouterr().err


def test_resume_names_every_changed_key_and_allows_only_safe_ones(synthetic_set: Path, tiny_run: Path,
                                                                    tmp_path: Path) -> None:
    saved = load_checkpoint(tiny_run / "checkpoint.pt")["config"]
    cfg = load_config("tiny", tiny_run_overrides(synthetic_set, tiny_run, "optim.lr=0.5", "model.ich.eps=0.2",
                                                 "optim.epochs=5", "run.compile=false", "data.num_workers=1"))
    with pytest.raises(ConfigError) as err:
        train(cfg, resume=True)
    message = str(err.value)
    assert "optim.lr: 0.001 -> 0.5" in message and "model.ich.eps: 0.1 -> 0.2" in message
    assert "optim.epochs" not in message and "run.compile" not in message and "data.num_workers" not in message
    assert config_changes(saved, saved) == []


def _copy_run(run: Path, state: dict, out: Path) -> None:
    """``run``'s metrics and the checkpoint ``state`` in a new ``out``, its config pointing there."""
    out.mkdir()
    (out / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text())
    save_checkpoint(out / "checkpoint.pt", {**state, "config": {**state["config"], "run": {
        **state["config"]["run"], "out_dir": str(out)}}})


def test_resume_can_extend_a_run(synthetic_set: Path, tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "extended"
    state = load_checkpoint(tiny_run / "checkpoint.pt")
    _copy_run(tiny_run, state, out)
    train(load_config("tiny", tiny_run_overrides(synthetic_set, out, "optim.epochs=3")), resume=True)
    extended = load_checkpoint(out / "checkpoint.pt")
    assert extended["epoch"] == 2 and extended["config"]["optim"]["epochs"] == 3
    assert not torch.equal(extended["model"]["video.proj.weight"], state["model"]["video.proj.weight"])


def test_a_checkpoint_with_the_former_stage_names_resumes_as_the_current_one(synthetic_set: Path, tiny_run: Path,
                                                                               tmp_path: Path) -> None:
    """A checkpoint written before the stages' layers got role names (model keys ``ivc.w_q`` ... , the optimiser
    state by parameter index) and before the backdoor's config keys left ``model.ivc`` continues the run bit for bit
    as the same checkpoint under the current names."""
    state = load_checkpoint(tiny_run / "checkpoint.pt")
    former = with_former_names(state["model"], "tiny_run")
    assert "ivc.w_q.weight" in former and "ivc.w_q.weight" not in state["model"]
    former_config = with_former_config_keys(state["config"])
    assert "backdoor" not in former_config and former_config["model"]["ivc"]["reweight"] is True
    for name, model, config in (("current", state["model"], state["config"]), ("former", former, former_config)):
        _copy_run(tiny_run, {**state, "model": model, "config": config}, tmp_path / name)
        with one_thread():
            train(load_config("tiny", tiny_run_overrides(synthetic_set, tmp_path / name, "optim.epochs=3")),
                  resume=True)
    assert_same_run(tmp_path / "former", tmp_path / "current", atol=0)
