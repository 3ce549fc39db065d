"""Video datasets: the generic CSV manifest, one ``VideoDataset`` for every format, and the factory.

Every adapter (the manifest here, Breakfast / COIN / Charades in ``formats.py``) returns a ``VideoSet``
(labels + records); ``VideoDataset`` samples, decodes and preprocesses it. ``build_dataset`` picks
the adapter named by ``data.dataset``.
"""

from __future__ import annotations

import csv
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, default_collate

from pcmci.config import DataConfig, DatasetName
from pcmci.data import formats
from pcmci.data.decode import DECODE_TIMEOUT, check_length, decode_frames, guarded, probe
from pcmci.data.records import ClipPlan, LabelSet, VideoDecodeError, VideoInfo, VideoRecord, VideoSet
from pcmci.data.sampling import crop_offsets, segment_indices, train_crop_window, view_indices
from pcmci.errors import DataError

__all__ = ["ClipPlan", "LabelSet", "ManifestDataset", "ManifestRow", "VideoDataset", "VideoRecord", "VideoSet",
           "build_dataset", "collate_videos", "preprocess", "preprocess_views", "read_manifest", "read_manifest_set",
           "read_video_set", "tree_config"]


@dataclass
class ManifestRow:
    """One manifest line; ``path`` is resolved against the manifest's folder."""

    path: Path
    label: str
    split: str | None
    steps: list[str]
    line: int


def read_manifest(path: str | Path, labels: LabelSet | None = None) -> list[ManifestRow]:
    """Rows of a CSV manifest with header ``path,label[,split][,steps]`` (steps ``;``-separated).

    With ``labels``, every label must be one of ``labels.classes`` and, when ``labels.actions`` is
    non-empty, every step one of them. Errors raise ``ValueError`` naming the file and line.
    """
    path = Path(path)
    if path.is_dir():
        hint = f"; did you mean {path / 'manifest.csv'}?" if (path / "manifest.csv").is_file() else ""
        raise FileNotFoundError(f"{path}: a folder, not a manifest file{hint}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such manifest")
    try:
        return _read_rows(path, labels)
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not a UTF-8 text file ({err.reason} at byte {err.start})") from None
    except csv.Error as err:
        raise DataError(f"{path}: not a readable CSV manifest: {err}") from None


def _read_rows(path: Path, labels: LabelSet | None) -> list[ManifestRow]:
    with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: a leading BOM (Excel's "CSV UTF-8") is dropped
        reader = csv.DictReader(f)
        header = [name.strip() for name in reader.fieldnames or []]
        missing = [name for name in ("path", "label") if name not in header]
        if missing:
            raise DataError(f"{path}:1: missing required column(s) {missing}; header is {header}")
        reader.fieldnames = header

        def fail(cause: str) -> ValueError:
            return ValueError(f"{path}:{reader.line_num}: {cause}")

        rows, seen = [], {}
        for record in reader:
            if None in record or None in record.values():
                raise fail(f"expected {len(header)} fields ({','.join(header)})")
            video, label = record["path"].strip(), record["label"].strip()
            if not video or not label:
                raise fail("empty path or label")
            if labels is not None and label not in labels.classes:
                raise fail(f"unknown label {label!r}")
            steps = [s.strip() for s in (record.get("steps") or "").split(";") if s.strip()]
            if labels is not None and labels.actions:
                unknown = [s for s in steps if s not in labels.actions]
                if unknown:
                    raise fail(f"unknown step(s) {unknown}")
            split = (record.get("split") or "").strip() or None
            where = os.path.normpath(video)  # ./a.mp4 and a.mp4 are one video
            if where in seen:  # two labels or two splits (a train/test leak), or one video counted twice
                raise fail(f"{video} is listed again (first on line {seen[where]})")
            seen[where] = reader.line_num
            rows.append(ManifestRow(path.parent / video, label, split, steps, reader.line_num))
    return rows


def read_manifest_set(manifest: str | Path, labels: LabelSet | None = None) -> VideoSet:
    """A manifest as a ``VideoSet``; labels from ``labels``, else ``labels.json`` beside it, else the rows (classes
    and, where ``labels.json`` lists none, steps: sorted names)."""
    manifest = Path(manifest)
    if labels is None:
        label_file = manifest.parent / "labels.json"
        labels = LabelSet.load(label_file) if label_file.exists() else None
        if labels is None or not labels.actions:
            rows = read_manifest(manifest, labels)
            labels = LabelSet(labels.classes if labels else sorted({row.label for row in rows}),
                              sorted({step for row in rows for step in row.steps}))
    classes = {name: i for i, name in enumerate(labels.classes)}
    actions = {name: i for i, name in enumerate(labels.actions)}
    records = [
        VideoRecord(row.path, classes[row.label], [actions[s] for s in row.steps if s in actions], row.split)
        for row in read_manifest(manifest, labels)
    ]
    return VideoSet(labels, records, str(manifest))


def preprocess_views(frames: np.ndarray, image_size: int, crops: int = 1) -> torch.Tensor:
    """uint8 [F, H, W, 3] -> float32 [crops, F, 3, S, S] in [0, 1]: shorter side resized to S, then
    ``crops`` S x S windows spread along the longer side (one crop: centred)."""
    video = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255)
    h, w = video.shape[-2:]
    scale = image_size / min(h, w)
    size = (max(image_size, round(h * scale)), max(image_size, round(w * scale)))
    if size != (h, w):
        video = F.interpolate(video, size=size, mode="bilinear", antialias=True, align_corners=False)
    tops = crop_offsets(size[0], image_size, crops if size[0] > size[1] else 1)
    lefts = crop_offsets(size[1], image_size, crops if size[0] <= size[1] else 1)
    windows = [(top, left) for top in tops for left in lefts]
    return torch.stack([video[:, :, t : t + image_size, x : x + image_size] for t, x in windows]).clamp_(0, 1)


def preprocess(frames: np.ndarray, image_size: int) -> torch.Tensor:
    """uint8 [F, H, W, 3] -> float32 [F, 3, S, S] in [0, 1]: resize the shorter side to S, centre-crop."""
    return preprocess_views(frames, image_size)[0]


class DecodedVideos:
    """Whole decoded videos (uint8 ``[T, H, W, 3]``) shared by every dataset of the process that caches frames: the
    models of one demo or ablation worker read the same files, decoded once. Keyed by the file's path, size and
    modification time and the backend (a rewritten file is decoded again); the least recently used leave first once
    the arrays pass ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit, self.bytes = limit, 0
        self._videos: OrderedDict[tuple[str, int, int, str], np.ndarray] = OrderedDict()

    def get(self, path: Path, backend: str, decode: Callable[[], np.ndarray]) -> np.ndarray:
        """The decoded frames of ``path`` (read-only: index them, never write into them); ``decode()`` on a miss."""
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, backend)
        if key in self._videos:
            self._videos.move_to_end(key)
            return self._videos[key]
        frames = decode()
        frames.flags.writeable = False
        self._videos[key] = frames
        self.bytes += frames.nbytes
        while self.bytes > self.limit and len(self._videos) > 1:
            self.bytes -= self._videos.popitem(last=False)[1].nbytes
        return frames


DECODED = DecodedVideos(limit=8 << 30)  # data.cache_frames is for small sets; a bound all the same


class VideoDataset(Dataset):
    """Segment-sampled clips of a ``VideoSet``.

    Items: ``video`` float32 [F, 3, S, S] in [0, 1] — [V, F, 3, S, S] in evaluation when
    ``views = clips x crops > 1`` (clip-major) —, ``label`` int64 [] (float32 multi-hot [C] when
    multi-label), ``steps`` float32 [A] multi-hot over ``labels.actions``, ``index`` int. With
    ``skip_bad`` a video that raises ``VideoDecodeError`` gives ``{"index", "bad": "<path>: <cause>"}``
    instead (dropped and listed by :func:`collate_videos`). A video shorter than F frames is such an
    error unless ``pad_short`` (frames repeated, see ``segment_indices``). Training offsets are a pure
    function of (seed, epoch, index); call :meth:`set_epoch` each epoch, and so is the training crop when
    ``train_crop_scale`` < 1 (a random square window of at least that share of the frame's largest square, the same
    for every frame of the clip, resized to S: scale and position jitter; 1 = the whole frame). ``cache`` keeps
    every video's decoded frames in memory after its first use (whole videos, uint8, shared by the process's datasets:
    :data:`DECODED`): for small sets of short clips, such as the synthetic demo set, where decoding would otherwise
    dominate each epoch.
    """

    def __init__(self, videos: VideoSet, frames: int = 8, image_size: int = 64, train: bool = False,
                 seed: int = 0, backend: str = "pyav", test_views: tuple[int, int] = (1, 1),
                 skip_bad: bool = False, timeout: float = DECODE_TIMEOUT, pad_short: bool = False,
                 cache: bool = False, train_crop_scale: float = 1.0) -> None:
        self.videos, self.labels, self.records = videos, videos.labels, videos.records
        self.multilabel = videos.multilabel
        self.frames, self.image_size, self.train, self.seed = frames, image_size, train, seed
        self.backend, self.skip_bad, self.timeout, self.pad_short = backend, skip_bad, timeout, pad_short
        self.clips, self.crops = (1, 1) if train else tuple(test_views)
        self.epoch = 0
        self._info: dict[int, VideoInfo] = {}
        self.cache = cache
        self.train_crop_scale = train_crop_scale

    @property
    def views(self) -> int:
        return self.clips * self.crops

    def set_epoch(self, epoch: int) -> None:
        """Select the training offsets of ``epoch`` (deterministic from seed, epoch and index)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def plan(self, index: int) -> ClipPlan:
        """Probe (cached) and sample the frame indices of item ``index``."""
        path = self.records[index].path
        if index not in self._info:
            self._info[index] = guarded(self.timeout, path, probe, path)
        info = self._info[index]
        check_length(path, info, self.frames, self.pad_short)
        if not self.train:
            return ClipPlan(path, info, view_indices(info.num_frames, self.frames, self.clips, self.pad_short))
        state = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(2)
        generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        clip = segment_indices(info.num_frames, self.frames, True, generator, self.pad_short)
        crop = None
        if self.train_crop_scale < 1.0:
            crop = train_crop_window(info.height, info.width, self.train_crop_scale, generator)
        return ClipPlan(path, info, [clip], crop)

    def targets(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(label: int64 [] or float32 multi-hot [C], steps: float32 multi-hot [A]) of item ``index``."""
        record = self.records[index]
        if self.multilabel:
            label = torch.zeros(len(self.labels.classes), dtype=torch.float32)
            label[record.target] = 1.0
        else:
            label = torch.tensor(record.target, dtype=torch.int64)
        steps = torch.zeros(len(self.labels.actions), dtype=torch.float32)
        steps[record.steps] = 1.0
        return label, steps

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            plan = self.plan(index)
            wanted = sorted({i for clip in plan.clips for i in clip})
            if self.cache:
                whole = DECODED.get(Path(plan.path), self.backend, lambda: decode_frames(
                    plan.path, list(range(plan.info.num_frames)), self.backend, plan.info, self.timeout)[0])
                frames = whole[wanted]
            else:
                frames, _ = decode_frames(plan.path, wanted, self.backend, plan.info, self.timeout)
        except VideoDecodeError as err:
            if not self.skip_bad:
                raise
            return {"index": index, "bad": f"{err.path}: {err.cause}"}
        if plan.crop is not None:
            top, left, side = plan.crop
            frames = frames[:, top : top + side, left : left + side]
        position = {frame: row for row, frame in enumerate(wanted)}
        views = [preprocess_views(frames[[position[i] for i in clip]], self.image_size, self.crops)
                 for clip in plan.clips]
        video = torch.cat(views)
        label, steps = self.targets(index)
        return {"video": video if self.views > 1 else video[0], "label": label, "steps": steps, "index": index}


class ManifestDataset(VideoDataset):
    """Videos of a CSV manifest (``path,label[,split][,steps]``); see :class:`VideoDataset` for items."""

    def __init__(self, manifest: str | Path, split: str | None, labels: LabelSet | None = None,
                 **kwargs: Any) -> None:
        super().__init__(read_manifest_set(manifest, labels).split(split), **kwargs)


def collate_videos(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack good items; ``bad`` lists the skipped ones. A batch whose items all failed has no ``video``."""
    good = [item for item in items if "bad" not in item]
    batch = default_collate(good) if good else {}
    batch["bad"] = [item["bad"] for item in items if "bad" in item]
    return batch


def tree_config(dataset: DatasetName, root: str | Path, video_template: str = "", annotations: str = "") -> DataConfig:
    """The data config of a dataset tree named on the command line; a manifest's root is the CSV itself or
    the folder that holds ``manifest.csv``."""
    root = Path(root)
    manifest = root / "manifest.csv" if dataset == "manifest" and root.is_dir() else root
    return DataConfig(dataset=dataset, root=str(root), manifest=str(manifest), video_template=video_template,
                      annotations=annotations)


def read_video_set(data: DataConfig, labels: LabelSet | None = None) -> VideoSet:
    """The adapter named by ``data.dataset`` applied to ``data.root`` (or ``data.manifest``), all splits."""
    if data.dataset == "manifest":
        if not data.manifest:
            raise DataError("data.manifest is not set: pass data.manifest=path/to/manifest.csv")
        return read_manifest_set(data.manifest, labels or (LabelSet.load(data.labels) if data.labels else None))
    if data.dataset not in formats.READERS:
        raise DataError(f"unknown data.dataset {data.dataset!r}; valid datasets: {', '.join(get_args(DatasetName))}")
    if not data.root:
        raise DataError(f"data.root is not set: pass data.root=path/to/{data.dataset}")
    return formats.READERS[data.dataset](Path(data.root), data.video_template or None, data.annotations or None)


def build_dataset(data: DataConfig, split: str | None, train: bool, seed: int = 0,
                  labels: LabelSet | None = None) -> VideoDataset:
    """The ``VideoDataset`` of ``split`` for ``data`` (``DataConfig``): adapter, sampling, views, bad videos."""
    return VideoDataset(read_video_set(data, labels).split(split), frames=data.frames, image_size=data.image_size,
                        train=train, seed=seed, backend=data.backend,
                        test_views=(data.test_views // data.test_crops, data.test_crops),
                        skip_bad=data.skip_bad_videos, timeout=data.decode_timeout, pad_short=data.pad_short_videos,
                        cache=data.cache_frames, train_crop_scale=data.train_crop_scale)
