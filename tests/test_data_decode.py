import logging
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from pcmci.data.decode import VideoDecodeError, decode_frames, probe, sample_clip


def write_video(
    path: Path, frames: int, codec: str = "libvpx-vp9", gop: int = 10, rate: Fraction = Fraction(8)
) -> np.ndarray:
    """Write a 32x48 video whose frame i shows a moving bar and brightness i; return its RGB frames."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height = 48, 32
        stream.pix_fmt = "yuv420p"
        fast = {"deadline": "realtime", "cpu-used": "8"} if codec == "libvpx-vp9" else {}
        stream.options = {"g": str(gop), **fast}
        for i in range(frames):
            img = np.full((32, 48, 3), 2 * i % 256, np.uint8)
            img[:, i % 48] = 255
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        container.mux(stream.encode())
    with av.open(str(path)) as container:  # reference: plain sequential decode of every frame
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    return {
        "vp9": (root / "a.webm", write_video(root / "a.webm", 120)),
        # B-frames and an NTSC rate: pts order != decode order, non-integer pts per frame
        "h264": (root / "b.mp4", write_video(root / "b.mp4", 120, "libx264", 12, Fraction(30000, 1001))),
    }


@pytest.mark.parametrize("name", ["vp9", "h264"])
def test_probe_and_exact_frame_count(videos, name):
    path, full = videos[name]
    info = probe(path)
    assert (info.num_frames, info.width, info.height) == (120, 48, 32) == (len(full), 48, 32)
    assert info.codec == name and info.fps > 0 and info.duration > 0
    frames, info2 = decode_frames(path, list(range(120)))
    assert frames.shape == (120, 32, 48, 3) and frames.dtype == np.uint8
    assert info2 == info
    np.testing.assert_array_equal(frames, full)


@pytest.mark.parametrize("name", ["vp9", "h264"])
@pytest.mark.parametrize(
    "indices",
    [[5, 37, 70, 111], [119], [3, 100, 50, 50, 7], [18, 19, 40, 41, 80, 119], list(range(0, 120, 17))],
)
def test_sparse_seeking_decode_equals_sequential(videos, name, indices):
    path, full = videos[name]
    frames, _ = decode_frames(path, indices)
    np.testing.assert_array_equal(frames, full[indices])


def test_sample_clip_uses_segment_centres(videos):
    path, full = videos["vp9"]
    frames, info = sample_clip(path, 8, train=False)
    np.testing.assert_array_equal(frames, full[[7, 22, 37, 52, 67, 82, 97, 112]])


def test_missing_file(tmp_path):
    path = tmp_path / "nope.webm"
    with pytest.raises(VideoDecodeError, match="file not found") as err:
        decode_frames(path, [0])
    assert err.value.path == str(path) and err.value.cause == "file not found"
    assert str(path) in str(err.value)
    with pytest.raises(VideoDecodeError, match="a folder, not a video file"):
        decode_frames(tmp_path, [0])


def test_zero_length_file(tmp_path):
    path = tmp_path / "empty.webm"
    path.touch()
    with pytest.raises(VideoDecodeError, match=f"cannot decode {path}: empty file"):
        probe(path)


def test_corrupt_file(tmp_path):
    path = tmp_path / "noise.webm"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(VideoDecodeError, match="not a video / corrupt: "):
        decode_frames(path, [0])


def test_too_short_video_is_padded_by_the_rule(tmp_path):
    path = tmp_path / "short.webm"
    full = write_video(path, 5)
    with pytest.raises(VideoDecodeError, match="has 5 frames, fewer than the 8 requested .*pad_short_videos"):
        sample_clip(path, 8, train=False)
    frames, _ = sample_clip(path, 8, train=False, pad=True)
    np.testing.assert_array_equal(frames, full[[0, 0, 1, 2, 2, 3, 4, 4]])
    with pytest.raises(VideoDecodeError, match="has 5 frames, fewer than the 7 requested"):
        decode_frames(path, [0, 6])


@pytest.mark.parametrize("suffix", [".webm", ".mp4"])
def test_truncated_file_raises(tmp_path, suffix):
    path = tmp_path / f"cut{suffix}"
    codec = "libvpx-vp9" if suffix == ".webm" else "libx264"
    write_video(path, 120, codec)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(VideoDecodeError, match=str(path)):
        decode_frames(path, [5, 110])


def test_unknown_backend_names_the_valid_ones(videos):
    with pytest.raises(ValueError, match="valid backends: auto, pyav, dali"):
        decode_frames(videos["vp9"][0], [0], backend="nvdec")


def write_timed(path: Path, pts: list[int], codec: str, time_base: Fraction) -> np.ndarray:
    """A video whose frame i has presentation time ``pts[i] * time_base``; returns its frames decoded in order."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(8))
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        stream.time_base = stream.codec_context.time_base = time_base
        stream.options = {"g": "10", **({"deadline": "realtime", "cpu-used": "8"} if codec == "libvpx-vp9" else {})}
        for i, t in enumerate(pts):
            img = np.full((32, 48, 3), 3 * i % 256, np.uint8)
            img[:, i % 48] = 255
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = t, time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.mark.parametrize("codec,suffix", [("libvpx-vp9", ".webm"), ("libx264", ".mkv")])
@pytest.mark.parametrize(
    "kind,pts",
    [
        ("vfr", [0, 1, 2, 3, 6, 7, 8, 20, 21, 22, 23, 24, 25, 40, 41, 42, 43, 44, 45, 46]),
        ("late start", list(range(400, 460))),
    ],
)
def test_variable_rate_and_late_start_decode_exactly(tmp_path, codec, suffix, kind, pts):
    if kind == "vfr":
        pts = sorted({p + 50 * k for k in range(3) for p in pts})  # 60 frames, gaps of 1 to 12 ticks
    full = write_timed(tmp_path / f"v{suffix}", pts, codec, Fraction(1, 8))
    path = tmp_path / f"v{suffix}"
    info = probe(path)
    assert info.num_frames == len(pts) == len(full) and info.cfr == (kind != "vfr")
    for indices in ([3, 25, 40, 59], [59], [0, 7, 8, 9, 30], list(range(0, 60, 7))):
        np.testing.assert_array_equal(decode_frames(path, indices)[0], full[indices])


def test_open_gop_h264(tmp_path):
    path = tmp_path / "open.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(25))
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        stream.options = {"x264-params": "open-gop=1:keyint=12:min-keyint=12:bframes=3:b-pyramid=none:scenecut=0"}
        for i in range(96):
            img = np.full((32, 48, 3), 2 * i, np.uint8)
            img[:, i % 48] = 255
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        container.mux(stream.encode())
    with av.open(str(path)) as container:
        full = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert len(full) == 96
    for indices in ([10, 11, 12, 13, 35, 36], [22, 23, 24, 47, 48, 71, 95], list(range(5, 96, 11))):
        np.testing.assert_array_equal(decode_frames(path, indices)[0], full[indices])


def test_bytes_source(videos):
    path, full = videos["h264"]
    frames, info = decode_frames(path.read_bytes(), [4, 90])
    np.testing.assert_array_equal(frames, full[[4, 90]])
    assert info.path.startswith("<") and info.num_frames == 120


def test_backend_choice_is_logged_once_per_codec(caplog):
    from pcmci.data import decode

    caplog.set_level(logging.INFO, logger="pcmci.data.decode")
    decode._announced.clear()
    assert [decode.choose_backend(b, c) for b, c in [("dali", "vp9"), ("dali", "h264"), ("dali", "h264"),
                                                     ("auto", "vp9"), ("pyav", "mjpeg")]] == [
        "dali", "pyav", "pyav", "pyav", "pyav"]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 4 and "DALI-CPU cannot decode h264" in messages[1]


def test_far_apart_frames_are_reached_by_seeking(videos, monkeypatch):
    from pcmci.data import decode

    targets = []
    original = decode._frames_from

    def record(container, stream, clock, target, path):
        targets.append(target)
        return original(container, stream, clock, target, path)

    monkeypatch.setattr(decode, "_frames_from", record)
    decode_frames(videos["vp9"][0], [18, 19, 40, 41, 50, 119], timeout=0)  # in this process, where the patch is
    assert targets == [18, 40, 119]  # 50 is within SEEK_GAP of 41: decoded forward
