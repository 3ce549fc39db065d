"""Probe videos and decode selected frames behind one interface (backend registry: name -> function).

The PyAV backend seeks to the keyframe at or before each wanted frame and decodes only from there,
so sampling F frames from a minutes-long video costs about F short GOP decodes, not the whole video.
Frame i is the i-th frame in presentation order. Constant-rate streams map pts <-> index
arithmetically (any start timestamp); variable-rate streams, detected when probing or while
decoding, use the exact pts table of the demuxed packets. Every probe and decode runs under the watchdog
(``pcmci.data.watchdog``: a worker process that is killed when it overruns ``timeout``).
"""

from __future__ import annotations

import bisect
import io
import logging
import math
import os
import re
import sys
from dataclasses import dataclass
from fractions import Fraction
from itertools import chain
from pathlib import Path
from typing import Callable, Iterator, Sequence

import av
import numpy as np
import torch

from pcmci.data.records import Source, VideoDecodeError, VideoInfo
from pcmci.data.records import source_name as _name
from pcmci.data.sampling import segment_indices
from pcmci.data.watchdog import DECODE_TIMEOUT, guarded, with_thread_timeout
from pcmci.errors import ConfigError

log = logging.getLogger(__name__)

DECODE_THREADS = 2  # per open video at most; fewer when DataLoader workers already fill the cores
THREADED_MIN_PIXELS = 128 * 128  # smaller frames decode faster on one thread (threading overhead)
SEEK_GAP = 16  # decode forward instead of seeking when the next wanted frame is at most this far ahead
DALI_CPU_CODECS = frozenset({"vp8", "vp9", "mjpeg"})  # what DALI 2.4 decodes without a GPU


DecodeFn = Callable[[Source, Sequence[int], VideoInfo], np.ndarray]


def _open(source: Source) -> av.container.InputContainer:
    if not isinstance(source, bytes):
        file = Path(source)
        if not file.is_file():
            raise VideoDecodeError(source, "a folder, not a video file" if file.is_dir() else "file not found")
        if file.stat().st_size == 0:
            raise VideoDecodeError(source, "empty file")
    elif not source:
        raise VideoDecodeError(source, "empty file")
    try:
        container = av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source))
    except av.error.FFmpegError as err:
        raise VideoDecodeError(source, f"not a video / corrupt: {err}") from err
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(source, "not a video / corrupt: no video stream")
    return container


def _packet_pts(container: av.container.InputContainer, source: Source, rewind: bool = False) -> list[int]:
    """Sorted presentation timestamps of all video packets (demuxing only, no decoding)."""
    stream = container.streams.video[0]
    try:
        if rewind:
            container.seek(stream.start_time or 0, stream=stream)
        return sorted(p.pts for p in container.demux(stream) if p.size and p.pts is not None)
    except av.error.FFmpegError as err:
        raise VideoDecodeError(source, f"not a video / corrupt: {err}") from err


def _duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> tuple[float, bool]:
    """(seconds, whether they are the video's own): the stream's duration, else the ``DURATION`` tag FFmpeg's
    Matroska muxer writes per track (``HH:MM:SS.nnnnnnnnn``), else the container's (which spans every stream);
    (0.0, False) when none is known."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base), True
    tag = re.fullmatch(r"(\d+):(\d+):(\d+(?:\.\d*)?)", stream.metadata.get("DURATION", "").strip())
    if tag:
        return 3600 * int(tag[1]) + 60 * int(tag[2]) + float(tag[3]), True
    if container.duration:
        return container.duration / av.time_base, False
    return 0.0, False


def _check_promise(container: av.container.InputContainer, stream: av.video.stream.VideoStream, pts: list[int],
                   fps: float, source: Source) -> None:
    """``VideoDecodeError`` when the demuxed frames fall short of what the container promises.

    The stream's frame count (MP4 sample table, AVI index), when present, is exact: one frame of slack (an edit
    list may hide a leading frame). Otherwise the duration (:func:`_duration`) is compared with the time the frames
    span (first to last timestamp plus one frame; right for variable rates too) and with the last frame's end time
    (Matroska counts from time 0); the file is short when both fall short. The video's own duration gets two
    frames of slack (the last frame's length rounds); a container-wide one also spans audio tracks, which commonly
    outlast the video by a few hundred milliseconds, so a file with other streams gets a second.
    """
    if stream.frames:
        if len(pts) < stream.frames - 1:
            raise VideoDecodeError(source, f"truncated or damaged: the container promises {stream.frames} frames "
                                           f"(its frame count) but holds {len(pts)}")
        return
    seconds, own = _duration(container, stream)
    if not fps or not stream.time_base or not seconds:
        return
    slack = 2 / fps if own or len(container.streams) == 1 else max(2 / fps, 1.0)
    end = float(pts[-1] * stream.time_base) + 1 / fps
    span = float((pts[-1] - pts[0]) * stream.time_base) + 1 / fps
    if max(span, end) < seconds - slack:
        raise VideoDecodeError(source, f"truncated or damaged: the container promises {seconds:.4g} s at {fps:.4g} "
                                       f"fps ({round(seconds * fps)} frames) but its {len(pts)} frames span "
                                       f"{span:.4g} s")


def probe(source: Source) -> VideoInfo:
    """Stream facts of ``source``; frames counted by demuxing every packet (no decoding).

    The count is checked against what the container promises (its frame count, else duration x rate): a file
    holding fewer frames than promised (truncated, or a lying header) raises ``VideoDecodeError`` naming both
    numbers. The rate is taken as variable (``cfr=False``) when demuxed timestamps stray from the average rate
    by half a frame.
    """
    with _open(source) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        clock = _Clock.of(stream)
        pts = _packet_pts(container, source)
        num_frames = len(pts)
        if num_frames == 0:
            raise VideoDecodeError(source, "not a video / corrupt: no video frames")
        _check_promise(container, stream, pts, fps, source)
        cfr = clock is not None and all(abs(clock.index(p) - i) < 0.5 for i, p in enumerate(pts))
        duration = _duration(container, stream)[0] or (num_frames / fps if fps else 0.0)
        ctx = stream.codec_context
        return VideoInfo(_name(source), num_frames, fps, duration, ctx.width, ctx.height, ctx.name, cfr)


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

    def seek_pts(self, index: int) -> int:
        return self.start + math.floor(max(index - 0.5, 0) * self.step)

    def index(self, pts: int) -> float:
        return float((pts - self.start) / self.step)


@dataclass(frozen=True)
class _Table:
    """Frame index <-> pts from the sorted packet timestamps (variable frame rate)."""

    pts: list[int]

    def seek_pts(self, index: int) -> int:
        return self.pts[index]

    def index(self, pts: int) -> float:
        return float(bisect.bisect_left(self.pts, pts))


class _Irregular(Exception):
    """Decoded timestamps do not follow the constant-rate clock: switch to the pts table."""


def _frames_from(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    clock: _Clock | _Table,
    target: int,
    source: Source,
) -> Iterator[tuple[int, av.VideoFrame]]:
    """(index, frame) pairs decoded from the keyframe at or before frame ``target`` onwards."""
    for offset in (clock.seek_pts(target), clock.seek_pts(0)):  # the second: the seek overshot, restart
        container.seek(offset, stream=stream)
        frames = container.decode(stream)
        first = next(frames, None)
        if first is None or first.pts is None or round(clock.index(first.pts)) <= target:
            break
    previous = None
    for frame in chain([first] if first is not None else [], frames):
        if frame.pts is None:
            raise VideoDecodeError(source, "not a video / corrupt: frame without timestamp")
        exact = clock.index(frame.pts)
        index = round(exact)
        if isinstance(clock, _Clock) and (abs(exact - index) > 0.25 or previous not in (None, index - 1)):
            raise _Irregular
        previous = index
        yield index, frame


def _decode_with(
    container: av.container.InputContainer, clock: _Clock | _Table, wanted: list[int], source: Source
) -> dict[int, np.ndarray]:
    """Frames ``wanted`` (sorted, unique) as RGB arrays; each index gets the first frame at or after it."""
    stream = container.streams.video[0]
    frames: Iterator[tuple[int, av.VideoFrame]] = iter(())
    current: tuple[int, np.ndarray] | None = None
    decoded = 0
    got = {}
    for target in wanted:
        if current is None or current[0] < target:
            if current is None or target - current[0] > SEEK_GAP:
                frames = _frames_from(container, stream, clock, target, source)
            for index, frame in frames:
                decoded = max(decoded, index + 1)
                if index >= target:
                    current = (index, frame.to_ndarray(format="rgb24"))
                    break
            else:
                raise VideoDecodeError(source, f"has {decoded} frames, fewer than the {wanted[-1] + 1} requested")
        got[target] = current[1]
    return got


def _decode_threads(info: VideoInfo) -> int:
    """Decoder threads: 1 for small frames, else the cores per DataLoader worker, at most DECODE_THREADS."""
    if info.width * info.height < THREADED_MIN_PIXELS:
        return 1
    worker = torch.utils.data.get_worker_info()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(DECODE_THREADS, cores // (worker.num_workers if worker else 1)))


def _decode_pyav(source: Source, indices: Sequence[int], info: VideoInfo) -> np.ndarray:
    """uint8 [len(indices), H, W, 3] RGB, seeking to keyframes."""
    wanted = sorted(set(indices))
    with _open(source) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_type = "AUTO"
        stream.codec_context.thread_count = _decode_threads(info)
        try:
            clock = _Clock.of(stream) if info.cfr else None
            try:
                got = _decode_with(container, clock or _Table(_packet_pts(container, source)), wanted, source)
            except _Irregular:
                log.debug("%s: timestamps are not constant-rate; using the packet pts table", _name(source))
                got = _decode_with(container, _Table(_packet_pts(container, source, rewind=True)), wanted, source)
        except av.error.FFmpegError as err:
            raise VideoDecodeError(source, f"not a video / corrupt: {err}") from err
    return np.stack([got[i] for i in indices])


def _decode_dali(source: Source, indices: Sequence[int], info: VideoInfo) -> np.ndarray:
    from pcmci.data.dali import decode_cpu

    return decode_cpu(source, indices, info)


_BACKENDS: dict[str, DecodeFn] = {"pyav": _decode_pyav, "dali": _decode_dali}
_announced: set[tuple[str, str]] = set()


def choose_backend(requested: str, codec: str) -> str:
    """The per-video backend: ``pyav``, or ``dali`` (DALI-CPU) for VP8/VP9/MJPEG when requested.

    ``auto`` decodes per video with PyAV (DALI on GPU runs as a batch loader, see ``pcmci.data.dali``).
    The choice is logged once per (requested, codec).
    """
    if requested not in (*_BACKENDS, "auto"):
        raise ConfigError(f"unknown decode backend {requested!r}; valid backends: auto, {', '.join(_BACKENDS)}")
    chosen = "dali" if requested == "dali" and codec in DALI_CPU_CODECS else "pyav"
    if (requested, codec) not in _announced:
        _announced.add((requested, codec))
        why = "" if chosen == requested else f" (DALI-CPU cannot decode {codec})" if requested == "dali" else ""
        log.info("data: backend=%s decodes %s videos with %s%s", requested, codec, chosen, why)
    return chosen


def decode_frames(
    source: Source,
    indices: Sequence[int],
    backend: str = "pyav",
    info: VideoInfo | None = None,
    timeout: float = DECODE_TIMEOUT,
) -> tuple[np.ndarray, VideoInfo]:
    """Decode frames ``indices`` of a file or encoded bytes -> (uint8 [len(indices), H, W, 3] RGB, VideoInfo).

    ``info`` (from :func:`probe`) skips probing again. Raises ``VideoDecodeError`` when the video is
    missing, empty, corrupt, shorter than ``max(indices) + 1`` frames or slower than ``timeout``
    seconds; ``ValueError`` for an unknown ``backend`` or bad indices.
    """
    if backend not in (*_BACKENDS, "auto"):
        raise ConfigError(f"unknown decode backend {backend!r}; valid backends: auto, {', '.join(_BACKENDS)}")
    if len(indices) == 0 or min(indices) < 0:
        raise ValueError(f"indices must be a non-empty sequence of frame numbers >= 0, got {list(indices)}")

    if backend == "dali" and _dali_built():  # DALI does not survive a fork: watch it in-process
        return with_thread_timeout(timeout, source, lambda: _probe_and_decode(source, list(indices), backend, info))
    return guarded(timeout, source, _probe_and_decode, source, list(indices), backend, info)


def _dali_built() -> bool:
    """Whether a DALI pipeline was built in this process or one it was forked from (DALI imported only if so)."""
    module = sys.modules.get("pcmci.data.dali")
    return module is not None and module.built_pipelines()


def _probe_and_decode(source: Source, indices: list[int], backend: str,
                      info: VideoInfo | None) -> tuple[np.ndarray, VideoInfo]:
    """The body of :func:`decode_frames` (module level: it runs in the decode worker)."""
    facts = info or probe(source)
    if max(indices) >= facts.num_frames:
        raise VideoDecodeError(source, f"has {facts.num_frames} frames, fewer than the {max(indices) + 1} requested")
    return _BACKENDS[choose_backend(backend, facts.codec)](source, indices, facts), facts


def sample_clip(
    source: Source,
    frames: int,
    train: bool,
    generator: torch.Generator | None = None,
    backend: str = "pyav",
    info: VideoInfo | None = None,
    timeout: float = DECODE_TIMEOUT,
    pad: bool = False,
) -> tuple[np.ndarray, VideoInfo]:
    """Segment-sample ``frames`` frames -> (uint8 [frames, H, W, 3] RGB, VideoInfo). A video shorter than
    ``frames`` raises ``VideoDecodeError``, or with ``pad`` follows :func:`~pcmci.data.sampling.segment_indices`."""
    info = info or guarded(timeout, source, probe, source)
    check_length(source, info, frames, pad)
    indices = segment_indices(info.num_frames, frames, train, generator, pad)
    return decode_frames(source, indices, backend, info, timeout)


def check_length(source: Source, info: VideoInfo, frames: int, pad: bool) -> None:
    """``VideoDecodeError`` when the video has fewer than ``frames`` frames and may not be padded."""
    if info.num_frames < frames and not pad:
        raise VideoDecodeError(source, f"has {info.num_frames} frames, fewer than the {frames} requested "
                                       "(data.pad_short_videos=true repeats frames instead)")
