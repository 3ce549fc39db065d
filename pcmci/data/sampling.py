"""Uniform segment sampling (TSN style) of F frame indices over a whole video, and test-time views."""

from __future__ import annotations

import torch


def segment_indices(
    num_frames: int, frames: int, train: bool, generator: torch.Generator | None = None, pad: bool = False
) -> list[int]:
    """Split ``[0, num_frames)`` into ``frames`` equal segments and pick one index per segment.

    Training picks a uniformly random frame inside each segment (drawn from ``generator``);
    evaluation picks each segment's centre. Returns ``frames`` sorted indices in ``[0, num_frames)``.
    Padding rule for a video shorter than ``frames`` (only with ``pad``, else ``ValueError``): output
    frame i is source frame ``floor((i + 0.5) * num_frames / frames)`` (a nearest-neighbour stretch
    that repeats frames in order, identical in training and evaluation).
    """
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if num_frames < 1:
        raise ValueError(f"video has {num_frames} frames; at least 1 is needed")
    if num_frames < frames:
        if not pad:
            raise ValueError(f"video has {num_frames} frames, fewer than the {frames} requested")
        return [(2 * i + 1) * num_frames // (2 * frames) for i in range(frames)]
    bounds = [num_frames * i // frames for i in range(frames + 1)]
    if not train:
        return [(lo + hi) // 2 for lo, hi in zip(bounds[:-1], bounds[1:])]
    return [
        lo + int(torch.randint(hi - lo, (1,), generator=generator))
        for lo, hi in zip(bounds[:-1], bounds[1:])
    ]


def view_indices(num_frames: int, frames: int, clips: int, pad: bool = False) -> list[list[int]]:
    """``clips`` evaluation clips of ``frames`` indices each, offsets spread evenly inside each segment.

    Clip j takes ``lo + floor((2j + 1)(hi - lo) / 2 clips)`` from each segment ``[lo, hi)``; one clip
    is the centre clip of :func:`segment_indices`. Shorter videos follow its padding rule.
    """
    if clips < 1:
        raise ValueError(f"clips must be >= 1, got {clips}")
    if num_frames < frames:
        return [segment_indices(num_frames, frames, train=False, pad=pad)] * clips
    bounds = [num_frames * i // frames for i in range(frames + 1)]
    return [
        [lo + (2 * j + 1) * (hi - lo) // (2 * clips) for lo, hi in zip(bounds[:-1], bounds[1:])]
        for j in range(clips)
    ]


def crop_offsets(length: int, size: int, crops: int) -> list[int]:
    """Start offsets of ``crops`` windows of ``size`` spread evenly along ``length`` (1 crop: centred)."""
    if crops == 1:
        return [(length - size) // 2]
    return [round(k * (length - size) / (crops - 1)) for k in range(crops)]
