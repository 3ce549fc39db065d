"""``pcmci data inspect``: check a dataset before training — counts per split and class, missing and
undecodable files, frame-count / fps / duration statistics and a PNG grid of sampled frames."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from pcmci.data.datasets import VideoSet, read_video_set
from pcmci.data.decode import VideoDecodeError, VideoInfo, decode_frames, guarded, probe
from pcmci.data.sampling import segment_indices
from pcmci.errors import ConfigError

if TYPE_CHECKING:
    from pcmci.config import DataConfig

GRID_VIDEOS, GRID_FRAMES, THUMB = 8, 4, 96


def _summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    array = np.asarray(values, dtype=np.float64)
    return {"min": float(array.min()), "mean": float(array.mean()), "median": float(np.median(array)),
            "max": float(array.max())}


def _check(path: Path, timeout: float) -> VideoInfo:
    """Probe, then decode the first and last frame (catches truncated files whose header looks fine)."""
    info = guarded(timeout, path, probe, path)
    decode_frames(path, sorted({0, info.num_frames - 1}), "pyav", info, timeout)
    return info


def _grid(videos: VideoSet, infos: dict[Path, VideoInfo], out: Path, frames: int = GRID_FRAMES) -> Path | None:
    """One row per class (up to GRID_VIDEOS rows): ``frames`` centre-sampled thumbnails and the class name."""
    rows, seen = [], set()
    for record in videos.records:
        first = record.target if isinstance(record.target, int) else (record.target or [-1])[0]
        if record.path in infos and first not in seen and len(rows) < GRID_VIDEOS:
            seen.add(first)
            info = infos[record.path]
            clip, _ = decode_frames(record.path, segment_indices(info.num_frames, frames, False), "pyav", info)
            name = videos.labels.classes[first] if first >= 0 else "(no label)"
            rows.append((name, [Image.fromarray(f).resize((THUMB * f.shape[1] // f.shape[0], THUMB)) for f in clip]))
    if not rows:
        return None
    width = max(sum(t.width for t in thumbs) for _, thumbs in rows) + 4 * frames
    sheet = Image.new("RGB", (width, len(rows) * (THUMB + 16)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (name, thumbs) in enumerate(rows):
        y, x = r * (THUMB + 16), 0
        draw.text((2, y + 2), name, fill="black")
        for thumb in thumbs:
            sheet.paste(thumb, (x, y + 14))
            x += thumb.width + 4
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def inspect_dataset(data: DataConfig, split: str | None = None, grid: Path | None = None,
                    progress: bool = False) -> dict[str, Any]:
    """Report on ``data``'s dataset (one split, or all); every video is probed and its ends decoded.

    Keys: ``dataset``, ``source``, ``multilabel``, ``classes`` / ``actions`` (label counts), ``splits`` ->
    name -> ``videos`` and ``classes`` (name -> videos), ``missing`` and ``undecodable`` (paths),
    ``errors`` (path -> cause), ``stats`` (frames, fps, duration, codecs), ``grid`` (PNG path or None).
    """
    videos = read_video_set(data).split(split)
    classes = videos.labels.classes
    splits: dict[str, dict[str, Any]] = {}
    for record in videos.records:
        entry = splits.setdefault(record.split or "none", {"videos": 0, "classes": Counter()})
        entry["videos"] += 1
        entry["classes"].update(classes[t] for t in ([record.target] if isinstance(record.target, int) else record.target))
    missing, errors, infos = [], {}, {}
    for path in tqdm(sorted({r.path for r in videos.records}), desc="probing", disable=not progress):
        if not path.is_file():
            missing.append(str(path))
            continue
        try:
            infos[path] = _check(path, data.decode_timeout)
        except VideoDecodeError as err:
            errors[str(path)] = err.cause
    stats = {
        "frames": _summary([i.num_frames for i in infos.values()]),
        "fps": _summary([i.fps for i in infos.values()]),
        "duration": _summary([i.duration for i in infos.values()]),
        "codecs": dict(Counter(i.codec for i in infos.values())),
    }
    return {
        "dataset": data.dataset, "source": videos.source, "multilabel": videos.multilabel,
        "classes": len(classes), "actions": len(videos.labels.actions),
        "splits": {name: {"videos": s["videos"], "classes": dict(sorted(s["classes"].items()))}
                   for name, s in sorted(splits.items())},
        "missing": missing, "undecodable": sorted(errors), "errors": errors, "stats": stats,
        "grid": str(_grid(videos, infos, grid)) if grid and infos else None,
    }


def inspect_into(data: DataConfig, split: str | None, out: Path | None, grid: str | None,
                 progress: bool = False) -> dict[str, Any]:
    """``inspect_dataset``, writing ``report.json`` under ``out`` and the sample grid to ``grid``.

    ``grid=None`` puts the grid at ``out/grid.png`` (none without ``out``); ``grid=""`` draws none.
    """
    path = Path(grid) if grid else out / "grid.png" if out is not None and grid is None else None
    if path is not None and path.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        raise ConfigError(f"--grid {path}: the sample grid is an image; name a .png, .jpg or .webp file")
    if path is not None and (path.is_dir() or any(p.exists() and not p.is_dir() for p in path.parents)):
        raise ConfigError(f"--grid {path}: a folder, or under a file; name an image file in a folder")
    report = inspect_dataset(data, split, path, progress=progress)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(report, indent=1))
    return report


def render(report: dict[str, Any]) -> str:
    """The report as readable text."""
    lines = [f"{report['dataset']} at {report['source']}: {report['classes']} classes, {report['actions']} "
             f"auxiliary texts{' (multi-label)' if report['multilabel'] else ''}"]
    for name, split in report["splits"].items():
        lines.append(f"split {name}: {split['videos']} videos")
        lines += [f"  {count:6d}  {cls}" for cls, count in split["classes"].items()]
    for key, unit in (("frames", ""), ("fps", ""), ("duration", " s")):
        s = report["stats"][key]
        if s:
            lines.append(f"{key}: min {s['min']:.4g}{unit}, median {s['median']:.4g}{unit}, "
                         f"mean {s['mean']:.4g}{unit}, max {s['max']:.4g}{unit}")
    lines.append(f"codecs: {report['stats']['codecs']}")
    lines.append(f"missing: {len(report['missing'])}")
    lines += [f"  {path}" for path in report["missing"]]
    lines.append(f"undecodable: {len(report['undecodable'])}")
    lines += [f"  {path}: {report['errors'][path]}" for path in report["undecodable"]]
    if report["grid"]:
        lines.append(f"sample grid: {report['grid']}")
    return "\n".join(lines)
