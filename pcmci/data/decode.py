"""Probe videos and decode selected frames behind one interface (backend registry: name -> function).

The PyAV backend seeks to the keyframe at or before each wanted frame and decodes only from there,
so sampling F frames from a minutes-long video costs about F short GOP decodes, not the whole video.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from itertools import chain
from pathlib import Path
from typing import Callable, Iterator, Sequence

import av
import numpy as np
import torch

from pcmci.data.sampling import segment_indices

DECODE_THREADS = 2  # per open video; keeps DataLoader workers from oversubscribing small CPUs
THREADED_MIN_PIXELS = 128 * 128  # smaller frames decode faster on one thread (threading overhead)
SEEK_GAP = 16  # decode forward instead of seeking when the next wanted frame is at most this far ahead


class VideoDecodeError(RuntimeError):
    """A video that cannot give the requested frames; ``path`` and ``cause`` name what and why."""

    def __init__(self, path: str | Path, cause: str) -> None:
        self.path = str(path)
        self.cause = cause
        super().__init__(f"cannot decode {path}: {cause}")


@dataclass
class VideoInfo:
    """Stream facts of the first video stream (``duration`` in seconds)."""

    path: str
    num_frames: int
    fps: float
    duration: float
    width: int
    height: int
    codec: str


DecodeFn = Callable[[str, Sequence[int], VideoInfo], np.ndarray]


def _open(path: str | Path) -> av.container.InputContainer:
    file = Path(path)
    if not file.is_file():
        raise VideoDecodeError(path, "file not found")
    if file.stat().st_size == 0:
        raise VideoDecodeError(path, "empty file")
    try:
        container = av.open(str(file))
    except av.error.FFmpegError as err:
        raise VideoDecodeError(path, f"not a video / corrupt: {err}") from err
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(path, "not a video / corrupt: no video stream")
    return container


def probe(path: str | Path) -> VideoInfo:
    """Stream facts of ``path``; frames counted from the header, else by demuxing (no decoding)."""
    with _open(path) as container:
        stream = container.streams.video[0]
        try:
            num_frames = stream.frames or sum(1 for p in container.demux(stream) if p.size)
        except av.error.FFmpegError as err:
            raise VideoDecodeError(path, f"not a video / corrupt: {err}") from err
        if num_frames == 0:
            raise VideoDecodeError(path, "not a video / corrupt: no video frames")
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        if stream.duration and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        elif container.duration:
            duration = container.duration / av.time_base
        else:
            duration = num_frames / fps if fps else 0.0
        ctx = stream.codec_context
        return VideoInfo(str(path), num_frames, fps, duration, ctx.width, ctx.height, ctx.name)


@dataclass(frozen=True)
class _Clock:
    """Frame index <-> pts of a constant-rate stream."""

    start: int  # pts of frame 0
    step: Fraction  # pts per frame

    @classmethod
    def of(cls, stream: av.video.stream.VideoStream) -> _Clock | None:
        rate = stream.average_rate or stream.guessed_rate
        if not rate or not stream.time_base:
            return None
        return cls(stream.start_time or 0, 1 / (Fraction(rate) * stream.time_base))

    def pts(self, index: float) -> int:
        return self.start + math.floor(max(index, 0) * self.step)

    def index(self, pts: int) -> int:
        return round((pts - self.start) / self.step)


def _frames_from(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    clock: _Clock,
    target: int,
    path: str,
) -> Iterator[tuple[int, av.VideoFrame]]:
    """(index, frame) pairs decoded from the keyframe at or before frame ``target`` onwards."""
    for offset in (clock.pts(target - 0.5), None):  # None: the seek overshot, restart at the start
        container.seek(clock.start if offset is None else offset, stream=stream)
        frames = container.decode(stream)
        first = next(frames, None)
        if first is None or first.pts is None or clock.index(first.pts) <= target:
            break
    for frame in chain([first] if first is not None else [], frames):
        if frame.pts is None:
            raise VideoDecodeError(path, "not a video / corrupt: frame without timestamp")
        yield clock.index(frame.pts), frame


def _decode_pyav(path: str, indices: Sequence[int], info: VideoInfo) -> np.ndarray:
    """uint8 [len(indices), H, W, 3] RGB; each index gets the first frame at or after it."""
    wanted = sorted(set(indices))
    got: dict[int, np.ndarray] = {}
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_type = "AUTO"
        threaded = info.width * info.height >= THREADED_MIN_PIXELS
        stream.codec_context.thread_count = DECODE_THREADS if threaded else 1
        clock = _Clock.of(stream)
        frames: Iterator[tuple[int, av.VideoFrame]] = enumerate(container.decode(stream))
        current: tuple[int, np.ndarray] | None = None
        decoded = 0
        try:
            for target in wanted:
                if current is None or current[0] < target:
                    if clock is not None and (current is None or target - current[0] > SEEK_GAP):
                        frames = _frames_from(container, stream, clock, target, path)
                    for index, frame in frames:
                        decoded = max(decoded, index + 1)
                        if index >= target:
                            current = (index, frame.to_ndarray(format="rgb24"))
                            break
                    else:
                        raise VideoDecodeError(
                            path, f"has {decoded} frames, fewer than the {wanted[-1] + 1} requested"
                        )
                got[target] = current[1]
        except av.error.FFmpegError as err:
            raise VideoDecodeError(path, f"not a video / corrupt: {err}") from err
    return np.stack([got[i] for i in indices])


_BACKENDS: dict[str, DecodeFn] = {"pyav": _decode_pyav}


def decode_frames(
    path: str | Path, indices: Sequence[int], backend: str = "pyav", info: VideoInfo | None = None
) -> tuple[np.ndarray, VideoInfo]:
    """Decode frames ``indices`` of ``path`` -> (uint8 [len(indices), H, W, 3] RGB, its VideoInfo).

    ``info`` (from :func:`probe`) skips probing again. Raises ``VideoDecodeError`` when the video is
    missing, empty, corrupt or shorter than ``max(indices) + 1`` frames; ``ValueError`` for an
    unknown ``backend``.
    """
    if backend not in _BACKENDS:
        raise ValueError(f"unknown decode backend {backend!r}; valid backends: {', '.join(_BACKENDS)}")
    if len(indices) == 0 or min(indices) < 0:
        raise ValueError(f"indices must be a non-empty sequence of frame numbers >= 0, got {indices}")
    info = info or probe(path)
    if max(indices) >= info.num_frames:
        raise VideoDecodeError(
            path, f"has {info.num_frames} frames, fewer than the {max(indices) + 1} requested"
        )
    return _BACKENDS[backend](str(path), indices, info), info


def sample_clip(
    path: str | Path,
    frames: int,
    train: bool,
    generator: torch.Generator | None = None,
    backend: str = "pyav",
    info: VideoInfo | None = None,
) -> tuple[np.ndarray, VideoInfo]:
    """Segment-sample ``frames`` frames of ``path`` -> (uint8 [frames, H, W, 3] RGB, its VideoInfo)."""
    info = info or probe(path)
    if info.num_frames < frames:
        raise VideoDecodeError(path, f"has {info.num_frames} frames, fewer than the {frames} requested")
    return decode_frames(path, segment_indices(info.num_frames, frames, train, generator), backend, info)
