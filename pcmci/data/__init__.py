"""Data path: segment sampling, video decoding (PyAV / DALI), dataset adapters and the synthetic benchmark."""

import importlib
from typing import Any

# Where each public name lives; imported on first use, so a command that needs only the generator (``pcmci synth``)
# does not pay for torch.
_HOME = {
    **dict.fromkeys(("LabelSet", "ManifestDataset", "ManifestRow", "VideoDataset", "VideoRecord", "VideoSet",
                     "build_dataset", "collate_videos", "preprocess", "read_manifest"), "datasets"),
    **dict.fromkeys(("VideoDecodeError", "VideoInfo", "decode_frames", "probe", "sample_clip"), "decode"),
    **dict.fromkeys(("segment_indices", "view_indices"), "sampling"),
    "synthesize": "synthetic",
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)


__all__ = [
    "LabelSet",
    "ManifestDataset",
    "ManifestRow",
    "VideoDataset",
    "VideoDecodeError",
    "VideoInfo",
    "VideoRecord",
    "VideoSet",
    "build_dataset",
    "collate_videos",
    "decode_frames",
    "preprocess",
    "probe",
    "read_manifest",
    "sample_clip",
    "segment_indices",
    "synthesize",
    "view_indices",
]
