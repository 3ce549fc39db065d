"""Label sets, the generic CSV manifest (``path,label[,split][,steps]``) and its video dataset."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from pcmci.data.decode import VideoInfo, probe, sample_clip


@dataclass
class LabelSet:
    """The C class names and A atomic-action / step names; ``texts`` are the L = C + A label texts."""

    classes: list[str]
    actions: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: str | Path) -> LabelSet:
        """Read ``{"classes": [...], "actions": [...]}`` (``actions`` optional)."""
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict) or not isinstance(data.get("classes"), list) or not data["classes"]:
            raise ValueError(f"{path}: expected a JSON object with a non-empty 'classes' list")
        return cls([str(c) for c in data["classes"]], [str(a) for a in data.get("actions", [])])

    @property
    def texts(self) -> list[str]:
        return self.classes + self.actions


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
    root = path.parent
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = [name.strip() for name in reader.fieldnames or []]
        missing = [name for name in ("path", "label") if name not in header]
        if missing:
            raise ValueError(f"{path}:1: missing required column(s) {missing}; header is {header}")
        reader.fieldnames = header

        def fail(cause: str) -> ValueError:
            return ValueError(f"{path}:{reader.line_num}: {cause}")

        rows = []
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
            rows.append(ManifestRow(root / video, label, split, steps, reader.line_num))
    return rows


def preprocess(frames: np.ndarray, image_size: int) -> torch.Tensor:
    """uint8 [F, H, W, 3] -> float32 [F, 3, S, S] in [0, 1]: resize the shorter side to S, centre-crop."""
    video = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255)
    h, w = video.shape[-2:]
    scale = image_size / min(h, w)
    size = (max(image_size, round(h * scale)), max(image_size, round(w * scale)))
    if size != (h, w):
        video = F.interpolate(video, size=size, mode="bilinear", antialias=True, align_corners=False)
    top, left = (size[0] - image_size) // 2, (size[1] - image_size) // 2
    return video[:, :, top : top + image_size, left : left + image_size].clamp_(0, 1).contiguous()


class ManifestDataset(Dataset):
    """Videos of a CSV manifest, segment-sampled to F frames.

    Items: ``video`` float32 [F, 3, S, S] in [0, 1], ``label`` int64 [], ``steps`` float32 [A]
    multi-hot over ``labels.actions``, ``index`` int. Training offsets are a pure function of
    (seed, epoch, index); call :meth:`set_epoch` each epoch.
    """

    def __init__(
        self,
        manifest: str | Path,
        split: str | None,
        labels: LabelSet | None = None,
        frames: int = 8,
        image_size: int = 64,
        train: bool = False,
        seed: int = 0,
        backend: str = "pyav",
    ) -> None:
        manifest = Path(manifest)
        if labels is None:
            label_file = manifest.parent / "labels.json"
            if label_file.is_file():
                labels = LabelSet.load(label_file)
            else:
                labels = LabelSet(sorted({row.label for row in read_manifest(manifest)}))
        rows = read_manifest(manifest, labels)
        if split is not None:
            available = sorted({row.split for row in rows if row.split is not None})
            rows = [row for row in rows if row.split == split]
            if not rows:
                raise ValueError(
                    f"{manifest}: split {split!r} has no rows; available splits: {available or 'none'}"
                )
        self.manifest = manifest
        self.labels = labels
        self.rows = rows
        self.frames = frames
        self.image_size = image_size
        self.train = train
        self.seed = seed
        self.backend = backend
        self.epoch = 0
        self._class_index = {name: i for i, name in enumerate(labels.classes)}
        self._action_index = {name: i for i, name in enumerate(labels.actions)}
        self._info: dict[int, VideoInfo] = {}

    def set_epoch(self, epoch: int) -> None:
        """Select the training offsets of ``epoch`` (deterministic from seed, epoch and index)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        row = self.rows[index]
        if index not in self._info:
            self._info[index] = probe(row.path)
        generator = None
        if self.train:
            state = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(2)
            generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        frames, _ = sample_clip(
            row.path, self.frames, self.train, generator, self.backend, self._info[index]
        )
        steps = torch.zeros(len(self.labels.actions), dtype=torch.float32)
        for step in row.steps:
            if step in self._action_index:
                steps[self._action_index[step]] = 1.0
        return {
            "video": preprocess(frames, self.image_size),
            "label": torch.tensor(self._class_index[row.label], dtype=torch.int64),
            "steps": steps,
            "index": index,
        }
