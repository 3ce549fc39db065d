"""Data path: segment sampling, video decoding, manifest datasets and the synthetic benchmark."""

from pcmci.data.datasets import LabelSet, ManifestDataset, ManifestRow, preprocess, read_manifest
from pcmci.data.decode import VideoDecodeError, VideoInfo, decode_frames, probe, sample_clip
from pcmci.data.sampling import segment_indices
from pcmci.data.synthetic import synthesize

__all__ = [
    "LabelSet",
    "ManifestDataset",
    "ManifestRow",
    "VideoDecodeError",
    "VideoInfo",
    "decode_frames",
    "preprocess",
    "probe",
    "read_manifest",
    "sample_clip",
    "segment_indices",
    "synthesize",
]
