"""Truncated files are caught in probing, in `data inspect` and in training, for every codec the tests make.

Each video has 38 frames at 8 fps (its container promises 4.75 s); it is cut at several byte offsets. The references
are independent of pcmci's decoder: a plain sequential PyAV decode of the cut file (the frames it yields before
the first error: "damaged" when fewer than 38), and PyAV's own count of the packets it demuxes (what probing can
see without decoding: a cut inside the last packet leaves the count whole, so only the decode of the last frame
in ``data inspect`` can find it).
"""
from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from pcmci.cli import main
from pcmci.data.datasets import VideoDataset, collate_videos
from pcmci.data.decode import probe
from pcmci.data.records import LabelSet, VideoDecodeError, VideoRecord, VideoSet

FRAMES, FPS = 38, 8
CUTS = (0.25, 0.5, 0.75, 0.9, 0.99)
# name -> (encoder, suffix, muxer options); h264 twice: MP4's index (moov) at the end, as muxers write it by
# default (a cut loses it), and at the front ("faststart", as web videos come), where the index outlives the data.
KINDS = {
    "vp9": ("libvpx-vp9", "webm", {}),
    "h264": ("libx264", "mp4", {}),
    "h264-faststart": ("libx264", "mp4", {"movflags": "+faststart"}),
    "mjpeg": ("mjpeg", "avi", {}),
}


def _write(path: Path, encoder: str, options: dict[str, str]) -> None:
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream(encoder, rate=Fraction(FPS))
        stream.width, stream.height = 48, 32
        stream.pix_fmt = "yuvj420p" if encoder == "mjpeg" else "yuv420p"
        stream.options = {"g": "8", **({"deadline": "realtime", "cpu-used": "8"} if encoder == "libvpx-vp9" else {})}
        for i in range(FRAMES):
            img = np.full((32, 48, 3), 6 * i, np.uint8)
            img[:, i % 48] = 255
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        container.mux(stream.encode())


def _decodable(path: Path) -> int:
    """Frames a plain sequential PyAV decode yields before its first error (0 when the file does not open)."""
    count = 0
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return 0
            for _ in container.decode(video=0):
                count += 1
    except (av.error.FFmpegError, OSError):
        pass
    return count


def _packets(path: Path) -> int:
    """Video packets a plain PyAV demux yields (0 when the file does not open)."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return 0
            return sum(1 for packet in container.demux(video=0) if packet.size)
    except (av.error.FFmpegError, OSError):
        return 0


@pytest.fixture(scope="module")
def cut_files(tmp_path_factory) -> dict[str, tuple[Path, int]]:
    """name -> (file, frames the reference decodes, packets it demuxes); the originals are named ``<kind>-full``."""
    root = tmp_path_factory.mktemp("cut")
    files = {}
    for kind, (encoder, suffix, options) in KINDS.items():
        full = root / f"{kind}-full.{suffix}"
        _write(full, encoder, options)
        assert _decodable(full) == FRAMES
        files[f"{kind}-full"] = (full, FRAMES, FRAMES)
        data = full.read_bytes()
        for cut in CUTS:
            path = root / f"{kind}-{round(cut * 100)}.{suffix}"
            path.write_bytes(data[: int(len(data) * cut)])
            files[path.stem] = (path, _decodable(path), _packets(path))
    return files


@pytest.mark.parametrize("kind", KINDS)
def test_probe_names_files_that_hold_fewer_frames_than_promised(cut_files, kind):
    assert probe(cut_files[f"{kind}-full"][0]).num_frames == FRAMES
    for cut in CUTS:
        path, decodable, packets = cut_files[f"{kind}-{round(cut * 100)}"]
        if packets < FRAMES - 1:  # more than the one frame of slack probing allows (see _check_promise)
            with pytest.raises(VideoDecodeError, match=f"cannot decode {path}: "):
                probe(path)
        else:  # the cut took trailing index bytes or the last packet's tail: probing passes, inspect decodes the end
            assert probe(path).num_frames == packets


def test_issue_example_webm_cut_to_a_third_is_named(cut_files):
    """A WebM cut to about a third used to probe as a short video although its header says 4.75 s at 8 fps."""
    path, decodable, _ = cut_files["vp9-25"]
    assert 0 < decodable < FRAMES // 2  # the cut keeps a playable head: the case that used to pass silently
    with pytest.raises(VideoDecodeError, match=r"the container promises 4\.75 s at 8 fps \(38 frames\) but its"):
        probe(path)


def test_inspect_lists_every_cut_file_missing_frames(cut_files, tmp_path, capsys):
    rows = ["path,label,split"] + [f"{path},a,train" for path, _, _ in cut_files.values()]
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    assert main(["--quiet", "data", "inspect", "--dataset", "manifest", "--root", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    short = sorted(str(path) for path, decodable, _ in cut_files.values() if decodable < FRAMES)
    assert report["undecodable"] == short
    assert len(short) >= 3 * len(CUTS)  # every cut of every kind but the ones that only lost trailing index bytes


def test_training_counts_or_names_cut_files(cut_files):
    bad = [path for path, _, packets in cut_files.values() if packets < FRAMES - 1]
    good = [path for name, (path, _, _) in cut_files.items() if name.endswith("-full")]
    records = [VideoRecord(p, 0, [], "train") for p in good + bad]
    videos = VideoSet(LabelSet(["a"]), records, "test")
    skipping = VideoDataset(videos, frames=8, image_size=32, train=True, skip_bad=True, timeout=10)
    batch = collate_videos([skipping[i] for i in range(len(records))])
    assert batch["video"].shape[0] == len(good)
    assert sorted(entry.split(": ")[0] for entry in batch["bad"]) == sorted(map(str, bad))
    strict = VideoDataset(videos, frames=8, image_size=32, train=True, timeout=10)
    with pytest.raises(VideoDecodeError, match=f"cannot decode {bad[0]}: "):
        strict[len(good)]


def test_webm_whose_audio_outlasts_the_video_is_whole_and_its_cut_is_not(tmp_path):
    """The container's duration covers the audio (3 s longer here); the video track's DURATION tag is the promise."""
    path = tmp_path / "av.webm"
    with av.open(str(path), "w") as container:
        video = container.add_stream("libvpx-vp9", rate=Fraction(FPS))
        video.width, video.height, video.pix_fmt = 48, 32, "yuv420p"
        video.options = {"g": "8", "deadline": "realtime", "cpu-used": "8"}
        audio = container.add_stream("libopus", rate=48000)
        for i in range(FRAMES):
            container.mux(video.encode(av.VideoFrame.from_ndarray(np.full((32, 48, 3), 6 * i, np.uint8), "rgb24")))
        for start in range(0, 48000 * (FRAMES // FPS + 4), 960):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 960), np.float32), format="flt", layout="mono")
            frame.sample_rate, frame.pts = 48000, start
            container.mux(audio.encode(frame))
        container.mux(audio.encode())
        container.mux(video.encode())
    with av.open(str(path)) as container:
        assert container.duration / av.time_base > FRAMES / FPS + 2  # the container-wide promise is the audio's
    assert probe(path).num_frames == FRAMES
    cut = tmp_path / "av-cut.webm"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    assert 0 < _packets(cut) < FRAMES - 1
    with pytest.raises(VideoDecodeError, match=r"truncated or damaged: the container promises 4\.75 s"):
        probe(cut)
