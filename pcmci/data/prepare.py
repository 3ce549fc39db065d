"""``pcmci data prepare``: re-encode a dataset for random access, with a manifest the adapters read.

Raw long-GOP videos cost about (GOP + 1) / 2 decoded frames per sampled frame. Each video is re-encoded to a
constant frame rate, a keyframe every ``gop`` frames (closed GOPs, no scene-cut keyframes in between), the
shorter side scaled down to ``short_side`` (never up), yuv420p, in a codec NVDEC and PyAV read (H.264 in MP4 with
the index in front, or VP9 in WebM, which DALI-CPU reads too). Every output is written to a temporary name,
verified (frame count within 1 of the source's, or of duration x rate when the source's rate varies or ``fps``
changes it; first and last frame decode; no keyframe gap over ``gop`` frames) and only then renamed into place, so
an interrupted run leaves no half-written video. A record per video under ``OUT/.prepare/`` (source size, mtime,
settings, output size) lets a rerun skip finished files. ``OUT/manifest.csv`` + ``OUT/labels.json`` keep every
label, split and step of the source dataset (same class order); multi-label Charades, which the one-label manifest
cannot hold, gets its annotation files copied beside the videos instead, for its own adapter. ``OUT/prepare.json``
reports sizes, durations, failures, time and the overrides that train on the prepared tree.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import math
import multiprocessing
import os
import shutil
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import av
from tqdm import tqdm

from pcmci.data.datasets import read_video_set
from pcmci.data.decode import decode_frames, probe
from pcmci.data.formats import CHARADES_FILES, CHARADES_TEMPLATE
from pcmci.data.records import VideoDecodeError, VideoSet
from pcmci.errors import ConfigError

if TYPE_CHECKING:
    from pcmci.config import DataConfig

# codec -> (encoder, container format, file suffix)
# HEVC is not offered: libx265 in the PyAV 18 wheel corrupted the heap (a crash at close) in most test runs here.
CODECS = {"h264": ("libx264", "mp4", ".mp4"), "vp9": ("libvpx-vp9", "webm", ".webm")}
RECORDS = ".prepare"  # OUT/.prepare/<relative path>.json: what each finished file was made from


MIN_FPS, MAX_FPS = 0.001, 1000.0  # --fps range: a finite rate the encoder's 1/1001 time base can hold


@dataclass(frozen=True)
class PrepareSettings:
    """What every output is made with (all but ``threads`` go into the resume record: a change re-encodes)."""

    short_side: int = 256
    gop: int = 8
    codec: str = "h264"
    fps: float | None = None  # None: the source's average rate
    threads: int = 1  # encoder threads per job

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise ConfigError(f"unknown codec {self.codec!r}; valid codecs: {', '.join(CODECS)}")
        if self.short_side < 16 or self.gop < 1 or (self.fps is not None and not MIN_FPS <= self.fps <= MAX_FPS):
            raise ConfigError(f"need short_side >= 16, gop >= 1 and fps between {MIN_FPS} and {MAX_FPS}, got "
                              f"{self.short_side}, {self.gop}, {self.fps}")

    @classmethod
    def for_jobs(cls, jobs: int, **settings: Any) -> PrepareSettings:
        """Settings whose encoder threads share this machine's cores among ``jobs`` encodes at a time."""
        return cls(**settings, threads=max(1, (os.cpu_count() or 1) // max(1, jobs)))

    def record(self) -> dict[str, Any]:
        """The settings that shape the output (threads do not)."""
        return {k: v for k, v in asdict(self).items() if k != "threads"}


def output_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the shorter side scaled down to ``short_side`` (never up), both even (yuv420p)."""
    scale = min(1.0, short_side / min(width, height))
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def _encoder_options(settings: PrepareSettings) -> dict[str, str]:
    """Fixed keyframe interval, closed GOPs, no scene-cut keyframes; quality near-transparent at training sizes."""
    gop = settings.gop
    if settings.codec == "h264":
        return {"preset": "veryfast", "crf": "20", "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}
    return {"g": str(gop), "keyint_min": str(gop), "deadline": "good", "cpu-used": "5", "crf": "32", "b:v": "0",
            "row-mt": "1"}


def _cfr_frames(container: av.container.InputContainer, rate: Fraction,
                source_rate: Fraction) -> Iterator[av.VideoFrame]:
    """The source's frames resampled to a constant ``rate``: output slot k (time k / rate after the first frame)
    shows the last source frame that started by then, give or take half a source frame (timestamps are rounded
    to their time base). A constant-rate source at ``rate`` maps one to one; other rates repeat or drop frames.
    The last frame lasts one source frame (1 / source_rate)."""
    stream = container.streams.video[0]
    jitter = 1 / (2 * source_rate)
    pending, start, slot = None, None, 0
    for frame in container.decode(stream):
        if frame.pts is None:
            raise ValueError("frame without timestamp")
        seconds = frame.pts * stream.time_base
        start = seconds if start is None else start
        first_slot = math.ceil((seconds - start - jitter) * rate)
        while pending is not None and slot < first_slot:
            yield pending
            slot += 1
        pending = frame
    if pending is None:
        raise ValueError("no frames decoded")
    end_slot = math.ceil((pending.pts * stream.time_base - start + 1 / source_rate - jitter) * rate)
    while slot < end_slot:
        yield pending
        slot += 1


def encode(src: Path, dst: Path, settings: PrepareSettings) -> dict[str, Any]:
    """Re-encode ``src`` into ``dst`` (written as is: callers pass a temporary name); facts of both sides."""
    encoder, muxer, _ = CODECS[settings.codec]
    with av.open(str(src)) as source:
        stream = source.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = settings.threads
        source_rate = Fraction(stream.average_rate or stream.guessed_rate or 0)
        if not source_rate:
            raise ValueError("the source has no frame rate")
        rate = Fraction(settings.fps).limit_denominator(1001) if settings.fps else source_rate
        width, height = output_size(stream.codec_context.width, stream.codec_context.height, settings.short_side)
        options = {"movflags": "+faststart"} if muxer == "mp4" else {}
        count = 0
        with av.open(str(dst), "w", format=muxer, options=options) as out:
            video = out.add_stream(encoder, rate=rate)
            video.width, video.height, video.pix_fmt = width, height, "yuv420p"
            video.codec_context.thread_count = settings.threads
            video.options = _encoder_options(settings)
            last, scaled = None, None
            for frame in _cfr_frames(source, rate, source_rate):
                if frame is not last:
                    last = frame
                    full_range = frame.color_range == 2 or frame.format.name.startswith("yuvj")  # JPEG / MJPEG
                    scaled = frame.reformat(width=width, height=height, format="yuv420p", interpolation="AREA",
                                            src_color_range="JPEG" if full_range else "MPEG", dst_color_range="MPEG")
                    scaled.color_range = 1  # limited ("MPEG", "tv") range, what yuv420p means to decoders
                scaled.pts, scaled.time_base = count, 1 / rate
                out.mux(video.encode(scaled))
                count += 1
            out.mux(video.encode())
    return {"frames": count, "fps": float(rate), "width": width, "height": height}


def verify(path: Path, expected_frames: int, gop: int) -> dict[str, Any]:
    """Check a prepared file: frame count within 1 of ``expected_frames``, first and last frame decode, the first
    packet a keyframe and no run of more than ``gop`` packets without one; its probe facts. ``ValueError`` else."""
    info = probe(path)
    if abs(info.num_frames - expected_frames) > 1:
        raise ValueError(f"wrote {info.num_frames} frames, expected {expected_frames} (within 1)")
    with av.open(str(path)) as container:
        keys = [packet.is_keyframe for packet in container.demux(video=0) if packet.size]
    starts = [i for i, key in enumerate(keys) if key] + [len(keys)]
    if not keys or not keys[0]:
        raise ValueError("the first packet is not a keyframe")
    longest = max(b - a for a, b in zip(starts[:-1], starts[1:]))
    if longest > gop:
        raise ValueError(f"a keyframe interval of {longest} frames, over the gop of {gop}")
    decode_frames(path, sorted({0, info.num_frames - 1}), "pyav", info, timeout=0)
    return {"frames": info.num_frames, "duration": info.num_frames / info.fps, "fps": info.fps,
            "width": info.width, "height": info.height, "codec": info.codec, "max_keyframe_interval": longest}


def _record_path(out: Path, rel: Path) -> Path:
    return out / RECORDS / rel.with_name(rel.name + ".json")


def _source_stamp(src: Path) -> dict[str, int]:
    stat = src.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _finished(dst: Path, record_file: Path) -> dict[str, Any] | None:
    """The record of a finished ``dst`` whose size still matches it, else None (unreadable records included)."""
    try:
        record = json.loads(record_file.read_text())
        return record if dst.stat().st_size == record["entry"]["bytes"] else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _remove_stale_parts(dst: Path) -> None:
    """Delete temporary files of ``dst`` left by runs that were killed (their process no longer exists)."""
    for part in dst.parent.glob(f".{glob.escape(dst.name)}.*.part"):
        pid = part.name[len(dst.name) + 2 : -len(".part")]
        if pid.isdigit() and not _alive(int(pid)):
            part.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f".{path.name}.{os.getpid()}.part")
    part.write_text(text)
    os.replace(part, path)


def prepare_video(src: Path, out: Path, rel: Path, settings: PrepareSettings) -> dict[str, Any]:
    """Prepare one video into ``out / rel``: ``status`` ``done``, ``skipped`` (finished before) or ``failed``."""
    dst, record_file = out / rel, _record_path(out, rel)
    entry: dict[str, Any] = {"source": str(src), "output": rel.as_posix()}
    tic = time.perf_counter()
    try:
        stamp = _source_stamp(src)
        record = _finished(dst, record_file)
        if record and record.get("source_stamp") == stamp and record.get("settings") == settings.record():
            return {**record["entry"], "status": "skipped", "seconds": 0.0}
        info = probe(src)
        dst.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_parts(dst)
        part = dst.with_name(f".{dst.name}.{os.getpid()}.part")
        try:
            made = encode(src, part, settings)
            # one output frame per source frame at the source's constant rate; else time is kept: duration x rate
            resampled = settings.fps is not None or not info.cfr
            expected = round(info.duration * made["fps"]) if resampled else info.num_frames
            facts = verify(part, expected, settings.gop)
            os.replace(part, dst)
        finally:
            part.unlink(missing_ok=True)
        entry.update({"source_frames": info.num_frames, "source_fps": info.fps, "source_duration": info.duration,
                      "source_cfr": info.cfr, "source_codec": info.codec, "source_bytes": stamp["size"],
                      "bytes": dst.stat().st_size, **facts})
        _write_atomic(record_file, json.dumps({"source_stamp": stamp, "settings": settings.record(), "entry": entry}))
        return {**entry, "status": "done", "seconds": time.perf_counter() - tic}
    except (VideoDecodeError, av.error.FFmpegError, OSError, ValueError) as err:
        cause = err.cause if isinstance(err, VideoDecodeError) else str(err).splitlines()[0] if str(err) else repr(err)
        return {**entry, "status": "failed", "error": cause, "seconds": time.perf_counter() - tic}


def _base(data: DataConfig) -> Path:
    """The folder the source paths are taken relative to: the manifest's, else ``data.root``."""
    return Path(data.manifest).parent if data.dataset == "manifest" else Path(data.root)


def output_paths(videos: VideoSet, base: Path, codec: str) -> dict[Path, Path]:
    """Source path -> output path relative to OUT: the same relative path with the codec's suffix
    (``a/b.avi`` -> ``a/b.mp4``); sources that would meet on one name keep their suffix (``b.avi.mp4``,
    ``b.mp4.mp4``). A source outside ``base`` goes under ``external/<hash of its folder>/``."""
    suffix = CODECS[codec][2]
    relative: dict[Path, Path] = {}
    for src in sorted({r.path for r in videos.records}):
        try:
            relative[src] = _resolved(src).relative_to(_resolved(base))
        except ValueError:
            folder = hashlib.sha1(str(_resolved(src.parent)).encode()).hexdigest()[:10]
            relative[src] = Path("external") / folder / src.name
    plain = Counter(rel.with_suffix(suffix) for rel in relative.values())
    return {src: rel.with_suffix(suffix) if plain[rel.with_suffix(suffix)] == 1 else rel.with_name(rel.name + suffix)
            for src, rel in relative.items()}


def _resolved(path: Path) -> Path:
    """``path`` resolved; a symlink loop stays as it is (its video then fails to open and is counted as failed)."""
    try:
        return path.resolve()
    except (RuntimeError, OSError):
        return path.absolute()


def refuse_overwriting_sources(out: Path, base: Path, mapping: dict[Path, Path]) -> None:
    """A ``ConfigError`` when ``out`` is the source tree (its manifest and annotations would be rewritten), any
    output path is its own source (re-encoding in place loses the original for good), or ``out`` holds a manifest,
    labels or annotation file that no earlier ``pcmci data prepare`` wrote (no ``prepare.json`` beside it)."""
    clash = next((src for src, rel in mapping.items() if _resolved(out / rel) == _resolved(src)), None)
    if _resolved(out) == _resolved(base) or clash is not None:
        what = f"source video {clash}" if clash is not None else f"the dataset's own folder {base}"
        raise ConfigError(f"--out {out} would write over {what}; prepare into a new folder")
    theirs = [name for name in ("manifest.csv", "labels.json", *CHARADES_FILES) if (out / name).exists()]
    if theirs and not (out / "prepare.json").is_file():
        raise ConfigError(f"--out {out} holds {', '.join(theirs)}, not written by pcmci data prepare (no "
                          "prepare.json); prepare into a new folder")


def _copy_charades(data: DataConfig, out: Path, suffix: str) -> str:
    """Charades' annotation files copied into ``out`` (its adapter then reads the prepared tree); the overrides."""
    folder = Path(data.annotations) if data.annotations else Path(data.root)
    for name in CHARADES_FILES:
        part = out / f".{name}.{os.getpid()}.part"
        shutil.copyfile(folder / name, part)
        os.replace(part, out / name)
    template = Path(data.video_template or CHARADES_TEMPLATE).with_suffix(suffix).as_posix()
    return f"data.dataset=charades data.root={out} data.video_template={template}"


def _write_manifest(videos: VideoSet, mapping: dict[Path, Path], done: set[Path], out: Path) -> int:
    """``OUT/manifest.csv`` (+ ``labels.json``) with every record whose video was prepared; the rows written."""
    labels = videos.labels
    _write_atomic(out / "labels.json", json.dumps({"classes": labels.classes, "actions": labels.actions}, indent=1))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "label", "split", "steps"])
    rows = 0
    for record in videos.records:
        if record.path in done:
            steps = ";".join(labels.actions[s] for s in record.steps)
            writer.writerow([mapping[record.path].as_posix(), labels.classes[record.target], record.split or "", steps])
            rows += 1
    _write_atomic(out / "manifest.csv", buffer.getvalue())
    return rows


def prepare_dataset(data: DataConfig, out: str | Path, settings: PrepareSettings, jobs: int = 1,
                    progress: bool = False) -> dict[str, Any]:
    """Prepare every video of ``data`` into ``out`` with ``jobs`` processes; the report (also ``out/prepare.json``).

    Report keys: ``videos``, ``done``, ``skipped``, ``failed`` (counts), ``failures`` (path -> cause),
    ``source_bytes``, ``bytes``, ``source_duration``, ``duration`` (seconds of video), ``seconds`` (wall time),
    ``manifest`` (None for Charades), ``rows``, ``use`` (the overrides that train on ``out``), ``settings``,
    ``jobs``, ``files`` (one entry per video).
    """
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    tic = time.perf_counter()
    out = Path(out)
    videos = read_video_set(data)
    mapping = output_paths(videos, _base(data), settings.codec)
    refuse_overwriting_sources(out, _base(data), mapping)
    out.mkdir(parents=True, exist_ok=True)
    entries: dict[Path, dict[str, Any]] = {}
    bar = tqdm(total=len(mapping), desc="preparing", unit="video", disable=not progress)
    if jobs <= 1:
        for src, rel in mapping.items():
            entries[src] = prepare_video(src, out, rel, settings)
            bar.update()
    else:
        context = multiprocessing.get_context("fork")  # workers share the loaded modules: no per-job imports
        with ProcessPoolExecutor(jobs, mp_context=context) as pool:
            futures = {pool.submit(prepare_video, src, out, rel, settings): src for src, rel in mapping.items()}
            for future in as_completed(futures):
                entries[futures[future]] = future.result()
                bar.update()
    bar.close()
    done = {src for src, e in entries.items() if e["status"] != "failed"}
    if videos.multilabel:
        rows, manifest, use = 0, None, _copy_charades(data, out, CODECS[settings.codec][2])
    else:
        rows, manifest = _write_manifest(videos, mapping, done, out), out / "manifest.csv"
        use = f"data.dataset=manifest data.manifest={manifest}"
    files = [entries[src] for src in mapping]
    finished = [e for e in files if e["status"] != "failed"]
    report = {
        "videos": len(files), "done": sum(e["status"] == "done" for e in files),
        "skipped": sum(e["status"] == "skipped" for e in files), "failed": len(files) - len(finished),
        "failures": {e["source"]: e["error"] for e in files if e["status"] == "failed"},
        "source_bytes": sum(e["source_bytes"] for e in finished), "bytes": sum(e["bytes"] for e in finished),
        "source_duration": sum(e["source_duration"] for e in finished),
        "duration": sum(e["duration"] for e in finished),
        "seconds": time.perf_counter() - tic, "manifest": manifest and str(manifest), "rows": rows, "use": use,
        "settings": settings.record(), "jobs": jobs, "files": files,
    }
    _write_atomic(out / "prepare.json", json.dumps(report, indent=1))
    return report


def render(report: dict[str, Any]) -> str:
    """The report as readable text."""
    mib = 2**20
    lines = [
        f"prepared {report['videos']} videos: {report['done']} encoded, {report['skipped']} already done, "
        f"{report['failed']} failed in {report['seconds']:.1f} s",
        f"size: {report['source_bytes'] / mib:.1f} MiB -> {report['bytes'] / mib:.1f} MiB; duration "
        f"{report['source_duration']:.1f} s -> {report['duration']:.1f} s",
        *([f"manifest: {report['manifest']} ({report['rows']} rows)"] if report["manifest"] else []),
        f"train on it with: {report['use']}",
    ]
    lines += [f"failed: {path}: {cause}" for path, cause in report["failures"].items()]
    return "\n".join(lines)
