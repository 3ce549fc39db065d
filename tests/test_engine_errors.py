"""Config sanity errors that name the keys; one-line errors with --debug for the traceback; OOM advice."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_run_overrides

from pcmci.cli import main
from pcmci.config import ConfigError, check_dataset, load_config
from pcmci.engine.runtime import resolve_device
from pcmci.engine.train import train
from pcmci.errors import (CheckpointError, CheckpointNotFoundError, CheckpointWriteError, DataError, PcmciError,
                          VideoDecodeError, WeightsError)
from pcmci.model import PCMCI


def test_config_sanity_errors_name_the_keys() -> None:
    cfg = load_config("tiny")
    with pytest.raises(ConfigError, match="multi-label targets but model.multilabel=false"):
        check_dataset(cfg, classes=5, actions=0, multilabel=True)
    cfg.model.multilabel = True
    with pytest.raises(ConfigError, match="single-label targets but model.multilabel=true"):
        check_dataset(cfg, classes=5, actions=0, multilabel=False)
    cfg = load_config("tiny", ["model.head.aux_weight=0.5"])
    with pytest.raises(ConfigError, match="model.head.aux_weight=0.5 .* no action texts"):
        check_dataset(cfg, classes=5, actions=0, multilabel=False)
    with pytest.raises(ConfigError, match="IVC, whose mediator is the label texts.* has 1 text"):
        check_dataset(load_config("tiny"), classes=1, actions=0, multilabel=False)
    with pytest.raises(ConfigError, match="data.test_views=3 must be a positive multiple of data.test_crops=2"):
        load_config("tiny", ["data.test_views=3", "data.test_crops=2"])
    with pytest.raises(ConfigError, match="model.ivc.align_weight=0.1 .* has no 'ivc'"):
        load_config("tiny", ["model.stages=[ich,ici]", "model.ivc.align_weight=0.1"])
    with pytest.raises(ConfigError, match="'optim.accum_steps' = 0; it must be at least 1"):
        load_config("tiny", ["optim.accum_steps=0"])
    for key in ("data.num_workers", "data.decode_timeout"):  # torch's own error / every video "timed out"
        with pytest.raises(ConfigError, match=f"'{key}' = -1(.0)?; it must be at least 0"):
            load_config("tiny", [f"{key}=-1"])
    for value in ("-1", "0", "nan", "inf"):  # torch's optimiser would say "Invalid learning rate" without the key
        with pytest.raises(ConfigError, match="'optim.lr' = .*; it must be a positive number"):
            load_config("tiny", [f"optim.lr={value}"])
        # the Sinkhorn kernel said "log_sinkhorn: eps must be > 0, got nan" once the model ran, naming no key
        with pytest.raises(ConfigError, match="'model.ich.eps' = .*; it must be a positive number"):
            load_config("tiny", [f"model.ich.eps={value}"])
    with pytest.raises(ConfigError, match="'model.ich.iters' = 0; it must be at least 1"):
        load_config("tiny", ["model.ich.iters=0"])
    with pytest.raises(ConfigError, match="override 'model.stages=\\[ich': the value is not valid YAML \\(line 1"):
        load_config("tiny", ["model.stages=[ich"])
    with pytest.raises(ConfigError, match="unknown config key 'optim.lr.x': optim.lr is a value, not a section"):
        load_config("tiny", ["optim.lr.x=3"])


@pytest.mark.parametrize("content, message", [
    (b"preset: tiny\noptim:\n  lr: [1e-3\n", "not valid YAML \\(line 4, column 1: expected ',' or ']'"),
    (b"optim:\n\tlr: 1\n", "not valid YAML \\(line 2, column 1: found character '\\\\t'"),
    (b"\xff\xfe", "not a UTF-8 text file"),
    (b"preset: [tiny]\n", "'preset' must be a preset name"),
])
def test_a_bad_config_file_is_named_with_the_cause(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "run.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=f"config file {path}: {message}"):
        load_config(str(path))


def test_training_refuses_targets_of_the_other_kind(synthetic_set: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="has single-label targets but model.multilabel=true"):
        train(load_config("tiny", tiny_run_overrides(synthetic_set, tmp_path, "model.multilabel=true")))


def test_unexpected_errors_are_one_line_unless_debug(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    def broken(*args, **kwargs):
        raise TypeError("something nobody expected\nsecond line")

    monkeypatch.setattr("pcmci.engine.train.train", broken)
    args = ["train", "tiny", f"run.out_dir={tmp_path}"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err == "pcmci: error: TypeError: something nobody expected (run with --debug for the traceback)"
    with pytest.raises(TypeError, match="something nobody expected"):
        main(["--debug", *args])


def test_project_errors_are_plain_lines_and_other_errors_are_named_as_bugs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """A ``PcmciError`` is the user's to fix: its message alone. A ``RuntimeError`` or ``KeyError`` from inside
    pcmci is a bug, not bad input: it is named with its type and the --debug hint."""
    args = ["train", "tiny", f"run.out_dir={tmp_path}"]
    for raised, expected in [
        (DataError("labels.json:2: not valid JSON"), "pcmci: error: labels.json:2: not valid JSON"),
        (RuntimeError("tensor shapes disagree"),
         "pcmci: error: RuntimeError: tensor shapes disagree (run with --debug for the traceback)"),
        (KeyError("model"), "pcmci: error: KeyError: 'model' (run with --debug for the traceback)"),
    ]:
        def broken(*args, exc=raised, **kwargs):
            raise exc

        monkeypatch.setattr("pcmci.engine.train.train", broken)
        assert main(args) == 1
        assert capsys.readouterr().err.strip() == expected


def test_error_kinds_keep_the_builtin_types_callers_catch() -> None:
    assert issubclass(ConfigError, ValueError) and issubclass(DataError, ValueError)
    assert issubclass(CheckpointError, RuntimeError) and issubclass(VideoDecodeError, RuntimeError)
    assert issubclass(CheckpointNotFoundError, FileNotFoundError) and issubclass(CheckpointWriteError, OSError)
    assert all(issubclass(e, PcmciError) for e in (ConfigError, DataError, CheckpointError, VideoDecodeError,
                                                    CheckpointNotFoundError, CheckpointWriteError, WeightsError))


def test_out_of_memory_names_the_batch_size_and_suggests_accumulation(
        synthetic_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def out_of_memory(self, frames):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(PCMCI, "forward", out_of_memory)
    cfg = load_config("tiny", tiny_run_overrides(synthetic_set, tmp_path, "optim.accum_steps=2"))
    with pytest.raises(RuntimeError, match=r"optim.batch_size=6 .* raise optim.accum_steps .* stays 12"):
        train(cfg)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_cuda_without_it_is_a_one_line_error(capsys: pytest.CaptureFixture) -> None:
    """Profiling moved the model to a device nobody checked: torch's "Found no NVIDIA driver", named as a bug."""
    with pytest.raises(ConfigError, match="device 'cuda' asked for, but CUDA is not available"):
        resolve_device("cuda")
    assert main(["--quiet", "profile", "tiny", "--device", "cuda", "--out", "/nonexistent/never"]) == 1
    assert capsys.readouterr().err == ("pcmci: error: device 'cuda' asked for, but CUDA is not available on this "
                                       "machine (use cpu or auto)\n")


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_a_device_torch_does_not_know_is_a_one_line_error(command: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    """``--device nope`` reached ``torch.device``: its RuntimeError, reported as a bug."""
    with pytest.raises(ConfigError, match=r"^device 'cuda0' is not one of auto, cpu, cuda, cuda:N$"):
        resolve_device("cuda0")
    (tmp_path / "v.mp4").write_bytes(b"")  # predict checks its video exists before anything else
    video = [str(tmp_path / "v.mp4")] if command == "predict" else []
    assert main(["--quiet", command, str(tmp_path / "checkpoint.pt"), *video, "--device", "nope"]) == 1
    assert capsys.readouterr().err == "pcmci: error: device 'nope' is not one of auto, cpu, cuda, cuda:N\n"
