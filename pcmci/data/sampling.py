"""Uniform segment sampling (TSN style) of F frame indices over a whole video, test-time views, training crops,
and the order in which an epoch visits the videos."""

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


def train_crop_window(height: int, width: int, min_scale: float, generator: torch.Generator) -> tuple[int, int, int]:
    """A random square window ``(top, left, side)`` of a ``height x width`` frame for training (scale jitter).

    Its area is a uniform fraction in ``[min_scale, 1]`` of the largest square, ``min(height, width)^2``; its position
    is uniform over the frame. One window per clip (every frame shares it, so the motion is kept). No mirroring:
    left/right and clockwise are what tell some activities apart."""
    if not 0.0 < min_scale <= 1.0:
        raise ValueError(f"min_scale must be in (0, 1], got {min_scale}")
    area = min_scale + (1.0 - min_scale) * float(torch.rand((), generator=generator))
    side = max(1, round(min(height, width) * area ** 0.5))
    top = int(torch.randint(height - side + 1, (), generator=generator))
    left = int(torch.randint(width - side + 1, (), generator=generator))
    return top, left, side


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool, rank: int = 0, world: int = 1,
                weights: torch.Tensor | None = None) -> list[int]:
    """The positions of shard ``rank`` of ``world`` in one epoch's visit of ``n`` videos.

    The order is ``range(n)``, a permutation seeded by ``seed * 100003 + epoch`` when ``shuffle`` (as
    ``DistributedSampler(seed=seed * 100003)``), or — given ``weights[n]`` — ``n`` draws with replacement in
    proportion to them from the same seed (a weighted resample: each video appears ``weights_i / mean(weights)``
    times per epoch in expectation). Padded by repeating it from the start to a multiple of ``world`` (every rank
    runs as many batches, or DDP would hang); shard ``rank`` takes positions ``rank::world``."""
    generator = torch.Generator().manual_seed(seed * 100003 + epoch)
    if weights is not None:
        if weights.shape != (n,) or not bool((weights >= 0).all()) or not float(weights.sum()) > 0:
            raise ValueError(f"epoch_order: weights must be {n} non-negative numbers, not all zero; got shape "
                             f"{tuple(weights.shape)}")
        order = torch.multinomial(weights.double(), n, replacement=True, generator=generator).tolist()
    elif shuffle:
        order = torch.randperm(n, generator=generator).tolist()
    else:
        order = list(range(n))
    padded = -(-n // world) * world
    if n:
        order = (order * -(-padded // n))[:padded]
    return order[rank::world]
