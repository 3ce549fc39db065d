"""Breakfast, COIN and Charades fixture trees in their public formats, read by the adapters and `data inspect`."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from pcmci.cli import main
from pcmci.config import DataConfig
from pcmci.data.datasets import build_dataset
from pcmci.data.records import read_text
from pcmci.data.formats import (BREAKFAST_ACTIONS, CHARADES_FILES, action_text, read_breakfast, read_charades,
                                read_coin)
from pcmci.errors import ConfigError, DataError
from pcmci.data.synthetic import encode_video


def video(path: Path, codec: str, frames: int = 12) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    encode_video(path, (rng.integers(0, 256, (32, 48, 3), dtype=np.uint8) for _ in range(frames)), codec, 8, 4)
    return path


@pytest.fixture(scope="module")
def breakfast(tmp_path_factory):
    return make_breakfast(tmp_path_factory.mktemp("breakfast"))


def make_breakfast(root: Path) -> Path:
    """The breakfast fixture tree under ``root`` (also used by test_data_prepare)."""
    root.mkdir(parents=True, exist_ok=True)
    video(root / "P03/cam01/P03_cereals.avi", "mjpeg")
    (root / "P03/cam01/P03_cereals.avi.labels").write_text("1-30 SIL\n31-150 take_bowl\n151-428 pour_cereals\n"
                                                            "429-575 pour_milk\n576-600 SIL\n")
    video(root / "P03/webcam01/P03_tea.avi", "mjpeg")
    (root / "P03/webcam01/P03_tea.labels").write_text("1-40 add_teabag\n41-90 pour_water\n")
    video(root / "P46/cam02/P46_scrambledegg.avi", "mjpeg")
    video(root / "P47/cam01/P47_friedegg.avi", "mjpeg")
    (root / "P47/cam01/P47_friedegg.avi.labels").write_text("1-10 crack_egg\n11-99 put_egg2plate\n")
    (root / "P50/cam01").mkdir(parents=True)
    (root / "P50/cam01/P50_juice.avi.labels").write_text("1-99 squeeze_orange\n")  # video missing
    video(root / "P03/stereo/P03_cereals_ch1.avi", "mjpeg")  # not a cam folder layout match: ignored
    return root


@pytest.fixture(scope="module")
def coin(tmp_path_factory):
    return make_coin(tmp_path_factory.mktemp("coin"))


def make_coin(root: Path) -> Path:
    """The coin fixture tree under ``root`` (also used by test_data_prepare)."""
    root.mkdir(parents=True, exist_ok=True)
    step = lambda i, label: {"id": str(i), "segment": [1.0, 5.0], "label": label}  # noqa: E731
    database = {
        "vidA": {"recipe_type": 7, "class": "MakeCoffee", "subset": "training", "start": 0, "end": 9,
                 "annotation": [step(30, "grind beans"), step(31, "pour water")]},
        "vidB": {"recipe_type": 2, "class": "AssembleBed", "subset": "training",
                 "annotation": [step(4, "fix legs")]},
        "vidC": {"recipe_type": 7, "class": "MakeCoffee", "subset": "validation", "annotation": [step(31, "pour water")]},
        "vidD": {"recipe_type": 2, "class": "AssembleBed", "subset": "testing", "annotation": []},
    }
    (root / "COIN.json").write_text(json.dumps({"database": database}))
    for vid in ("vidA", "vidB", "vidC"):
        video(root / f"videos/{vid}.mp4", "h264")
    return root  # vidD's video is missing


@pytest.fixture(scope="module")
def charades(tmp_path_factory):
    return make_charades(tmp_path_factory.mktemp("charades"))


def make_charades(root: Path) -> Path:
    """The charades fixture tree under ``root`` (also used by test_data_prepare)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "Charades_v1_classes.txt").write_text("c000 Holding some clothes\nc001 Putting clothes somewhere\n"
                                                  "c002 Taking some clothes\nc003 Opening a door\n")
    header = "id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length\n"
    (root / "Charades_v1_train.csv").write_text(
        header + 'AAA11,P1,Kitchen,6,7,Yes,"A person, cooking.",food,"x",c000 0.00 5.10;c003 2.30 8.00,12.5\n'
        + "BBB22,P2,Hall,5,7,Yes,walks,door,y,c003 1.00 3.00,9.0\n")
    (root / "Charades_v1_test.csv").write_text(
        header + "CCC33,P3,Bedroom,7,7,Yes,sits,,z,c001 0.5 2.0;c002 2.5 4.0;c001 5.0 6.0,8.1\n"
        + "DDD44,P4,Garage,7,7,Yes,nothing,,w,,7.0\n")
    for vid in ("AAA11", "BBB22", "CCC33", "DDD44"):
        video(root / f"videos/{vid}.mp4", "h264")
    return root


def test_breakfast(breakfast):
    videos = read_breakfast(breakfast)
    assert len(videos.labels.classes) == 10 and len(videos.labels.actions) == len(BREAKFAST_ACTIONS) == 48
    found = {r.path.relative_to(breakfast).as_posix(): r for r in videos.records}
    assert sorted(found) == ["P03/cam01/P03_cereals.avi", "P03/webcam01/P03_tea.avi", "P46/cam02/P46_scrambledegg.avi",
                             "P47/cam01/P47_friedegg.avi", "P50/cam01/P50_juice.avi"]
    names = lambda r: [videos.labels.classes[r.target], [videos.labels.actions[s] for s in r.steps], r.split]  # noqa: E731
    assert names(found["P03/cam01/P03_cereals.avi"]) == [
        "make cereals", ["background", "take bowl", "pour cereals", "pour milk"], "train"]
    assert names(found["P03/webcam01/P03_tea.avi"]) == ["make tea", ["add teabag", "pour water"], "train"]
    assert names(found["P46/cam02/P46_scrambledegg.avi"]) == ["make scrambled egg", [], "train"]
    assert names(found["P47/cam01/P47_friedegg.avi"]) == ["fry egg", ["crack egg", "put egg to plate"], "test"]
    assert names(found["P50/cam01/P50_juice.avi"])[2] == "test" and not found["P50/cam01/P50_juice.avi"].path.exists()
    assert action_text("put_toppingOnTop") == "put topping on top"


def test_breakfast_bad_labels_line(tmp_path):
    video(tmp_path / "P05/cam01/P05_milk.avi", "mjpeg")
    (tmp_path / "P05/cam01/P05_milk.avi.labels").write_text("1-9 SIL\n10-20 dance\n")
    with pytest.raises(ValueError, match=r"P05_milk.avi.labels:2: unknown Breakfast action 'dance'"):
        read_breakfast(tmp_path)


def test_breakfast_labels_folder_is_named(tmp_path):
    video(tmp_path / "P05/cam01/P05_milk.avi", "mjpeg")
    (tmp_path / "P05/cam01/P05_milk.avi.labels").mkdir()  # read as "no labels", the video would lose its steps
    with pytest.raises(DataError, match=r"P05_milk.avi.labels: a folder where the coarse .labels file of P05_milk"):
        read_breakfast(tmp_path)


def test_a_text_file_that_is_a_folder_is_named(tmp_path):
    (tmp_path / "labels.json").mkdir()
    with pytest.raises(DataError, match=r"labels.json: a folder, expected a text file"):
        read_text(tmp_path / "labels.json")


def test_coin(coin):
    videos = read_coin(coin)
    assert videos.labels.classes == ["AssembleBed", "MakeCoffee"]  # ordered by recipe_type (2, 7)
    assert videos.labels.actions == ["fix legs", "grind beans", "pour water"]  # ordered by step id (4, 30, 31)
    by_id = {r.path.stem: (r.target, r.steps, r.split) for r in videos.records}
    assert by_id == {"vidA": (1, [1, 2], "train"), "vidB": (0, [0], "train"), "vidC": (1, [2], "test"),
                     "vidD": (0, [], "test")}
    custom = read_coin(coin, "by_task/{recipe_type}/{id}.webm")
    assert custom.records[0].path == coin / "by_task/7/vidA.webm"


def test_coin_inconsistent_task(tmp_path):
    database = {"a": {"recipe_type": 1, "class": "X", "subset": "training"},
                "b": {"recipe_type": 1, "class": "Y", "subset": "testing"}}
    (tmp_path / "COIN.json").write_text(json.dumps({"database": database}))
    with pytest.raises(ValueError, match="id 1 is both 'X' and 'Y'"):
        read_coin(tmp_path)


def test_charades_multilabel(charades):
    videos = read_charades(charades)
    assert videos.multilabel and videos.labels.classes[3] == "Opening a door" and videos.labels.actions == []
    assert [(r.path.stem, r.target, r.split) for r in videos.records] == [
        ("AAA11", [0, 3], "train"), ("BBB22", [3], "train"), ("CCC33", [1, 2], "test"), ("DDD44", [], "test")]
    ds = build_dataset(DataConfig(dataset="charades", root=str(charades), image_size=32, frames=4), "test", False)
    item = ds[0]
    assert item["label"].dtype == torch.float32 and item["label"].tolist() == [0, 1, 1, 0]
    assert item["video"].shape == (4, 3, 32, 32) and item["steps"].shape == (0,)
    assert ds[1]["label"].sum() == 0


def test_charades_bad_action(tmp_path, charades):
    for name in ("Charades_v1_classes.txt", "Charades_v1_test.csv"):
        (tmp_path / name).write_text((charades / name).read_text())
    (tmp_path / "Charades_v1_train.csv").write_text("id,actions\nX,c999 0 1\n")
    with pytest.raises(ValueError, match=r"Charades_v1_train.csv:2: bad action 'c999 0 1'"):
        read_charades(tmp_path)


@pytest.mark.parametrize("reader, template, message", [
    (read_coin, "{nope}.mp4", r"unknown field\(s\) \{nope\}; allowed: \{id\}, \{recipe_type\}"),
    (read_coin, "{}.mp4", r"unknown field\(s\) \{\}"),
    (read_coin, "{0}.mp4", r"unknown field\(s\) \{0\}"),
    (read_coin, "{id.upper}.mp4", r"unknown field\(s\) \{id.upper\}"),
    (read_coin, "videos/{id.mp4", r"expected '\}' before end of string"),
    (read_coin, "{recipe_type:q}.mp4", r"Unknown format code 'q'"),
    (read_coin, "/abs/{id}.mp4", r"must be relative to data.root"),
    (read_charades, "{nope}.mp4", r"unknown field\(s\) \{nope\}; allowed: \{id\}$"),
    (read_breakfast, "{nope}/{person}_{activity}.avi", r"unknown field\(s\) \{nope\}"),
    (read_breakfast, "{person}/{camera}/{person}_x.avi", r"must contain \{activity\}"),
    (read_breakfast, "{person!r}/{camera}/{person}_{activity}.avi", r"fields take no format spec or conversion"),
])
def test_a_bad_video_template_is_named(reader, template, message, breakfast, coin, charades):
    """Found by a bug hunt: each of these crashed with KeyError / IndexError / NotImplementedError, named nothing,
    or (``{id.upper}``) filled paths with a method's repr."""
    root = {read_coin: coin, read_charades: charades, read_breakfast: breakfast}[reader]
    with pytest.raises(ConfigError, match=rf"data.video_template {re.escape(repr(template))}: {message}"):
        reader(root, template)


@pytest.mark.parametrize("entry, message", [
    ({"recipe_type": 1, "class": ["a"], "subset": "training"}, r"'class' must be a non-empty string"),
    ({"recipe_type": 1, "class": "a", "subset": ["training"]}, r"subset \['training'\] not in"),
    ({"recipe_type": 1, "class": None, "subset": "training"}, r"'class' must be a non-empty string"),
    ({"recipe_type": 1.7, "class": "a", "subset": "training"}, r"expected an integer id, got 1.7"),
    ({"recipe_type": True, "class": "a", "subset": "training"}, r"expected an integer id, got True"),
    ({"recipe_type": 1, "class": "a", "subset": "training", "annotation": [{"id": "3", "label": 7}]},
     r"'label' must be a non-empty string, got 7"),
])
def test_coin_fields_of_the_wrong_type_are_named(tmp_path, entry, message):
    (tmp_path / "COIN.json").write_text(json.dumps({"database": {"v": entry}}))
    with pytest.raises(DataError, match=rf"COIN.json: video 'v'.*{message}"):
        read_coin(tmp_path)


def test_coin_and_charades_refuse_one_name_for_two_ids(tmp_path, charades):
    database = {"a": {"recipe_type": 1, "class": "T", "subset": "training"},
                "b": {"recipe_type": 2, "class": "T", "subset": "testing"}}
    (tmp_path / "COIN.json").write_text(json.dumps({"database": database}))
    with pytest.raises(DataError, match="class 'T' belongs to two different ids"):
        read_coin(tmp_path)
    for name in CHARADES_FILES[1:]:
        (tmp_path / name).write_text((charades / name).read_text())
    for classes, twice in (("c000 A\nc001 B\nc001 C\n", "'c001'"), ("c000 A\nc001 B\nc002 A\n", "'A'")):
        (tmp_path / CHARADES_FILES[0]).write_text(classes)
        with pytest.raises(DataError, match=rf"Charades_v1_classes.txt:3: {twice} is listed twice"):
            read_charades(tmp_path)


def test_charades_short_rows_bom_and_non_utf8_are_named(tmp_path, charades):
    for name in CHARADES_FILES:
        (tmp_path / name).write_text((charades / name).read_text())
    train = tmp_path / "Charades_v1_train.csv"
    train.write_text("id,subject,actions\nAAAA1,S1\n")
    with pytest.raises(DataError, match=r"Charades_v1_train.csv:2: expected 3 fields"):
        read_charades(tmp_path)
    train.write_text("\ufeffid,actions\nAAA11,c000 0 1\n", encoding="utf-8")  # Excel's BOM
    assert read_charades(tmp_path).records[0].target == [0]
    train.write_bytes(b"\xff\xfeid,actions\n")
    with pytest.raises(DataError, match=r"Charades_v1_train.csv: not a UTF-8 text file"):
        read_charades(tmp_path)
    labels = tmp_path / "P05/cam01/P05_milk.avi.labels"
    video(labels.with_suffix(""), "mjpeg")
    labels.write_bytes(b"\xff\xfe1-9 SIL\n")
    with pytest.raises(DataError, match=r"P05_milk.avi.labels: not a UTF-8 text file"):
        read_breakfast(tmp_path)


@pytest.mark.parametrize("name", ["breakfast", "coin"])
def test_single_label_items_and_views(name, breakfast, coin):
    root = {"breakfast": breakfast, "coin": coin}[name]
    data = DataConfig(dataset=name, root=str(root), frames=4, image_size=32, test_views=6, test_crops=3)
    ds = build_dataset(data, "train", train=False)
    item = ds[0]
    assert item["video"].shape == (6, 4, 3, 32, 32) and item["label"].dtype == torch.int64
    assert not torch.equal(item["video"][0], item["video"][1])  # crops differ (48 px wide frames)
    train = build_dataset(data, "train", train=True)
    assert train[0]["video"].shape == (4, 3, 32, 32)


def inspect(capsys, *args):
    code = main(["--quiet", "data", "inspect", *args, "--json", "--grid", ""])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def test_inspect_counts(capsys, breakfast, coin, charades, tmp_path):
    report = inspect(capsys, "--dataset", "breakfast", "--root", str(breakfast))
    assert report["splits"]["train"] == {"videos": 3, "classes": {"make cereals": 1, "make scrambled egg": 1,
                                                                  "make tea": 1}}
    assert report["splits"]["test"] == {"videos": 2, "classes": {"fry egg": 1, "make juice": 1}}
    assert report["missing"] == [str(breakfast / "P50/cam01/P50_juice.avi")] and report["undecodable"] == []
    assert report["stats"]["frames"]["min"] == 12 and report["stats"]["codecs"] == {"mjpeg": 4}
    report = inspect(capsys, "--dataset", "coin", "--root", str(coin), "--split", "test")
    assert list(report["splits"]) == ["test"] and report["splits"]["test"]["videos"] == 2
    assert report["missing"] == [str(coin / "videos/vidD.mp4")]
    report = inspect(capsys, "--dataset", "charades", "--root", str(charades))
    assert report["splits"]["train"]["classes"] == {"Holding some clothes": 1, "Opening a door": 2}
    assert report["splits"]["test"] == {"videos": 2, "classes": {"Putting clothes somewhere": 1,
                                                                 "Taking some clothes": 1}}
    assert report["multilabel"] and report["missing"] == report["undecodable"] == []


def test_inspect_names_corrupt_and_missing_and_draws_grid(capsys, tmp_path):
    for vid in ("ok1", "ok2"):
        video(tmp_path / f"videos/{vid}.mp4", "h264")
    (tmp_path / "videos/bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    rows = ["path,label,split", "videos/ok1.mp4,a,train", "videos/ok2.mp4,b,train", "videos/bad.mp4,a,test",
            "videos/gone.mp4,b,test"]
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    report = inspect(capsys, "--dataset", "manifest", "--root", str(tmp_path))
    assert report["missing"] == [str(tmp_path / "videos/gone.mp4")]
    assert report["undecodable"] == [str(tmp_path / "videos/bad.mp4")]
    assert "corrupt" in report["errors"][str(tmp_path / "videos/bad.mp4")]
    assert main(["data", "inspect", "--dataset", "manifest", "--root", str(tmp_path),
                 "--grid", str(tmp_path / "grid.png")]) == 0
    out = capsys.readouterr().out
    assert "missing: 1" in out and "undecodable: 1" in out and "gone.mp4" in out and "bad.mp4" in out
    assert (tmp_path / "grid.png").stat().st_size > 0
