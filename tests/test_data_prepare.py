"""`pcmci data prepare`: long-GOP sources re-encoded for random access, checked with plain PyAV (not pcmci's decoder).

Sources show frame i at brightness 5 i (plus a moving white column, the same share of the area after scaling), so a
prepared frame is matched to its source frame by its mean brightness: lossy coding moves a near-flat frame's mean by
about 1 level, and a one-frame shift moves it by 5, so a tolerance of 2 levels tells aligned from shifted.
"""
from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from pcmci.cli import main
from pcmci.config import DataConfig
from pcmci.data import prepare
from pcmci.data.datasets import build_dataset, read_manifest_set

W, H, FPS = 64, 48, 8
VFR_TICKS = [0, 1, 2, 5, 6, 7, 8, 12, 13, 14, 15, 16, 20, 21, 22, 23]  # frame times in 1/FPS s: a variable rate


def _write(path: Path, frames: int, encoder: str, gop: int, pts: list[int] | None = None) -> None:
    """``frames`` frames, or one per entry of ``pts`` (ticks of 1/FPS s: gaps make a variable rate)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(encoder, rate=Fraction(FPS))
        stream.width, stream.height = W, H
        stream.pix_fmt = "yuvj420p" if encoder == "mjpeg" else "yuv420p"
        fast = {"deadline": "realtime", "cpu-used": "8"} if encoder == "libvpx-vp9" else {}
        stream.options = {"g": str(gop), **fast}
        if pts is not None:
            stream.time_base = stream.codec_context.time_base = Fraction(1, FPS)
        for i in range(len(pts) if pts is not None else frames):
            img = np.full((H, W, 3), 5 * i, np.uint8)
            img[:, i % W] = 255
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], Fraction(1, FPS)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def _facts(path: Path) -> dict:
    """Plain PyAV: decoded frames' means, packet keyframe flags (decode order), pts, size, codec."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        keys = [p.is_keyframe for p in container.demux(stream) if p.size]
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
        stream = container.streams.video[0]
        return {"keys": keys, "pts": [f.pts for f in frames], "codec": stream.codec_context.name,
                "means": [float(f.to_ndarray(format="gray").mean()) for f in frames],
                "size": (frames[0].width, frames[0].height), "rate": stream.average_rate}


def _longest_keyframe_gap(keys: list[bool]) -> int:
    starts = [i for i, key in enumerate(keys) if key] + [len(keys)]
    assert keys[0]
    return max(b - a for a, b in zip(starts[:-1], starts[1:]))


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A manifest tree: long-GOP H.264 / VP9, MJPEG, a variable-rate video, a corrupt file; its own class order."""
    root = tmp_path / "src"
    (root / "clips").mkdir(parents=True)
    _write(root / "clips/long.mp4", 48, "libx264", 48)
    _write(root / "clips/other.webm", 40, "libvpx-vp9", 40)
    _write(root / "mj.avi", 24, "mjpeg", 1)
    _write(root / "clips/vfr.mkv", 0, "libx264", 30, pts=VFR_TICKS)
    (root / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    (root / "labels.json").write_text(json.dumps({"classes": ["stir", "pour"], "actions": ["grab", "shake"]}))
    (root / "manifest.csv").write_text(
        "path,label,split,steps\nclips/long.mp4,pour,train,grab;shake\nclips/other.webm,stir,train,shake\n"
        "mj.avi,pour,test,\nclips/vfr.mkv,stir,test,grab\nbad.mp4,pour,test,\n")
    return root


def _prepare(root: Path, out: Path, *flags: str) -> tuple[int, dict]:
    code = main(["--quiet", "data", "prepare", "--dataset", "manifest", "--root", str(root), "--out", str(out),
                 "--json", *flags])
    return code, json.loads((out / "prepare.json").read_text())


def test_prepare_reencodes_for_random_access_and_keeps_labels(source, tmp_path, capsys):
    out = tmp_path / "prepared"
    code, report = _prepare(source, out, "--short-side", "32", "--gop", "4", "--jobs", "2")
    assert code == 1  # one source is corrupt
    assert report["failed"] == 1 and list(report["failures"]) == [str(source / "bad.mp4")]
    assert "corrupt" in report["failures"][str(source / "bad.mp4")]
    assert report["done"] == 4 and report["rows"] == 4 and report["bytes"] > 0
    capsys.readouterr()
    assert not list(out.rglob("*.part"))  # temporary files are gone
    for src_name, out_name in (("clips/long.mp4", "clips/long.mp4"), ("clips/other.webm", "clips/other.mp4"),
                               ("mj.avi", "mj.mp4")):
        src, got = _facts(source / src_name), _facts(out / out_name)
        assert got["codec"] == "h264" and got["size"] == (42, 32)  # 64x48 -> short side 32, even width
        assert _longest_keyframe_gap(got["keys"]) <= 4
        assert abs(len(got["means"]) - len(src["means"])) <= 1
        np.testing.assert_allclose(got["means"][: len(src["means"])], src["means"][: len(got["means"])], atol=2.0)
        assert len(set(np.diff(got["pts"]))) == 1  # constant rate
    # the variable-rate source (16 frames over 24 ticks of 1/8 s): 8 fps constant rate, time kept, so slot k shows
    # the source frame on screen at k / 8 s, the last one whose tick is <= k
    vfr, got = _facts(source / "clips/vfr.mkv"), _facts(out / "clips/vfr.mp4")
    assert len(set(np.diff(got["pts"]))) == 1 and abs(len(got["means"]) - 24) <= 1
    on_screen = [max(j for j, tick in enumerate(VFR_TICKS) if tick <= k) for k in range(len(got["means"]))]
    np.testing.assert_allclose(got["means"], np.asarray(vfr["means"])[on_screen], atol=2.0)
    assert _longest_keyframe_gap(got["keys"]) <= 4
    # labels, splits and steps as in the source, same class order; the bad video is left out
    before, after = read_manifest_set(source / "manifest.csv"), read_manifest_set(out / "manifest.csv")
    assert after.labels == before.labels
    rows = lambda s, root: {(r.path.relative_to(root).with_suffix("").as_posix(), r.target, tuple(r.steps), r.split)
                            for r in s.records}
    assert rows(after, out) == rows(before, source) - {("bad", 1, (), "test")}
    # the adapters read the prepared tree
    data = DataConfig(dataset="manifest", manifest=str(out / "manifest.csv"), frames=4, image_size=32)
    item = build_dataset(data, "train", train=True)[0]
    assert item["video"].shape == (4, 3, 32, 32) and int(item["label"]) == 1


def test_rerun_does_no_work_and_settings_changes_redo(source, tmp_path, capsys):
    out = tmp_path / "prepared"
    _prepare(source, out, "--short-side", "32", "--gop", "4")
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.mp4")}
    code, report = _prepare(source, out, "--short-side", "32", "--gop", "4")
    assert (report["done"], report["skipped"], report["failed"]) == (0, 4, 1)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.mp4")} == stamps
    assert report["bytes"] == sum(stamps_path.stat().st_size for stamps_path in stamps)
    (out / ".prepare/mj.mp4.json").write_text("{")  # an unreadable record: that file is redone, nothing fails
    (out / "clips/other.mp4").write_bytes(b"half-written")  # a file that no longer matches its record: redone
    code, report = _prepare(source, out, "--short-side", "32", "--gop", "4")
    assert (report["done"], report["skipped"], report["failed"]) == (2, 2, 1)
    code, report = _prepare(source, out, "--short-side", "32", "--gop", "6")
    assert report["done"] == 4 and _longest_keyframe_gap(_facts(out / "mj.mp4")["keys"]) <= 6
    capsys.readouterr()


def test_fps_resamples_to_constant_rate(source, tmp_path, capsys):
    out = tmp_path / "half"
    _prepare(source, out, "--short-side", "32", "--fps", "4")
    got, src = _facts(out / "clips/long.mp4"), _facts(source / "clips/long.mp4")
    assert got["rate"] == 4 and abs(len(got["means"]) - 24) <= 1  # 48 frames at 8 fps = 6 s = 24 frames at 4 fps
    np.testing.assert_allclose(got["means"], src["means"][::2][: len(got["means"])], atol=2.0)
    capsys.readouterr()


def test_vp9_output(source, tmp_path):
    settings = prepare.PrepareSettings(short_side=32, gop=5, codec="vp9")
    entry = prepare.prepare_video(source / "clips/long.mp4", tmp_path, Path("x.webm"), settings)
    assert entry["status"] == "done", entry
    got, src = _facts(tmp_path / "x.webm"), _facts(source / "clips/long.mp4")
    assert got["codec"] == "vp9" and len(got["means"]) == 48 and _longest_keyframe_gap(got["keys"]) <= 5
    np.testing.assert_allclose(got["means"], src["means"], atol=2.0)


def test_leftovers_of_a_killed_run_are_removed(source, tmp_path):
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(gone.stdout)  # that process has exited and been reaped
    (tmp_path / "a").mkdir()
    stale, live = tmp_path / f"a/.long.mp4.{dead}.part", tmp_path / f"a/.long.mp4.{os.getppid()}.part"
    stale.write_bytes(b"half")
    live.write_bytes(b"another run's")  # its process (our parent) is running: kept
    entry = prepare.prepare_video(source / "clips/long.mp4", tmp_path, Path("a/long.mp4"), prepare.PrepareSettings())
    assert entry["status"] == "done" and not stale.exists() and live.read_bytes() == b"another run's"


def test_failed_verification_leaves_no_file(source, tmp_path, monkeypatch):
    def refuse(path, expected, gop):
        assert path.is_file()  # the temporary file exists while it is checked...
        raise ValueError("wrote 3 frames, expected 48 (within 1)")

    monkeypatch.setattr(prepare, "verify", refuse)
    entry = prepare.prepare_video(source / "clips/long.mp4", tmp_path, Path("a/long.mp4"), prepare.PrepareSettings())
    assert entry["status"] == "failed" and entry["error"] == "wrote 3 frames, expected 48 (within 1)"
    assert list((tmp_path / "a").iterdir()) == []  # ...and neither it nor a final file remains


def test_output_paths_mirror_the_tree_and_never_collide(tmp_path):
    from pcmci.data.records import LabelSet, VideoRecord, VideoSet

    sources = [tmp_path / "r/a/b.avi", tmp_path / "r/a/b.mp4", tmp_path / "r/c.avi", tmp_path / "elsewhere/d.avi"]
    videos = VideoSet(LabelSet(["x"]), [VideoRecord(p, 0, [], None) for p in sources], "test")
    got = prepare.output_paths(videos, tmp_path / "r", "h264")
    assert {str(k.relative_to(tmp_path)): v.as_posix() for k, v in got.items() if "elsewhere" not in str(k)} == {
        "r/a/b.avi": "a/b.avi.mp4", "r/a/b.mp4": "a/b.mp4.mp4", "r/c.avi": "c.mp4"}
    external = got[tmp_path / "elsewhere/d.avi"]
    assert external.parts[0] == "external" and external.name == "d.mp4"


def test_every_dataset_format_prepares_and_reads_back(tmp_path, capsys):
    """Breakfast and COIN (one label) get a manifest; multi-label Charades its annotations beside the videos; each
    prepared tree reads back with the same labels, steps and splits (missing source videos listed as failures)."""
    from test_data_formats import make_breakfast, make_charades, make_coin  # the fixture trees, public formats

    from pcmci.data.datasets import read_video_set

    makers = {"breakfast": make_breakfast, "coin": make_coin, "charades": make_charades}
    for name, make in makers.items():
        root = make(tmp_path / name)
        out = tmp_path / f"{name}-prepared"
        assert main(["--quiet", "data", "prepare", "--dataset", name, "--root", str(root), "--out", str(out),
                     "--short-side", "16", "--codec", "vp9"]) in (0, 1)
        report = json.loads((out / "prepare.json").read_text())
        before = read_video_set(DataConfig(dataset=name, root=str(root)))
        overrides = dict(kv.split("=", 1) for kv in report["use"].split())
        after = read_video_set(DataConfig(**{k.removeprefix("data."): v for k, v in overrides.items()}))
        assert after.labels == before.labels and after.multilabel == before.multilabel
        key = lambda r, base: (r.path.relative_to(base).with_suffix("").as_posix(), str(r.target), tuple(r.steps),
                               r.split)
        prepared = {key(r, root) for r in before.records if str(r.path) not in report["failures"]}
        assert {key(r, out) for r in after.records if r.path.is_file()} == prepared
        assert report["failed"] == sum(not r.path.is_file() for r in before.records)
        capsys.readouterr()



def test_prepare_refuses_to_write_over_its_sources(source, capsys):
    """``--out`` = the source tree would re-encode ``clips/long.mp4`` in place (same name for the mp4 codec) and
    rewrite the manifest: refused in one line, nothing touched."""
    before = {p: p.read_bytes() for p in source.rglob("*") if p.is_file()}
    code = main(["--quiet", "data", "prepare", "--dataset", "manifest", "--root", str(source), "--out", str(source)])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith(f"pcmci: error: --out {source} would write over source video ")
    assert {p: p.read_bytes() for p in source.rglob("*") if p.is_file()} == before


def test_prepare_refuses_an_out_holding_someone_elses_manifest(source, tmp_path, capsys):
    """Found by a bug hunt: a manifest.csv / labels.json in --out that no prepare wrote was replaced (rc 0)."""
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "manifest.csv").write_text("path,label\nmine.mp4,a\n")
    (out / "labels.json").write_text('{"classes": ["a"]}')
    code = main(["--quiet", "data", "prepare", "--dataset", "manifest", "--root", str(source), "--out", str(out)])
    assert code == 1 and capsys.readouterr().err == (
        f"pcmci: error: --out {out} holds manifest.csv, labels.json, not written by pcmci data prepare (no "
        "prepare.json); prepare into a new folder\n")
    assert (out / "manifest.csv").read_text() == "path,label\nmine.mp4,a\n" and sorted(os.listdir(out)) == [
        "labels.json", "manifest.csv"]


@pytest.mark.parametrize("jobs", ["0", "-2"])
def test_jobs_below_one_is_refused(source, tmp_path, capsys, jobs):
    """Found by a bug hunt: --jobs 0 or -2 ran one video at a time and recorded the number in prepare.json."""
    out = tmp_path / "out"
    code = main(["--quiet", "data", "prepare", "--dataset", "manifest", "--root", str(source), "--out", str(out),
                 "--jobs", jobs])
    assert code == 1 and capsys.readouterr().err == f"pcmci: error: --jobs must be >= 1, got {jobs}\n"
    assert not out.exists()


@pytest.mark.parametrize("fps", [float("inf"), float("nan"), 1e-300, 0.0, -1.0, 1e6])
def test_fps_outside_a_usable_range_is_refused(fps):
    with pytest.raises(prepare.ConfigError, match=r"fps between 0.001 and 1000.0"):
        prepare.PrepareSettings(fps=fps)


def test_a_symlink_loop_is_a_counted_failure(source, tmp_path):
    (source / "loopA").symlink_to(source / "loopB")
    (source / "loopB").symlink_to(source / "loopA")
    manifest = source / "manifest.csv"
    manifest.write_text(manifest.read_text() + "loopA,stir,test,\n")
    code, report = _prepare(source, tmp_path / "out", "--short-side", "32")
    assert code == 1 and report["failed"] == 2 and str(source / "loopA") in report["failures"]


def test_manifest_steps_are_kept_without_labels_json(tmp_path):
    """Found by a bug hunt: without labels.json (or one without actions) every step was dropped in silence."""
    (tmp_path / "manifest.csv").write_text("path,label,split,steps\na.mp4,x,train,rise;fall\nb.mp4,y,train,grow\n")
    videos = read_manifest_set(tmp_path / "manifest.csv")
    assert videos.labels.classes == ["x", "y"] and videos.labels.actions == ["fall", "grow", "rise"]
    assert [[videos.labels.actions[s] for s in r.steps] for r in videos.records] == [["rise", "fall"], ["grow"]]
    (tmp_path / "labels.json").write_text('{"classes": ["y", "x"]}')
    videos = read_manifest_set(tmp_path / "manifest.csv")
    assert videos.labels.classes == ["y", "x"] and videos.labels.actions == ["fall", "grow", "rise"]
