"""Synthetic confounded procedural activities (DESIGN 5.3), written as real video files + manifest.

An activity is an ordered sequence of atomic actions, each a distinct motion of a foreground "hand"
(an elongated block). Two confounders co-occur with the activity: the background/lighting style and a
distractor object. In ``train`` and ``test_id`` each takes the activity's own value with probability
``confound`` and a uniformly random one (its own included) otherwise, so ``confound=0`` makes them independent of
the activity; in ``test_ood`` both are uniform and independent of the activity, so a model that relies on them
falls to chance there.
"""

from __future__ import annotations

import csv
import json
from fractions import Fraction
from pathlib import Path
from typing import Iterable

import av
import numpy as np
from tqdm import tqdm

ACTIONS = [
    "move left", "move right", "rise", "fall",
    "spin clockwise", "spin counter-clockwise", "grow", "shrink",
]
# "make cereal"/"make tea" and "make coffee"/"fry egg" share their actions and differ only in order.
ACTIVITIES = {
    "make cereal": ["rise", "move right", "fall", "shrink"],
    "make tea": ["move right", "rise", "fall", "shrink"],
    "make coffee": ["spin clockwise", "grow", "move left"],
    "fry egg": ["grow", "spin clockwise", "move left"],
    "make juice": ["move left", "spin counter-clockwise", "rise", "grow"],
    "make sandwich": ["fall", "shrink", "spin counter-clockwise", "move right"],
}
BACKGROUNDS = ["sky gradient", "warm lamp", "dim room", "green stripes", "tiles", "purple dusk"]
DISTRACTORS = {
    "red ball": (220, 30, 30), "yellow cone": (240, 210, 40), "cyan ring": (40, 210, 220),
    "magenta cross": (210, 40, 200), "white diamond": (250, 250, 250), "navy box": (20, 30, 110),
}
CODECS = {"vp9": ("libvpx-vp9", "webm"), "h264": ("libx264", "mp4"), "mjpeg": ("mjpeg", "avi")}
_ENCODER_OPTIONS = {
    "vp9": {"deadline": "realtime", "cpu-used": "8", "crf": "24", "b:v": "0"},
    "h264": {"preset": "ultrafast", "crf": "20"},
    "mjpeg": {},
}
_HAND_RGB = np.array([225.0, 170.0, 130.0])
# Per-frame motion at 64 px and speed 1: translation (px), rotation (rad, + = clockwise on screen), log-scale.
_MOTION = {
    "move left": (-2.0, 0.0, 0.0, 0.0), "move right": (2.0, 0.0, 0.0, 0.0),
    "rise": (0.0, -2.0, 0.0, 0.0), "fall": (0.0, 2.0, 0.0, 0.0),
    "spin clockwise": (0.0, 0.0, 0.2, 0.0), "spin counter-clockwise": (0.0, 0.0, -0.2, 0.0),
    "grow": (0.0, 0.0, 0.0, 0.07), "shrink": (0.0, 0.0, 0.0, -0.07),
}


def _alpha(margin: np.ndarray) -> np.ndarray:
    """Soft coverage from a signed inside-distance in pixels (> 0 inside)."""
    return np.clip(margin + 0.5, 0.0, 1.0)


def _background(style: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """float [H, W, 3] in 0..255 for a style, with per-video brightness, tint and pattern-phase jitter."""
    y, x = np.mgrid[0:size, 0:size] / size
    phase = rng.uniform(0, 1)
    if style == 0:
        base = (1 - y)[..., None] * [70, 110, 200] + y[..., None] * [200, 225, 245]
    elif style == 1:
        glow = np.exp(-((x - 0.5) ** 2 + (y - 0.35) ** 2) * 6)[..., None]
        base = glow * [245, 190, 100] + (1 - glow) * [90, 50, 30]
    elif style == 2:
        base = (35 + 25 * y)[..., None] * [1.0, 1.0, 1.2]
    elif style == 3:
        stripe = ((x + y + phase) * 4 % 1 < 0.5)[..., None]
        base = np.where(stripe, [60, 140, 70], [110, 190, 110])
    elif style == 4:
        tile = (((x + phase) * 8).astype(int) + (y * 8).astype(int)) % 2 == 0
        base = np.where(tile[..., None], [210, 200, 170], [165, 155, 125])
    else:
        base = (1 - x)[..., None] * [120, 60, 140] + x[..., None] * [230, 170, 220]
    return base * rng.uniform(0.85, 1.15) + rng.uniform(-10, 10, 3)


def _distractor_margin(kind: int, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Signed inside-distance of distractor ``kind`` of radius ``r`` at local offsets (u, v)."""
    d = np.hypot(u, v)
    if kind == 0:
        return r - d
    if kind == 1:
        return np.minimum(0.6 * r - v, 0.55 * (v + r) - np.abs(u))
    if kind == 2:
        return 0.3 * r - np.abs(d - 0.7 * r)
    if kind == 3:
        horizontal = np.minimum(r - np.abs(u), 0.3 * r - np.abs(v))
        vertical = np.minimum(0.3 * r - np.abs(u), r - np.abs(v))
        return np.maximum(horizontal, vertical)
    if kind == 4:
        return (r - np.abs(u) - np.abs(v)) * 0.7
    return 0.75 * r - np.maximum(np.abs(u), np.abs(v))


def _trajectory(
    actions: list[str], frames_per_action: int, size: int, rng: np.random.Generator
) -> np.ndarray:
    """float [T, 4] per-frame (x, y, angle, log-scale) with idle padding and per-video jitter."""
    unit = size / 64
    steps = []
    for action in actions:
        dx, dy, dangle, dscale = _MOTION[action]
        speed = rng.uniform(0.75, 1.25)
        step = (dx * unit * speed, dy * unit * speed, dangle * speed, dscale * speed)
        steps += [step] * frames_per_action
    idle = [(0.0, 0.0, 0.0, 0.0)]
    pad = frames_per_action // 2
    steps = idle * int(rng.integers(pad + 1)) + steps + idle * int(rng.integers(pad + 1))
    state = np.cumsum([(0.0, 0.0, rng.uniform(0, np.pi), rng.uniform(-0.2, 0.1))] + steps, axis=0)[1:]
    for axis in (0, 1):  # centre the path in the frame, then jitter its position
        lo, hi = state[:, axis].min(), state[:, axis].max()
        state[:, axis] += size / 2 - (lo + hi) / 2 + rng.uniform(-size / 16, size / 16)
    return state


def _render(
    label: int, style: int, distractor: int, frames_per_action: int, size: int, rng: np.random.Generator
) -> np.ndarray:
    """uint8 [T, size, size, 3] RGB frames of one video."""
    state = _trajectory(ACTIVITIES[list(ACTIVITIES)[label]], frames_per_action, size, rng)
    frames = len(state)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    unit = size / 64
    # distractor: fixed corner region, slow drift
    r = rng.uniform(5, 7) * unit
    corner = rng.integers(0, 2, 2) * (size - 2 * r - 4 * unit) + r + 2 * unit
    drift = rng.uniform(-0.15, 0.15, 2) * unit * np.arange(frames)[:, None]
    centre = corner + drift  # [T, 2] (x, y)
    du, dv = xx - centre[:, 0, None, None], yy - centre[:, 1, None, None]
    d_alpha = _alpha(_distractor_margin(distractor, du, dv, r))[..., None]
    # hand: rotated, scaled block
    x, y, angle, log_scale = (state[:, i, None, None] for i in range(4))
    scale = np.exp(log_scale)
    cos, sin = np.cos(angle), np.sin(angle)
    u = (cos * (xx - x) + sin * (yy - y)) / scale
    v = (-sin * (xx - x) + cos * (yy - y)) / scale
    h_alpha = _alpha(np.minimum(9 * unit - np.abs(u), 4 * unit - np.abs(v)) * scale)[..., None]
    hand_rgb = _HAND_RGB + rng.uniform(-25, 25, 3)
    d_rgb = np.array(list(DISTRACTORS.values())[distractor])
    video = _background(style, size, rng)[None] * (1 - d_alpha) + d_alpha * d_rgb
    video = video * (1 - h_alpha) + h_alpha * hand_rgb
    video += rng.normal(0, 2.0, video.shape)
    return np.clip(video, 0, 255).round().astype(np.uint8)


def encode_video(path: str | Path, frames: Iterable[np.ndarray], codec: str = "vp9", fps: int = 8, gop: int = 8) -> None:
    """Write uint8 [H, W, 3] RGB frames (any iterable, streamed) with one encoder thread (deterministic)."""
    encoder, _ = CODECS[codec]
    with av.open(str(path), "w") as container:
        stream = None
        for frame in frames:
            if stream is None:
                stream = container.add_stream(encoder, rate=Fraction(fps))
                stream.width, stream.height = frame.shape[1], frame.shape[0]
                stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
                stream.codec_context.thread_count = 1
                stream.options = {"g": str(gop), **_ENCODER_OPTIONS[codec]}
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        if stream is None:
            raise ValueError(f"{path}: no frames to encode")
        container.mux(stream.encode())


def _confounder(own: int, confound: float, ood: bool, rng: np.random.Generator) -> int:
    """The activity's own confounder id with probability ``confound``, else a uniform one (so
    ``P(own) = confound + (1 - confound) / k``, and ``confound=0`` is independence); uniform if ``ood``."""
    k = len(ACTIVITIES)
    if ood:
        return int(rng.integers(k))
    if rng.random() < confound:
        return own
    return int(rng.integers(k))


SPLITS = ("train", "test_id", "test_ood")
GENERATOR = 2  # bumped whenever the same arguments would synthesize different videos (2: confound 0 = independent)


def _plan(seed: int, split: str, index: int, confound: float) -> tuple[int, int, int, np.random.Generator]:
    """(label, background, distractor, the generator that then renders the video) of one video."""
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    label = index % len(ACTIVITIES)
    style = _confounder(label, confound, split == "test_ood", rng)
    distractor = _confounder(label, confound, split == "test_ood", rng)
    return label, style, distractor, rng


def split_sizes(n_train: int, n_test: int) -> list[tuple[str, int]]:
    """``train`` n_train, ``test_id`` n_test // 2, ``test_ood`` the rest."""
    return list(zip(SPLITS, (n_train, n_test // 2, n_test - n_test // 2)))


def confounder_table(seed: int, n_train: int, n_test: int, confound: float) -> list[dict]:
    """Per video ``{"split", "label", "background", "distractor"}`` exactly as :func:`synthesize` assigns them,
    without rendering anything (for probing the confounders alone)."""
    rows = []
    for split, count in split_sizes(n_train, n_test):
        for i in range(count):
            label, style, distractor, _ = _plan(seed, split, i, confound)
            rows.append({"split": split, "label": label, "background": style, "distractor": distractor})
    return rows


def render_counterfactual(meta: dict, video: dict, background: int, distractor: int) -> np.ndarray:
    """uint8 [T, size, size, 3]: video ``video`` of a set written by :func:`synthesize` (``meta`` = its meta.json),
    re-rendered with the same random draws — same motion, speeds, positions, hand colour, noise — but the given
    background style and distractor kind. With the video's own ids it reproduces the frames before encoding."""
    label, _, _, rng = _plan(meta["seed"], video["split"], int(video["index"]), meta["confound"])
    return _render(label, background, distractor, meta["frames_per_action"], meta["size"], rng)


def synthesize(
    out: str | Path,
    seed: int = 0,
    n_train: int = 720,
    n_test: int = 240,
    confound: float = 0.9,
    codec: str = "vp9",
    size: int = 64,
    frames_per_action: int = 8,
    fps: int = 8,
    progress: bool = True,
) -> Path:
    """Write the dataset under ``out`` and return ``out/manifest.csv``.

    Splits: ``train`` (n_train videos), ``test_id`` (n_test // 2, same confounding as train) and
    ``test_ood`` (the rest of n_test, confounders uniform). Classes are balanced (label = i mod C).
    Also writes ``labels.json`` (classes, actions) and ``meta.json`` (settings and, per video, the
    background and distractor ids). Deterministic from ``seed``.
    """
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; valid codecs: {', '.join(CODECS)}")
    if not 0.0 <= confound <= 1.0:
        raise ValueError(f"confound must be in [0, 1], got {confound}")
    if size < 16 or size % 2:
        raise ValueError(f"size must be an even number >= 16 (yuv420p), got {size}")
    out = Path(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    classes = list(ACTIVITIES)
    splits = split_sizes(n_train, n_test)
    rows, videos = [], []
    with tqdm(total=n_train + n_test, desc=f"synthesizing {codec} videos", disable=not progress) as bar:
        for split, count in splits:
            for i in range(count):
                label, style, distractor, rng = _plan(seed, split, i, confound)
                frames = _render(label, style, distractor, frames_per_action, size, rng)
                rel = f"videos/{split}_{i:04d}.{CODECS[codec][1]}"
                encode_video(out / rel, frames, codec, fps, gop=frames_per_action)
                rows.append([rel, classes[label], split, ";".join(ACTIVITIES[classes[label]])])
                videos.append(
                    {"path": rel, "split": split, "index": i, "label": label, "background": style,
                     "distractor": distractor, "num_frames": len(frames)}
                )
                bar.update()
    with (out / "manifest.csv").open("w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([["path", "label", "split", "steps"], *rows])
    (out / "labels.json").write_text(json.dumps({"classes": classes, "actions": ACTIONS}, indent=2) + "\n")
    meta = {
        "generator": GENERATOR, "seed": seed, "confound": confound, "codec": codec, "size": size, "fps": fps,
        "frames_per_action": frames_per_action, "n_train": n_train, "n_test": n_test,
        "activities": ACTIVITIES, "backgrounds": BACKGROUNDS, "distractors": list(DISTRACTORS),
        "videos": videos,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return out / "manifest.csv"
