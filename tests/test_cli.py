"""CLI: each kind of bad input stops with one clear line naming the cause; the happy paths print results."""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import get_args

import av
import numpy as np
import pytest

from pcmci.cli import build_parser, main
from pcmci.config import DatasetName
from pcmci.data.formats import READERS


def run_cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(["--quiet", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write_short_video(path: Path, frames: int) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libvpx-vp9", rate=8)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            img = np.full((64, 64, 3), 40 * i, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        container.mux(stream.encode())


def broken_set(synthetic_set: Path, tmp_path: Path, kind: str) -> Path:
    """A copy of the synthetic train split where the first video is replaced by a bad one."""
    src = synthetic_set.parent
    shutil.copy(src / "labels.json", tmp_path / "labels.json")
    rows = [r for r in csv.DictReader(synthetic_set.open()) if r["split"] == "train"][:6]
    for r in rows:
        shutil.copy(src / r["path"], tmp_path / Path(r["path"]).name)
        r["path"] = Path(r["path"]).name
    bad = tmp_path / rows[0]["path"]
    if kind == "missing":
        bad.unlink()
    elif kind == "corrupt":
        bad.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "short":
        bad.unlink()
        write_short_video(bad, 3)
    with (tmp_path / "manifest.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return tmp_path / "manifest.csv"


@pytest.mark.parametrize("kind, cause", [
    ("missing", "not found"),
    ("corrupt", "corrupt"),
    ("short", "has 3 frames, fewer than the 8 requested"),
])
def test_bad_videos_give_one_clear_error(synthetic_set, tmp_path, capsys, kind: str, cause: str) -> None:
    manifest = broken_set(synthetic_set, tmp_path, kind)
    bad_name = next(csv.DictReader(manifest.open()))["path"]
    code, _, err = run_cli(capsys, "train", "tiny", f"data.manifest={manifest}", f"run.out_dir={tmp_path / 'run'}",
                           "optim.epochs=1", "optim.batch_size=3")
    assert code == 1
    line = err.strip().splitlines()[-1]
    assert line.startswith("pcmci: error: cannot decode") and bad_name in line and cause in line
    assert "Traceback" not in err


def test_unknown_config_key_and_stage_are_clear_errors(capsys) -> None:
    code, _, err = run_cli(capsys, "train", "tiny", "optim.learning_rate=0.1")
    assert code == 1 and "unknown config key 'optim.learning_rate'" in err
    code, _, err = run_cli(capsys, "train", "tiny", "model.stages=[ich,backdoor]")
    assert code == 1 and "unknown stage name(s) ['backdoor']" in err and "valid stages" in err
    code, _, err = run_cli(capsys, "eval", "/nonexistent/checkpoint.pt")
    assert code == 1 and "checkpoint not found" in err


def test_train_eval_predict_synth_commands(synthetic_set, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    code, stdout, _ = run_cli(capsys, "train", "tiny", f"data.manifest={synthetic_set}", f"run.out_dir={out}",
                              "optim.epochs=1", "optim.batch_size=8", "model.stages=[ivc]")
    assert code == 0 and "checkpoint:" in stdout
    code, stdout, _ = run_cli(capsys, "eval", str(out / "checkpoint.pt"), "--splits", "test_ood", "--json")
    metrics = json.loads(stdout)
    assert code == 0 and set(metrics) == {"test_ood"} and 0 <= metrics["test_ood"]["acc"] <= 1
    video = synthetic_set.parent / next(csv.DictReader(synthetic_set.open()))["path"]
    code, stdout, _ = run_cli(capsys, "predict", str(out / "checkpoint.pt"), str(video), "--topk", "3")
    probs = [float(line.split()[0]) for line in stdout.strip().splitlines()]
    assert code == 0 and len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-6
    code, stdout, _ = run_cli(capsys, "synth", "--out", str(tmp_path / "syn"), "--train", "6", "--test", "6",
                              "--codec", "mjpeg")
    assert code == 0 and (tmp_path / "syn" / "manifest.csv").is_file()


def test_dataset_names_have_one_source() -> None:
    """The config's ``Literal`` names the datasets; the adapters and the command line follow it."""
    names = get_args(DatasetName)
    assert set(names) == {"manifest", *READERS}
    data = build_parser()._subparsers._group_actions[0].choices["data"]
    for tool in ("inspect", "prepare"):
        parser = data._subparsers._group_actions[0].choices[tool]
        assert next(a for a in parser._actions if a.dest == "dataset").choices == names


def test_every_command_has_a_handler_and_help(capsys) -> None:
    commands = build_parser()._subparsers._group_actions[0].choices
    for name, parser in commands.items():
        tools = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        for sub in tools[0].choices.values() if tools else [parser]:
            assert callable(sub.get_default("func")), name
        with pytest.raises(SystemExit) as done:
            main([name, "--help"])
        assert done.value.code == 0 and "usage: pcmci " + name in capsys.readouterr().out


def test_help_imports_no_command_module_and_profiling_warns_nothing() -> None:
    """``pcmci --help`` builds no command's arguments, so it imports none of torch, triton, fvcore, open_clip (it
    took 9 s and printed fvcore's torch.jit.script deprecation before), nor does ``pcmci synth --help`` (3.3 s:
    ``pcmci.data`` imported its torch datasets eagerly); importing the profiler, which every profiling command does,
    raises no FutureWarning. A fresh interpreter, since this one has them all loaded."""
    heavy = ("torch", "triton", "fvcore", "open_clip")
    code = ("import sys, warnings\nfrom pcmci.cli import main\nfor argv in (['--help'], ['synth', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))\n"
            "warnings.simplefilter('error', FutureWarning)\nimport pcmci.profiling\n")
    done = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == "[]" and "usage: pcmci synth" in done.stdout


def test_counts_out_of_range_stop_before_any_work_and_ctrl_c_is_one_line(tmp_path, capsys, monkeypatch) -> None:
    """Found by a bug hunt: ``demo --epochs 0`` trained 30 epochs, ``--epochs -1`` deleted the earlier run's
    checkpoints before failing, ``--seeds 0`` wrote a NaN report; duplicate ablation variants were trained and
    counted twice; ``vlm pretrain --epochs 0`` divided by zero; ``--nproc 0`` ran one process; Ctrl-C printed a
    traceback. Each is now one line before anything is written."""
    cases = [
        (["demo", "--out", str(tmp_path / "demo"), "--epochs", "0"], "--seeds and --epochs must be >= 1, got 1 and 0"),
        (["demo", "--out", str(tmp_path / "demo"), "--seeds", "0"], "--seeds and --epochs must be >= 1, got 0 and"),
        (["ablate", "tiny", "--variants", "baseline", "baseline", "--out", str(tmp_path / "abl")],
         "--variants lists a variant twice: ['baseline', 'baseline']"),
        (["vlm", "pretrain", "--out", str(tmp_path / "vlm"), "--epochs", "0"], "--clips and --epochs must be >= 1"),
        (["diagnose", str(tmp_path / "none.pt"), "--limit", "0"], "--limit and --hallucination-clips must be >= 1"),
        (["train", "tiny", f"run.out_dir={tmp_path / 'run'}", "--nproc", "0"], "--nproc must be >= 1, got 0"),
    ]
    for argv, message in cases:
        code, _, err = run_cli(capsys, *argv)
        assert code == 1 and err.startswith(f"pcmci: error: {message}") and len(err.splitlines()) == 1, (argv, err)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]

    def interrupted(args: argparse.Namespace) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("pcmci.cli._synth", interrupted)
    code, _, err = run_cli(capsys, "synth", "--out", str(tmp_path / "syn"))
    assert code == 130 and err == "pcmci: interrupted\n"


@pytest.mark.parametrize(("argv", "argument"), [
    (["predict", "c.pt", "{path}"], "video"), (["predict", "c.pt", "v.webm", "--labels", "{path}"], "--labels"),
    (["eval", "c.pt", "--manifest", "{path}"], "--manifest"), (["diagnose", "c.pt", "--video", "{path}"], "--video"),
], ids=["predict video", "predict --labels", "eval --manifest", "diagnose --video"])
def test_an_input_file_that_is_not_one_is_refused_before_the_model_loads(argv: list[str], argument: str,
                                                                          tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a bug hunt: an empty, missing or folder path loaded the model first (seconds) and then said
    "cannot decode : a folder" for an empty video path."""
    monkeypatch.chdir(tmp_path)  # v.webm, the valid video beside a bad --labels
    for path, reason in (("", "an empty path"), (str(tmp_path / "none"), f"{tmp_path / 'none'}: no such file"),
                         (str(tmp_path), f"{tmp_path}: a folder, expected a file")):
        (tmp_path / "v.webm").write_bytes(b"")
        with pytest.raises(SystemExit) as exit_:
            main(["--quiet", *[a.format(path=path) if a == "{path}" else a for a in argv]])
        assert exit_.value.code == 2
        assert f"argument {argument}: {reason}" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["demo"], ["ablate", "tiny"], ["diagnose", "c.pt"], ["export", "c.pt"], ["eval", "c.pt"], ["synth"],
    ["data", "inspect", "--dataset", "manifest", "--root", "."], ["data", "prepare", "--dataset", "manifest",
                                                                    "--root", "."],
    ["profile"], ["bench", "train", "tiny"], ["vlm", "pretrain"], ["kernels", "report"],
], ids=lambda argv: " ".join(argv[:2]))
def test_an_out_folder_that_cannot_be_one_is_refused_before_any_work(argv: list[str], tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    """A file where --out (or a folder above it) should be: one argparse line naming it, exit 2 before the command
    runs (it used to fail with a raw OSError after training, profiling or compiling)."""
    taken = tmp_path / "results.txt"
    taken.write_text("not a folder")
    for out in (taken, taken / "sub" / "run"):
        with pytest.raises(SystemExit) as exit_:
            main(["--quiet", *argv, "--out", str(out)])
        assert exit_.value.code == 2
        assert f"argument --out: {out}: {taken} is a file, not a folder" in capsys.readouterr().err
    assert taken.read_text() == "not a folder"


@pytest.mark.parametrize("argv", [
    ["demo"], ["ablate", "tiny"], ["diagnose", "c.pt"], ["eval", "c.pt"], ["profile"], ["bench", "train", "tiny"],
    ["kernels", "report"],
], ids=lambda argv: " ".join(argv[:2]))
def test_an_empty_out_folder_is_refused_not_read_as_the_current_or_default_one(argv: list[str], tmp_path: Path,
                                                                              capsys: pytest.CaptureFixture,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a bug hunt: ``--out ''`` (an unset variable) wrote profile and bench reports into the current folder,
    eval and diagnose into their default folder, and kernels report nowhere."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["--quiet", *argv, "--out", ""])
    assert exit_.value.code == 2
    assert "argument --out: an empty path" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("argv", [["eval", ""], ["diagnose", ""], ["export", "", "--out", "x"], ["predict", "", "v.webm"]],
                         ids=["eval", "diagnose", "export", "predict"])
def test_an_empty_checkpoint_path_is_named_as_empty(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    """Found by a bug hunt: ``pcmci eval ''`` said "checkpoint is a folder, not a file: ." (the empty path read as
    the current folder)."""
    with pytest.raises(SystemExit) as exit_:
        main(["--quiet", *argv])
    assert exit_.value.code == 2
    assert "argument checkpoint: an empty path" in capsys.readouterr().err


def test_overrides_after_the_options_are_read_as_overrides(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Found by a bug hunt: ``pcmci bench train tiny --steps 1 optim.batch_size=0`` stopped with "unrecognized
    arguments: optim.batch_size=0"; overrides now go anywhere after CONFIG (an argument that is not one is still
    refused)."""
    argv = ["bench", "train", "tiny", "--steps", "1", "--out", str(tmp_path), "optim.batch_size=0"]
    code, _, err = run_cli(capsys, *argv)
    assert code == 1 and err == "pcmci: error: config key 'optim.batch_size' = 0; it must be at least 1\n"
    with pytest.raises(SystemExit) as exit_:
        main(["--quiet", *argv[:-1], "stray"])
    assert exit_.value.code == 2 and "unrecognized arguments: stray" in capsys.readouterr().err
