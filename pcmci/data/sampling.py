"""Uniform segment sampling (TSN style) of F frame indices over a whole video."""

from __future__ import annotations

import torch


def segment_indices(
    num_frames: int, frames: int, train: bool, generator: torch.Generator | None = None
) -> list[int]:
    """Split ``[0, num_frames)`` into ``frames`` equal segments and pick one index per segment.

    Training picks a uniformly random frame inside each segment (drawn from ``generator``);
    evaluation picks each segment's centre. Returns ``frames`` sorted indices in
    ``[0, num_frames)``. Raises ``ValueError`` when ``num_frames < frames``.
    """
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if num_frames < frames:
        raise ValueError(f"video has {num_frames} frames, fewer than the {frames} requested")
    bounds = [num_frames * i // frames for i in range(frames + 1)]
    if not train:
        return [(lo + hi) // 2 for lo, hi in zip(bounds[:-1], bounds[1:])]
    return [
        lo + int(torch.randint(hi - lo, (1,), generator=generator))
        for lo, hi in zip(bounds[:-1], bounds[1:])
    ]
