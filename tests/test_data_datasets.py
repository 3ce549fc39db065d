import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from pcmci.data.datasets import LabelSet, ManifestDataset, collate_videos, preprocess, read_manifest
from pcmci.data.sampling import view_indices
from pcmci.data.decode import VideoDecodeError
from pcmci.data.synthetic import ACTIONS, ACTIVITIES, encode_video, synthesize
from pcmci.errors import DataError


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("synth"), n_train=6, n_test=4, progress=False)


def write(path, text):
    path.write_text(text)
    return path


def test_label_set(tmp_path):
    text = json.dumps({"classes": ["a", "b"], "actions": ["x"]})
    labels = LabelSet.load(write(tmp_path / "l.json", text))
    assert labels.texts == ["a", "b", "x"]
    assert LabelSet.load(write(tmp_path / "m.json", '{"classes": ["a"]}')).actions == []
    with pytest.raises(ValueError, match="non-empty 'classes'"):
        LabelSet.load(write(tmp_path / "n.json", '{"actions": ["x"]}'))


@pytest.mark.parametrize("text, message", [
    ('{"classes": ["a"], "actions": null}', "'actions' must be a list of strings, got null"),
    ('{"classes": ["a"], "actions": 5}', "'actions' must be a list of strings, got 5"),
    ('{"classes": ["a"], "actions": "abc"}', "'actions' must be a list of strings, got \"abc\""),
    ('{"classes": ["a", 2]}', "'classes' must be a list of strings, got \\[\"a\", 2\\]"),
])
def test_label_names_that_are_not_a_list_of_strings_are_named(tmp_path, text, message):
    """``"actions": "abc"`` was read as three actions a, b, c; null or a number gave a raw TypeError."""
    path = write(tmp_path / "labels.json", text)
    with pytest.raises(DataError, match=f"^{path}: {message}$"):
        LabelSet.load(path)


def test_manifest_rows_resolve_paths_and_steps(tmp_path):
    text = "path,label,split,steps\nv/a.webm,pour,train,rise;fall\n/abs/b.avi,stir,test,\n"
    path = write(tmp_path / "m.csv", text)
    rows = read_manifest(path)
    assert [r.path for r in rows] == [tmp_path / "v/a.webm", Path("/abs/b.avi")]
    assert [r.steps for r in rows] == [["rise", "fall"], []]
    assert [r.split for r in rows] == ["train", "test"] and [r.line for r in rows] == [2, 3]


@pytest.mark.parametrize(
    "text,line,cause",
    [
        ("file,label\na.webm,pour\n", 1, "missing required column"),
        ("path,label\na.webm,pour\nb.webm,boil\n", 3, "unknown label 'boil'"),
        ("path,label\na.webm,pour,extra\n", 2, "expected 2 fields"),
        ("path,label,split\na.webm,pour,train\nb.webm\n", 3, "expected 3 fields"),
        ("path,label\n,pour\n", 2, "empty path or label"),
        ("path,label,steps\na.webm,pour,rise;dance\n", 2, "unknown step"),
    ],
)
def test_manifest_errors_name_file_and_line(tmp_path, text, line, cause):
    path = write(tmp_path / "bad.csv", text)
    with pytest.raises(ValueError, match=f"{path}:{line}: .*{cause}"):
        read_manifest(path, LabelSet(["pour"], ["rise"]))


def test_unknown_split_lists_available(manifest):
    available = r"available splits: \['test_id', 'test_ood', 'train'\]"
    with pytest.raises(ValueError, match=f"split 'val' has no rows; {available}"):
        ManifestDataset(manifest, "val")


def test_items_shapes_dtypes_and_values(manifest):
    ds = ManifestDataset(manifest, "train", frames=8, image_size=32)
    assert len(ds) == 6 and ds.labels.classes == list(ACTIVITIES) and ds.labels.actions == ACTIONS
    item = ds[1]
    assert item["video"].shape == (8, 3, 32, 32) and item["video"].dtype == torch.float32
    assert 0 <= item["video"].min() and item["video"].max() <= 1 and item["video"].std() > 0.05
    assert item["label"].dtype == torch.int64 and item["label"].shape == () and item["label"] == 1
    assert item["steps"].shape == (len(ACTIONS),) and item["steps"].dtype == torch.float32
    on = {ACTIONS[i] for i in item["steps"].nonzero().flatten().tolist()}
    assert on == set(ACTIVITIES["make tea"]) and item["index"] == 1
    assert len(ManifestDataset(manifest, None)) == 10


def test_eval_items_fixed_and_train_offsets_follow_seed_and_epoch(manifest):
    def videos(ds):
        return torch.stack([ds[i]["video"] for i in range(len(ds))])

    evaluation = ManifestDataset(manifest, "test_id")
    first = videos(evaluation)
    evaluation.set_epoch(3)
    assert torch.equal(first, videos(evaluation))

    a = ManifestDataset(manifest, "train", train=True, seed=1)
    b = ManifestDataset(manifest, "train", train=True, seed=1)
    a.set_epoch(2)
    b.set_epoch(2)
    epoch2 = videos(a)
    assert torch.equal(epoch2, videos(b))
    a.set_epoch(3)
    assert not torch.equal(epoch2, videos(a))
    c = ManifestDataset(manifest, "train", train=True, seed=2)
    c.set_epoch(2)
    assert not torch.equal(epoch2, videos(c))


def test_labels_from_manifest_without_label_file(tmp_path, manifest):
    rows = manifest.read_text().splitlines()
    lines = [f"{manifest.parent / r.split(',')[0]},{r.split(',')[1]}" for r in rows[1:4]]
    text = "path,label\n" + "\n".join(lines) + "\n"
    ds = ManifestDataset(write(tmp_path / "m.csv", text), None, frames=4)
    assert ds.labels == LabelSet(sorted({r.split(",")[1] for r in rows[1:4]}))
    assert ds[0]["steps"].shape == (0,)


def test_missing_video_raises_naming_path(tmp_path):
    ds = ManifestDataset(write(tmp_path / "m.csv", "path,label\ngone.webm,pour\n"), None)
    with pytest.raises(VideoDecodeError, match="gone.webm: file not found"):
        ds[0]


def test_preprocess_resizes_shorter_side_and_centre_crops():
    frames = np.zeros((2, 40, 80, 3), np.uint8)
    frames[:, :, 14:66] = 255  # a white band a little wider than the centre crop
    video = preprocess(frames, 20)
    assert video.shape == (2, 3, 20, 20) and video.dtype == torch.float32
    assert torch.allclose(video, torch.ones_like(video))


def test_skip_bad_videos_are_dropped_and_listed_by_collate(tmp_path, manifest):
    rows = manifest.read_text().splitlines()
    good = [f"{manifest.parent / r.split(',')[0]},{r.split(',')[1]}" for r in rows[1:3]]
    (tmp_path / "bad.webm").write_bytes(b"not a video at all" * 20)
    text = "path,label\n" + "\n".join([good[0], f"{tmp_path / 'bad.webm'},make tea", "gone.webm,make tea", good[1]])
    ds = ManifestDataset(write(tmp_path / "m.csv", text + "\n"), None, frames=4, image_size=32, skip_bad=True)
    batch = collate_videos([ds[i] for i in range(4)])
    assert batch["video"].shape == (2, 4, 3, 32, 32) and batch["index"].tolist() == [0, 3]
    assert [b.split(": ", 1)[1].split(":")[0] for b in batch["bad"]] == ["not a video / corrupt", "file not found"]
    assert collate_videos([ds[2]]) == {"bad": [f"{tmp_path / 'gone.webm'}: file not found"]}


def test_multi_view_items_stack_clips_then_crops(manifest):
    ds = ManifestDataset(manifest, "test_id", frames=4, image_size=32, test_views=(2, 3))
    single = ManifestDataset(manifest, "test_id", frames=4, image_size=32)
    item = ds[0]
    assert ds.views == 6 and item["video"].shape == (6, 4, 3, 32, 32)
    clips = view_indices(ds.plan(0).info.num_frames, 4, 2)
    assert single.plan(0).clips[0] != clips[0] and clips[0] != clips[1]
    assert torch.equal(item["video"][1], item["video"][0])  # square frames: all crops are the centre
    assert not torch.equal(item["video"][0], item["video"][3])  # a different temporal clip
    assert ManifestDataset(manifest, "train", frames=4, image_size=32, train=True, test_views=(2, 3))[0][
        "video"].shape == (4, 3, 32, 32)


def test_short_videos_raise_skip_or_pad(manifest):
    with pytest.raises(VideoDecodeError, match="fewer than the 64 requested"):
        ManifestDataset(manifest, "test_id", frames=64, image_size=16)[0]
    assert "fewer than the 64" in ManifestDataset(manifest, "test_id", frames=64, image_size=16, skip_bad=True)[0]["bad"]
    padded = ManifestDataset(manifest, "test_id", frames=64, image_size=16, pad_short=True, test_views=(2, 1))
    assert padded[0]["video"].shape == (2, 64, 3, 16, 16)


def test_training_crop_jitter_cuts_one_window_per_clip_and_rescales(tmp_path):
    """A white square on black, still across 12 frames: after the crop window (top, left, side) and the resize to
    S, its centre must sit at ((y - top) S / side, (x - left) S / side) in every frame — an independent geometric
    reference. MJPEG blurs edges by about a pixel; the centroid of a 16 px square moves well under one output pixel."""
    frames = np.zeros((12, 96, 96, 3), np.uint8)
    frames[:, 40:56, 52:68] = 255  # centre (47.5, 59.5) in pixel-centre coordinates
    encode_video(tmp_path / "square.avi", frames, codec="mjpeg")
    text = f"path,label,split\n{tmp_path / 'square.avi'},square,train\n"
    size = 48
    ds = ManifestDataset(write(tmp_path / "m.csv", text), "train", frames=4, image_size=size, train=True,
                         train_crop_scale=0.3)
    plain = ManifestDataset(write(tmp_path / "m.csv", text), "train", frames=4, image_size=size, train=True)
    assert plain.plan(0).crop is None
    windows, checked = set(), 0
    for epoch in range(12):
        ds.set_epoch(epoch)
        top, left, side = ds.plan(0).crop
        assert ds.plan(0).crop == (top, left, side)  # a pure function of (seed, epoch, index)
        windows.add((top, left, side))
        video = ds[0]["video"]
        assert video.shape == (4, 3, size, size)
        mass = video.mean(1)  # [F, S, S]
        if mass[0].sum() < 1:
            continue  # the window missed the square
        ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
        centres = torch.stack([(mass * ys).sum((1, 2)), (mass * xs).sum((1, 2))], 1) / mass.sum((1, 2))[:, None]
        # one window for every frame: the same centre in all 4 (MJPEG's per-frame rounding, up to ~14/255 at the
        # square's edges and symmetric about them, moves a centroid by a small fraction of a pixel; a window moved by
        # even one source pixel moves it by size/side >= 0.5 px)
        assert float((centres - centres[0]).abs().max()) < 0.25
        if 40 >= top and 56 <= top + side and 52 >= left and 68 <= left + side:  # the whole square in the window
            assert abs(float(centres[0, 0]) - (48 - top) * size / side) < 1.0
            assert abs(float(centres[0, 1]) - (60 - left) * size / side) < 1.0
            checked += 1
    assert len(windows) > 1 and checked > 0


def test_cached_frames_are_decoded_once_per_process_and_equal_uncached_items(manifest, monkeypatch):
    """Two datasets over the same videos with ``cache`` (the baseline and the full model of a demo) decode each video
    once, and their items equal a dataset's that decodes every time; a rewritten file is decoded again; past the
    byte limit the least recently used video leaves."""
    from pcmci.data import datasets

    calls = []
    real = datasets.decode_frames
    monkeypatch.setattr(datasets, "decode_frames", lambda path, *a, **k: calls.append(Path(path)) or real(path, *a, **k))
    monkeypatch.setattr(datasets, "DECODED", datasets.DecodedVideos(limit=1 << 30))
    first, second = (ManifestDataset(manifest, "test_id", cache=True) for _ in range(2))
    plain = ManifestDataset(manifest, "test_id")
    for i in range(len(first)):
        expected = plain[i]["video"]
        assert torch.equal(first[i]["video"], expected) and torch.equal(second[i]["video"], expected)
    # each video: once for both cached datasets, once for the dataset that decodes on every item
    assert sorted(Counter(calls).values()) == [2] * len(first)
    video = first.records[0].path
    video.write_bytes(video.read_bytes())  # the same bytes, a new modification time
    os.utime(video, ns=(video.stat().st_atime_ns, video.stat().st_mtime_ns + 10**9))
    calls.clear()
    second[0]
    assert calls == [video]
    one = real(video, list(range(4)))[0].nbytes  # four frames of any video of the set: one size
    small = datasets.DecodedVideos(limit=int(one * 1.5))
    for path in (first.records[0].path, first.records[1].path, first.records[0].path):
        frames = small.get(path, "pyav", lambda path=path: real(path, list(range(4)))[0])
    assert small.bytes == one and list(small._videos)[0][0] == str(video.resolve()) and not frames.flags.writeable
