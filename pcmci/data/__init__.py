"""Data path: segment sampling, video decoding (PyAV / DALI), dataset adapters and the synthetic benchmark."""

from pcmci.data.datasets import (
    LabelSet,
    ManifestDataset,
    ManifestRow,
    VideoDataset,
    VideoRecord,
    VideoSet,
    build_dataset,
    collate_videos,
    preprocess,
    read_manifest,
)
from pcmci.data.decode import VideoDecodeError, VideoInfo, decode_frames, probe, sample_clip
from pcmci.data.sampling import segment_indices, view_indices
from pcmci.data.synthetic import synthesize

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
