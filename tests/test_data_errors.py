"""Bad input files get one-line errors that name the file; `data inspect` writes only under --out."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from pcmci.cli import main
from pcmci.data.datasets import LabelSet, read_manifest
from pcmci.data.formats import read_coin
from pcmci.data.synthetic import encode_video
from pcmci.errors import DataError


def _error(capsys, argv: list[str]) -> str:
    """The CLI's stderr for a failing command (exit code 1), checked to be a single line."""
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_malformed_labels_json_names_file_and_line(tmp_path, capsys):
    (tmp_path / "labels.json").write_text('{"classes": [\n')
    (tmp_path / "manifest.csv").write_text("path,label\nv.webm,a\n")
    err = _error(capsys, ["--quiet", "data", "inspect", "--dataset", "manifest", "--root", str(tmp_path)])
    assert err.startswith(f"pcmci: error: {tmp_path / 'labels.json'}:2: not valid JSON")


def test_binary_or_broken_manifest_names_file(tmp_path, capsys):
    (tmp_path / "manifest.csv").write_bytes(bytes(range(128, 256)))
    err = _error(capsys, ["--quiet", "data", "inspect", "--dataset", "manifest", "--root", str(tmp_path)])
    assert err.startswith(f"pcmci: error: {tmp_path / 'manifest.csv'}: not a UTF-8 text file")


def test_malformed_coin_json_names_file(tmp_path, capsys):
    (tmp_path / "COIN.json").write_text('{"database": {"a": ')
    err = _error(capsys, ["--quiet", "data", "inspect", "--dataset", "coin", "--root", str(tmp_path)])
    assert f"{tmp_path / 'COIN.json'}:1: not valid JSON" in err


def test_corrupt_checkpoint_is_one_line(tmp_path, capsys):
    good = tmp_path / "good.pt"
    torch.save({"model": {}, "config": {}, "epoch": 1}, good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    noise = tmp_path / "noise.pt"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    for path in (cut, noise):
        err = _error(capsys, ["eval", str(path)])
        assert err.startswith(f"pcmci: error: checkpoint {path} is unreadable or corrupt: ")
        assert "weights_only" not in err  # torch's advice about the flag is not the cause


def test_corrupt_safetensors_names_file(tmp_path):
    from pcmci.model import PCMCI
    from pcmci.model.convert import read_weights

    bad = tmp_path / "w.safetensors"
    bad.write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match=f"^{bad} is not a readable .safetensors file: "):
        read_weights(bad)
    export = tmp_path / "export"
    export.mkdir()
    (export / "model.safetensors").write_bytes(b"\xff" * 64)
    (export / "labels.json").write_text(json.dumps({"classes": ["a"]}))
    (export / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=f"^{export / 'model.safetensors'} is not a readable .safetensors file"):
        PCMCI.from_pretrained(str(export))
    (export / "config.json").write_text("{")
    with pytest.raises(ValueError, match=f"^{export / 'config.json'}:1: not valid JSON"):
        PCMCI.from_pretrained(str(export))


def test_inspect_writes_only_under_out(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    data.mkdir()
    encode_video(data / "v.webm", [np.full((32, 32, 3), 20 * i, np.uint8) for i in range(8)], "vp9", 8, 4)
    (data / "manifest.csv").write_text("path,label\nv.webm,a\n")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert main(["--quiet", "data", "inspect", "--dataset", "manifest", "--root", str(data)]) == 0
    assert list(cwd.iterdir()) == []  # no --out: nothing written anywhere
    assert main(["--quiet", "data", "inspect", "--dataset", "manifest", "--root", str(data), "--out",
                 str(tmp_path / "report")]) == 0
    assert list(cwd.iterdir()) == []
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == ["grid.png", "report.json"]
    assert json.loads((tmp_path / "report/report.json").read_text())["undecodable"] == []
    capsys.readouterr()


@pytest.mark.parametrize("key", ["classes", "actions"])
def test_a_label_listed_twice_names_file_and_label(tmp_path, capsys, key):
    """A repeated class would be a model output no video can have (its row of the eval table: NaN)."""
    labels = {"classes": ["a", "b"], "actions": ["x", "y"]}
    labels[key] = [*labels[key], labels[key][0]]
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    (tmp_path / "manifest.csv").write_text("path,label\nv.webm,a\n")
    err = _error(capsys, ["--quiet", "data", "inspect", "--dataset", "manifest", "--root", str(tmp_path)])
    kind = "class 'a'" if key == "classes" else "action 'x'"
    assert err == f"pcmci: error: {tmp_path / 'labels.json'}: {kind} is listed twice in '{key}'"


def test_a_manifest_with_a_utf8_bom_reads_like_one_without(tmp_path):
    """Excel's "CSV UTF-8" starts the file with a byte-order mark; the header's first name must still be ``path``."""
    text = "path,label,split\nv.webm,a,train\nw.webm,b,test\n"
    (tmp_path / "plain.csv").write_text(text, encoding="utf-8")
    (tmp_path / "bom.csv").write_text(text, encoding="utf-8-sig")
    plain, bom = read_manifest(tmp_path / "plain.csv"), read_manifest(tmp_path / "bom.csv")
    assert [(r.path.name, r.label, r.split) for r in bom] == [(r.path.name, r.label, r.split) for r in plain]
    assert [r.label for r in bom] == ["a", "b"]


def test_a_folder_given_as_manifest_and_a_grid_that_is_no_image_name_the_fix(synthetic_set, tmp_path, capsys):
    folder = synthetic_set.parent
    err = _error(capsys, ["--quiet", "train", "tiny", f"data.manifest={folder}", f"run.out_dir={tmp_path / 'run'}"])
    assert err == f"pcmci: error: {folder}: a folder, not a manifest file; did you mean {synthetic_set}?"
    err = _error(capsys, ["--quiet", "data", "inspect", "--dataset", "manifest", "--root", str(folder),
                          "--grid", str(tmp_path / "grid.txt")])
    assert err == f"pcmci: error: --grid {tmp_path / 'grid.txt'}: the sample grid is an image; name a .png, .jpg or .webp file"
    assert not (tmp_path / "grid.txt").exists()
    (tmp_path / "file.png").write_bytes(b"")
    for grid in (tmp_path / "file.png" / "grid.png", tmp_path / "dir.png"):  # checked before the videos are probed
        (tmp_path / "dir.png").mkdir(exist_ok=True)
        err = _error(capsys, ["--quiet", "data", "inspect", "--dataset", "manifest", "--root", str(folder),
                              "--grid", str(grid)])
        assert err == f"pcmci: error: --grid {grid}: a folder, or under a file; name an image file in a folder"


def test_a_video_listed_twice_and_a_json_key_given_twice_are_named(tmp_path):
    """Found by a bug hunt: the same video in train and test (a leak) or with two labels was accepted, and a COIN.json
    or labels.json with a key twice kept the last value in silence."""
    manifest = tmp_path / "manifest.csv"
    for second in ("v.webm,b,test", "v.webm,a,train", "./v.webm,a,train"):
        manifest.write_text(f"path,label,split\nv.webm,a,train\nw.webm,b,train\n{second}\n")
        again = re.escape(second.split(",")[0])
        with pytest.raises(ValueError, match=rf"manifest.csv:4: {again} is listed again \(first on line 2\)"):
            read_manifest(manifest)
    (tmp_path / "COIN.json").write_text('{"database": {"v": {"recipe_type": 1, "class": "a", "subset": "training"}, '
                                        '"v": {"recipe_type": 2, "class": "b", "subset": "testing"}}}')
    with pytest.raises(DataError, match=r"COIN.json: the key 'v' appears twice in one object"):
        read_coin(tmp_path)
    (tmp_path / "labels.json").write_text('{"classes": ["a"], "classes": ["b", "c"]}')
    with pytest.raises(DataError, match=r"labels.json: the key 'classes' appears twice"):
        LabelSet.load(tmp_path / "labels.json")


def test_a_labels_json_that_is_a_folder_is_named_not_ignored(synthetic_set, tmp_path, capsys):
    """Found by a bug hunt: a folder named labels.json beside the manifest was skipped (the classes then came from
    the rows, in sorted order) and ``pcmci predict --labels FOLDER`` called it "no such file"."""
    (tmp_path / "manifest.csv").write_text(synthetic_set.read_text())
    (tmp_path / "labels.json").mkdir()
    err = _error(capsys, ["--quiet", "data", "inspect", "--dataset", "manifest", "--root", str(tmp_path)])
    assert err == f"pcmci: error: {tmp_path / 'labels.json'}: a folder, expected a text file"
    with pytest.raises(DataError, match=f"^{tmp_path}: a folder, expected a text file$"):
        LabelSet.load(tmp_path)
