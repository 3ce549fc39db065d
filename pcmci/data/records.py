"""The data layer's plain records, imported by every other data module and importing none of them:
video sources and probe facts, label sets, video records and sets, clip plans, and the
``ClipSource`` protocol a batch loader reads (so the data modules import one way only)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from pcmci.errors import DataError, VideoDecodeError

Source = str | Path | bytes


def read_json(path: str | Path) -> Any:
    """The JSON in ``path``; ``FileNotFoundError`` / ``DataError`` in one line naming the file (and the line)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return json.loads(read_text(path), object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: not valid JSON: {err.msg} (column {err.colno})") from None
    except _RepeatedKey as err:
        raise DataError(f"{path}: the key {err.args[0]!r} appears twice in one object (JSON keeps only the "
                        "last)") from None


class _RepeatedKey(Exception):
    """A JSON object with a key twice: ``json`` would keep the last value and drop the first without a word."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise _RepeatedKey(key)
        found[key] = value
    return found


def read_text(path: str | Path) -> str:
    """The UTF-8 text in ``path`` (a leading BOM dropped); ``DataError`` naming the file if it is not UTF-8, is a
    folder or may not be read (a missing file stays ``FileNotFoundError``)."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not a UTF-8 text file ({err.reason} at byte {err.start})") from None
    except IsADirectoryError:
        raise DataError(f"{path}: a folder, expected a text file") from None
    except PermissionError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror})") from None


def repeated(names: list[str]) -> str | None:
    """The first name listed a second time, or None."""
    return next((name for i, name in enumerate(names) if name in names[:i]), None)


def source_name(source: Source) -> str:
    return f"<{len(source)} bytes>" if isinstance(source, bytes) else str(source)


@dataclass
class VideoInfo:
    """Stream facts of the first video stream (``duration`` in seconds; ``cfr``: constant frame rate)."""

    path: str
    num_frames: int
    fps: float
    duration: float
    width: int
    height: int
    codec: str
    cfr: bool = True


@dataclass
class LabelSet:
    """The C class names and A atomic-action / step names; ``texts`` are the L = C + A label texts."""

    classes: list[str]
    actions: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: str | Path) -> LabelSet:
        """Read ``{"classes": [...], "actions": [...]}`` (``actions`` optional), each a list of strings."""
        data = read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("classes"), list) or not data["classes"]:
            raise DataError(f"{path}: expected a JSON object with a non-empty 'classes' list")
        for key in ("classes", "actions"):
            names = data.get(key, [])
            # a string would be read as its letters, a number or null as nothing: never what the file meant
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise DataError(f"{path}: {key!r} must be a list of strings, got {json.dumps(names)[:80]}")
        labels = cls(list(data["classes"]), list(data.get("actions", [])))
        for kind, key, names in (("class", "classes", labels.classes), ("action", "actions", labels.actions)):
            twice = repeated(names)
            if twice is not None:  # the second entry would be a label no video can have, scored as NaN
                raise DataError(f"{path}: {kind} {twice!r} is listed twice in {key!r}")
        return labels

    @property
    def texts(self) -> list[str]:
        return self.classes + self.actions


@dataclass
class VideoRecord:
    """One video: ``target`` is a class index, or the list of class indices when multi-label."""

    path: Path
    target: int | list[int]
    steps: list[int]  # indices into LabelSet.actions
    split: str | None


@dataclass
class VideoSet:
    """What an adapter reads: labels and records of every split (``source`` names the annotation file)."""

    labels: LabelSet
    records: list[VideoRecord]
    source: str
    multilabel: bool = False

    def split(self, name: str | None) -> VideoSet:
        """The records of split ``name`` (all for None); ``DataError`` listing the splits when empty."""
        if name is None:
            return self
        records = [r for r in self.records if r.split == name]
        if not records:
            available = sorted({r.split for r in self.records if r.split is not None})
            raise DataError(f"{self.source}: split {name!r} has no rows; available splits: {available or 'none'}")
        return VideoSet(self.labels, records, self.source, self.multilabel)


@dataclass
class ClipPlan:
    """What to decode for one item: ``clips`` lists the frame indices of each temporal clip; ``crop`` the training
    window ``(top, left, side)`` in source pixels that every frame is cut to first (None: the whole frame)."""

    path: Path
    info: VideoInfo
    clips: list[list[int]]
    crop: tuple[int, int, int] | None = None


class ClipSource(Protocol):
    """What a batch loader reads from a dataset (``VideoDataset`` is one): plans, targets and sampling facts."""

    records: list[VideoRecord]
    image_size: int
    seed: int
    skip_bad: bool

    @property
    def views(self) -> int: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...

    def plan(self, index: int) -> ClipPlan: ...

    def targets(self, index: int) -> tuple[torch.Tensor, torch.Tensor]: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...
