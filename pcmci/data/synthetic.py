"""Synthetic confounded procedural activities (DESIGN 5.3), written as real video files + manifest.

An activity is an ordered sequence of atomic actions, each a distinct motion of a foreground "hand"
(an elongated block). Two confounders co-occur with the activity: the background/lighting style and a
distractor object. In ``train`` and ``test_id`` each takes the activity's own value with probability
``confound`` and a uniformly random one (its own included) otherwise, so ``confound=0`` makes them independent of
the activity; in ``test_ood`` both are uniform and independent of the activity, so a model that relies on them
falls to chance there.

A :class:`Scene` makes the set hard for shortcuts that remove what stands still (real video is like that):

- ``camera``: a hand-held camera over the room — the background scrolls at a per-clip velocity, zooms and shakes
  (the distractor, which stands in the room, shakes with it); the actor's layer (hand, tool) is the camera's
  frame of reference (an egocentric view of the work surface).
- ``lighting``: the room's light drifts over the clip and flickers frame to frame (background and distractor).
- ``distractor_motion``: the distractor moves on its own (bounces around the frame).
- ``still_pairs``: class pairs that share their motion exactly and differ only by a tool that sits still in every
  frame ("fry egg" with a pan / "boil egg" with a pot): the still object is the cause, not a confounder.
- ``order_pairs``: whether the set holds the two classes told apart from another only by the order of their actions
  ("make tea" / "make cereal", "make coffee" / "fry egg"); without them (``False``) every class differs from every
  other by its actions or its tool, so a small model can learn the cause in budget and a benchmark can rank
  interventions by how much of it they learn.
- ``context``: ``"independent"`` draws each confounder on its own; ``"joint"`` draws one context per clip and
  gives every confounder its id (a kitchen comes with its wallpaper and its objects), so at the same ``confound``
  the training split holds about ``1 - confound`` of its clips in another class's context, against
  ``(1 - confound)^2`` with two independent confounders — the support a backdoor adjustment needs (:func:`support`).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Literal, get_args

import av
import numpy as np
from tqdm import tqdm

ACTIONS = [
    "move left", "move right", "rise", "fall",
    "spin clockwise", "spin counter-clockwise", "grow", "shrink",
]
# "make cereal"/"make tea" and "make coffee"/"fry egg" share their actions and differ only in order.
ORDER_TWINS = ("make tea", "make coffee")  # the second of each order-only pair; left out when Scene.order_pairs=False
ACTIVITIES = {
    "make cereal": ["rise", "move right", "fall", "shrink"],
    "make tea": ["move right", "rise", "fall", "shrink"],
    "make coffee": ["spin clockwise", "grow", "move left"],
    "fry egg": ["grow", "spin clockwise", "move left"],
    "make juice": ["move left", "spin counter-clockwise", "rise", "grow"],
    "make sandwich": ["fall", "shrink", "spin counter-clockwise", "move right"],
}
# Still-object pairs: (activity with a tool, its twin with the same actions, the first's tool, the twin's tool).
STILL_PAIRS = [("fry egg", "boil egg", "pan", "pot"), ("make juice", "make smoothie", "jug", "blender")]
TOOLS = {"pan": (35, 35, 40), "pot": (150, 150, 165), "jug": (90, 160, 230), "blender": (240, 120, 40)}
# Co-occurring props (the paper's apron): an object that goes with an activity in the data but does not cause it.
# Prop ``i`` is activity ``i``'s own; name -> (RGB, shape of :func:`_prop_margin`).
PROPS = {
    "bowl": ((245, 245, 235), "half disc"), "kettle": ((190, 40, 60), "disc"), "mug": ((60, 200, 120), "box"),
    "apron": ((250, 120, 170), "apron"), "glass": ((170, 230, 250), "tall box"), "plate": ((230, 220, 90), "flat"),
    "timer": ((140, 90, 230), "ring"), "straw": ((255, 255, 255), "bar"),
}
BACKGROUNDS = ["sky gradient", "warm lamp", "dim room", "green stripes", "tiles", "purple dusk", "brick wall",
               "teal waves"]
DISTRACTORS = {
    "red ball": (220, 30, 30), "yellow cone": (240, 210, 40), "cyan ring": (40, 210, 220),
    "magenta cross": (210, 40, 200), "white diamond": (250, 250, 250), "navy box": (20, 30, 110),
    "lime triangle": (150, 230, 40), "orange bar": (250, 140, 20),
}
CODECS = {"vp9": ("libvpx-vp9", "webm"), "h264": ("libx264", "mp4"), "mjpeg": ("mjpeg", "avi")}
MAX_SIZE = 512  # frame side in pixels: a 40-frame clip is drawn as float64 [T, S, S, 3] arrays in memory
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


Context = Literal["independent", "joint"]  # how a clip's confounders are drawn (see Scene)


@dataclass(frozen=True)
class Scene:
    """How the scene around the activity behaves; every knob 0 is the still scene of generator 2.

    ``camera`` in [0, 1]: background scroll of 0.5-1 x ``camera`` px/frame (at 64 px) in a random direction, zoom
    drift up to ``camera`` %/frame, shake of std ``camera / 4`` px; ``lighting`` in [0, 1]: drift up to
    +-``30 lighting`` % of brightness over the clip, flicker of std ``6 lighting`` %;
    ``distractor_motion`` in [0, 2]: the distractor's own speed in px/frame; ``still_pairs`` in 0..2: how many
    still-object class pairs (each adds one class); ``props``: a third confounder, a co-occurring object standing in
    the room (:data:`PROPS`, the paper's apron), drawn like the background and the distractor; ``context``: each
    confounder drawn on its own (``"independent"``) or one draw shared by all of them (``"joint"``);
    ``order_pairs``: whether :data:`ORDER_TWINS` are classes of the set.
    """

    camera: float = 0.0
    lighting: float = 0.0
    distractor_motion: float = 0.0
    still_pairs: int = 0
    props: bool = False
    context: Context = "independent"
    order_pairs: bool = True

    def __post_init__(self) -> None:
        for name, hi in (("camera", 1.0), ("lighting", 1.0), ("distractor_motion", 2.0)):
            value = getattr(self, name)
            if not 0.0 <= value <= hi:
                raise ValueError(f"scene {name} must be in [0, {hi:g}], got {value}")
        if self.still_pairs not in range(len(STILL_PAIRS) + 1):
            raise ValueError(f"scene still_pairs must be in 0..{len(STILL_PAIRS)}, got {self.still_pairs}")
        if self.context not in get_args(Context):
            raise ValueError(f"scene context must be one of {', '.join(get_args(Context))}, got {self.context!r}")

    def classes(self) -> dict[str, list[str]]:
        """Class name -> its ordered actions, for a set in this scene (:func:`activities`)."""
        return activities(self.still_pairs, self.order_pairs)


DEMO_SCENE = Scene(camera=0.3, lighting=0.3, distractor_motion=0.5, still_pairs=1, order_pairs=False)
"""The demo's scene: camera motion, light drift, a moving distractor and one still-object pair, 5 classes."""


def activities(still_pairs: int = 0, order_pairs: bool = True) -> dict[str, list[str]]:
    """Class name -> its ordered actions: the six base activities (four without :data:`ORDER_TWINS`) plus the twin
    of each still-object pair."""
    found = {name: steps for name, steps in ACTIVITIES.items() if order_pairs or name not in ORDER_TWINS}
    for own, twin, _, _ in STILL_PAIRS[:still_pairs]:
        found[twin] = list(ACTIVITIES[own])
    return found


def tools(still_pairs: int = 0) -> dict[str, str]:
    """Class name -> the still tool that defines it (classes of a still-object pair only)."""
    return {name: tool for own, twin, tool_a, tool_b in STILL_PAIRS[:still_pairs]
            for name, tool in ((own, tool_a), (twin, tool_b))}


def _alpha(margin: np.ndarray) -> np.ndarray:
    """Soft coverage from a signed inside-distance in pixels (> 0 inside)."""
    return np.clip(margin + 0.5, 0.0, 1.0)


def _background(style: int, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """float [..., 3] in 0..255 for a style at scene coordinates ``x, y`` (frame widths; the frame is [0, 1)),
    with per-video brightness, tint and pattern-phase jitter and a faint texture, so a moving camera shows."""
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
    elif style == 5:
        base = (1 - x)[..., None] * [120, 60, 140] + x[..., None] * [230, 170, 220]
    elif style == 6:
        row = np.floor(y * 6)
        mortar = (((y * 6) % 1 < 0.15) | (((x * 4 + 0.5 * (row % 2) + phase) % 1) < 0.08))[..., None]
        base = np.where(mortar, [200, 195, 185], [160, 70, 50])
    else:
        wave = (0.5 + 0.5 * np.sin(2 * np.pi * (3 * x + 0.5 * np.sin(2 * np.pi * (2 * y + phase)))))[..., None]
        base = wave * [30, 150, 150] + (1 - wave) * [10, 80, 90]
    texture = 8 * np.sin(2 * np.pi * (5 * x + phase)) * np.sin(2 * np.pi * (4 * y + 2 * phase))
    return base * rng.uniform(0.85, 1.15) + rng.uniform(-10, 10, 3) + texture[..., None]


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
    if kind == 5:
        return 0.75 * r - np.maximum(np.abs(u), np.abs(v))
    if kind == 6:
        return np.minimum(v + 0.5 * r, 0.45 * (r - v) - 0.5 * np.abs(u))
    return np.minimum(r - np.abs(u), 0.35 * r - np.abs(v))


def _prop_margin(shape: str, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Signed inside-distance of a prop of ``shape`` and size ``r`` at local offsets (u, v)."""
    if shape == "half disc":
        return np.minimum(r - np.hypot(u, v), v)
    if shape == "disc":
        return 0.8 * r - np.hypot(u, v)
    if shape == "box":
        return np.maximum(np.minimum(0.6 * r - np.abs(u), 0.7 * r - np.abs(v)),
                          0.15 * r - np.abs(np.hypot(u - 0.6 * r, v) - 0.35 * r))
    if shape == "apron":  # a bib over a wider skirt
        return np.maximum(np.minimum(0.45 * r - np.abs(u), np.minimum(v + r, -v)),
                          np.minimum(0.9 * r - np.abs(u), np.minimum(v, r - v)))
    if shape == "tall box":
        return np.minimum(0.4 * r - np.abs(u), r - np.abs(v))
    if shape == "flat":
        return 1.0 - np.hypot(u / (1.1 * r), v / (0.35 * r))
    if shape == "ring":
        return 0.25 * r - np.abs(np.hypot(u, v) - 0.65 * r)
    return np.minimum(0.15 * r - np.abs(u + 0.3 * v), r - np.abs(v))


def _tool_margin(tool: str, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Signed inside-distance of a still tool of size ``r`` at local offsets (u, v)."""
    if tool == "pan":  # a disc with a handle to the right
        return np.maximum(r - np.hypot(u, v), np.minimum(0.25 * r - np.abs(v), np.minimum(u - 0.8 * r, 2 * r - u)))
    if tool == "pot":  # a wide box with two ears
        body = np.minimum(1.1 * r - np.abs(u), 0.8 * r - np.abs(v))
        ears = np.minimum(1.4 * r - np.abs(u), 0.2 * r - np.abs(v + 0.4 * r))
        return np.maximum(body, ears)
    if tool == "jug":  # a tall box
        return np.minimum(0.6 * r - np.abs(u), 1.1 * r - np.abs(v))
    return np.minimum(0.8 * r - np.abs(u), np.minimum(1.1 * r - np.abs(v), 0.3 * r + 0.5 * (v + r) - np.abs(u)))


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


def _camera(scene: Scene, frames: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Per-frame camera of one clip: (scroll ``[T,2]`` px, zoom ``[T]``, shake ``[T,2]`` px, light gain ``[T]``)."""
    unit, t = size / 64, np.arange(frames)
    if scene.camera > 0:
        angle = rng.uniform(0, 2 * np.pi)
        speed = rng.uniform(0.5, 1.0) * scene.camera * unit
        scroll = np.outer(t, [np.cos(angle) * speed, np.sin(angle) * speed])
        zoom = np.exp(rng.uniform(-0.01, 0.01) * scene.camera * (t - frames / 2))
        shake = rng.normal(0, scene.camera * unit / 4, (frames, 2))
    else:
        scroll, zoom, shake = np.zeros((frames, 2)), np.ones(frames), np.zeros((frames, 2))
    if scene.lighting > 0:
        drift = rng.uniform(-0.3, 0.3) * scene.lighting
        gain = 1 + drift * (t / max(1, frames - 1) - 0.5) + rng.normal(0, 0.06 * scene.lighting, frames)
    else:
        gain = np.ones(frames)
    return scroll, zoom, shake, gain


def _render(label: int, style: int, distractor: int, frames_per_action: int, size: int, rng: np.random.Generator,
            scene: Scene = Scene(), noise: bool = True, prop: int | None = None,
            hide: frozenset[str] = frozenset()) -> np.ndarray:
    """uint8 [T, size, size, 3] RGB frames of one video (``noise=False``: without the sensor noise).

    ``prop``: the index of a :data:`PROPS` object standing in the room (None: no prop; no random draw either, so
    sets without props render as before). ``hide`` ⊆ {"actor", "prop"}: the same draws, with the hand and tool (the
    activity's visible cause) or the prop left out — the masks of the hallucination probe."""
    classes = scene.classes()
    name = list(classes)[label]
    state = _trajectory(classes[name], frames_per_action, size, rng)
    frames = len(state)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    unit = size / 64
    scroll, zoom, shake, gain = _camera(scene, frames, size, rng)
    # the room (background, distractor) as the camera sees it: scene point = (pixel - centre) / zoom + centre + ...
    cx = (xx[None] - size / 2) / zoom[:, None, None] + size / 2 + scroll[:, 0, None, None] + shake[:, 0, None, None]
    cy = (yy[None] - size / 2) / zoom[:, None, None] + size / 2 + scroll[:, 1, None, None] + shake[:, 1, None, None]
    room = _background(style, cx / size, cy / size, rng)
    # distractor: a corner region, slow drift (plus its own bouncing motion), shaken with the room
    r = rng.uniform(5, 7) * unit
    corner = rng.integers(0, 2, 2) * (size - 2 * r - 4 * unit) + r + 2 * unit
    drift = rng.uniform(-0.15, 0.15, 2) * unit * np.arange(frames)[:, None]
    centre = corner + drift - shake  # [T, 2] (x, y)
    if scene.distractor_motion > 0:
        heading = rng.uniform(0, 2 * np.pi)
        walk = np.outer(np.arange(frames), [np.cos(heading), np.sin(heading)]) * scene.distractor_motion * unit
        lo, span = r + unit, size - 2 * r - 2 * unit  # bounce inside the frame: a triangle wave over [lo, lo+span]
        centre = lo + span - np.abs((centre + walk - lo) % (2 * span) - span)
    du, dv = xx - centre[:, 0, None, None], yy - centre[:, 1, None, None]
    d_alpha = _alpha(_distractor_margin(distractor, du, dv, r))[..., None]
    d_rgb = np.array(list(DISTRACTORS.values())[distractor])
    video = room * (1 - d_alpha) + d_alpha * d_rgb
    if prop is not None:  # the prop stands in the room, upper middle, shaken with it
        rgb, shape = list(PROPS.values())[prop]
        at = np.array([rng.uniform(0.35, 0.65), rng.uniform(0.14, 0.24)]) * size - shake[:, None, None, :]
        p_alpha = _alpha(_prop_margin(shape, xx - at[..., 0], yy - at[..., 1], 6.5 * unit))[..., None]
        if "prop" not in hide:
            video = video * (1 - p_alpha) + p_alpha * np.array(rgb, dtype=np.float64)
    video = video * gain[:, None, None, None]
    # hand: rotated, scaled block
    x, y, angle, log_scale = (state[:, i, None, None] for i in range(4))
    scale = np.exp(log_scale)
    cos, sin = np.cos(angle), np.sin(angle)
    u = (cos * (xx - x) + sin * (yy - y)) / scale
    v = (-sin * (xx - x) + cos * (yy - y)) / scale
    h_alpha = _alpha(np.minimum(9 * unit - np.abs(u), 4 * unit - np.abs(v)) * scale)[..., None]
    hand_rgb = _HAND_RGB + rng.uniform(-25, 25, 3)
    if "actor" not in hide:
        video = video * (1 - h_alpha) + h_alpha * hand_rgb
    tool = tools(scene.still_pairs).get(name)
    if tool is not None:  # the still cause: the same pixels in every frame, in front of the hand
        at = np.array([rng.uniform(0.3, 0.6), rng.uniform(0.72, 0.8)]) * size
        t_alpha = _alpha(_tool_margin(tool, xx - at[0], yy - at[1], 7.5 * unit))[None, ..., None]
        if "actor" not in hide:
            video = video * (1 - t_alpha) + t_alpha * np.array(TOOLS[tool], dtype=np.float64)
    if noise:
        video = video + rng.normal(0, 2.0, video.shape)
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


def _confounder(own: int, confound: float, ood: bool, rng: np.random.Generator, k: int) -> int:
    """The activity's own confounder id with probability ``confound``, else a uniform one of ``k`` (so
    ``P(own) = confound + (1 - confound) / k``, and ``confound=0`` is independence); uniform if ``ood``."""
    if ood:
        return int(rng.integers(k))
    if rng.random() < confound:
        return own
    return int(rng.integers(k))


SPLITS = ("train", "test_id", "test_ood")
GENERATOR = 3  # bumped whenever the same arguments would synthesize different videos (3: scenes, textures)


def _plan(seed: int, split: str, index: int, confound: float, still_pairs: int = 0, props: bool = False,
          joint: bool = False, order_pairs: bool = True) -> tuple[int, int, int, int | None, np.random.Generator]:
    """(label, background, distractor, prop (None without props), the generator that then renders the video).
    ``joint``: the distractor and the prop take the background's id; the same random draws are made either way, so
    a joint set shows the same motion, camera and light as the independent set of the same seed."""
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    k = len(activities(still_pairs, order_pairs))
    label = index % k
    style = _confounder(label, confound, split == "test_ood", rng, k)
    distractor = _confounder(label, confound, split == "test_ood", rng, k)
    prop = _confounder(label, confound, split == "test_ood", rng, k) if props else None
    if joint:
        distractor, prop = style, None if prop is None else style
    return label, style, distractor, prop, rng


def split_sizes(n_train: int, n_test: int) -> list[tuple[str, int]]:
    """``train`` n_train, ``test_id`` n_test // 2, ``test_ood`` the rest."""
    return list(zip(SPLITS, (n_train, n_test // 2, n_test - n_test // 2)))


def confounder_table(seed: int, n_train: int, n_test: int, confound: float, still_pairs: int = 0,
                     props: bool = False, joint: bool = False, order_pairs: bool = True) -> list[dict]:
    """Per video ``{"split", "label", "background", "distractor"}`` (and ``"prop"`` with props) exactly as
    :func:`synthesize` assigns them, without rendering anything (for probing the confounders alone)."""
    rows = []
    for split, count in split_sizes(n_train, n_test):
        for i in range(count):
            label, style, distractor, prop, _ = _plan(seed, split, i, confound, still_pairs, props, joint, order_pairs)
            row = {"split": split, "label": label, "background": style, "distractor": distractor}
            rows.append(row if prop is None else {**row, "prop": prop})
    return rows


def support(rows: list[dict]) -> dict[str, float]:
    """Per split, the share of videos none of whose confounders (background, distractor, prop) is their own
    activity's — the confounder/label combinations that make up most of ``test_ood``. ``rows`` as
    :func:`confounder_table` returns them (or ``meta.json``'s ``videos``). Positivity: the backdoor adjustment
    ``sum_c P(c) P(Y|X,c)`` can only be estimated where ``train`` has such videos; at confound 0.9 with two
    confounders it has well under 1%, so out-of-distribution accuracy there measures extrapolation."""
    kinds = [kind for kind in ("background", "distractor", "prop") if rows and kind in rows[0]]
    found: dict[str, list[bool]] = {}
    for row in rows:
        found.setdefault(row["split"], []).append(all(row[kind] != row["label"] for kind in kinds))
    return {split: sum(flags) / len(flags) for split, flags in found.items()}


def scene_of(meta: dict) -> Scene:
    """The :class:`Scene` a set was written with (a still scene for sets written before scenes existed)."""
    return Scene(**meta.get("scene", {}))


def render_counterfactual(meta: dict, video: dict, background: int, distractor: int,
                          prop: int | None = None) -> np.ndarray:
    """uint8 [T, size, size, 3]: video ``video`` of a set written by :func:`synthesize` (``meta`` = its meta.json),
    re-rendered with the same random draws — same motion, speeds, positions, camera, light, hand colour, tool,
    noise — but the given background style, distractor kind and prop (``None``: the video's own, if its set has
    props). With the video's own ids it reproduces the frames before encoding."""
    scene = scene_of(meta)
    label, _, _, own, rng = _plan(meta["seed"], video["split"], int(video["index"]), meta["confound"],
                                  scene.still_pairs, scene.props, scene.context == "joint", scene.order_pairs)
    return _render(label, background, distractor, meta["frames_per_action"], meta["size"], rng, scene,
                   prop=own if prop is None else prop)


def _remove_earlier_set(out: Path) -> None:
    """The videos an earlier synthetic set in ``out`` listed in its ``meta.json`` (no other file is touched)."""
    meta = out / "meta.json"
    if not meta.is_file():
        return
    try:
        listed = [video["path"] for video in json.loads(meta.read_text())["videos"]]
    except (ValueError, KeyError, TypeError):
        return
    videos = (out / "videos").resolve()
    for rel in listed:
        if (out / rel).resolve().parent == videos:  # only what the generator writes: out/videos/<name>
            (out / rel).unlink(missing_ok=True)


def rendered_digest(frames: np.ndarray) -> str:
    """SHA-256 of a clip's rendered frames (uint8 ``[T, H, W, 3]``, C order), shape included."""
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    return hashlib.sha256(repr(frames.shape).encode() + frames.tobytes()).hexdigest()


def _write_one(job: tuple[str, int], out: Path, seed: int, confound: float, scene: Scene, codec: str, fps: int,
               size: int, frames_per_action: int) -> dict:
    """Render and encode video ``job = (split, index)`` of a set; its ``meta.json`` entry."""
    split, i = job
    label, style, distractor, prop, rng = _plan(seed, split, i, confound, scene.still_pairs, scene.props,
                                                scene.context == "joint", scene.order_pairs)
    frames = _render(label, style, distractor, frames_per_action, size, rng, scene, prop=prop)
    rel = f"videos/{split}_{i:04d}.{CODECS[codec][1]}"
    encode_video(out / rel, frames, codec, fps, gop=frames_per_action)
    return ({"path": rel, "split": split, "index": i, "label": label, "background": style, "distractor": distractor,
             "num_frames": len(frames), "rendered_sha256": rendered_digest(frames)}
            | ({} if prop is None else {"prop": prop}))


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
    scene: Scene = Scene(),
    overwrite: bool = False,
    jobs: int = 1,
) -> Path:
    """Write the dataset under ``out`` and return ``out/manifest.csv``.

    Splits: ``train`` (n_train videos), ``test_id`` (n_test // 2, same confounding as train) and
    ``test_ood`` (the rest of n_test, confounders uniform). Classes are balanced (label = i mod C). ``scene``
    sets camera motion, lighting, the distractor's motion and the still-object pairs (see :class:`Scene`).
    Also writes ``labels.json`` (classes, actions) and ``meta.json`` (settings, :func:`support` per split and,
    per video, the background and distractor ids). Deterministic from ``seed``. An ``out`` that already holds a
    ``manifest.csv`` is refused unless ``overwrite``, which first removes the files an earlier synthetic set there
    listed in its ``meta.json`` (a smaller new set would otherwise leave stale videos beside its manifest).
    ``jobs`` processes render and encode at once; the set is the same for any number.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; valid codecs: {', '.join(CODECS)}")
    if not 0.0 <= confound <= 1.0:
        raise ValueError(f"confound must be in [0, 1], got {confound}")
    if size < 16 or size % 2 or size > MAX_SIZE:
        raise ValueError(f"size must be an even number in [16, {MAX_SIZE}] (yuv420p; frames are drawn in float64 "
                         f"in memory), got {size}")
    if n_train < 0 or n_test < 0:
        raise ValueError(f"the numbers of training and test videos must be >= 0, got {n_train} and {n_test}")
    out = Path(out)
    if (out / "manifest.csv").exists():
        if not overwrite:
            raise FileExistsError(f"{out / 'manifest.csv'} exists; synthesize into a new folder, or overwrite it "
                                  "(pcmci synth --overwrite)")
        _remove_earlier_set(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    table = scene.classes()
    classes = list(table)
    splits = split_sizes(n_train, n_test)
    todo = [(split, i) for split, count in splits for i in range(count)]
    make = functools.partial(_write_one, out=out, seed=seed, confound=confound, scene=scene, codec=codec, fps=fps,
                             size=size, frames_per_action=frames_per_action)
    # each video has its own seeded draws, so workers write exactly what one process would; spawned, not forked: a
    # fork of a process that has run DALI or torch threads can hang in the child
    pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) if jobs > 1 else None
    with pool or contextlib.nullcontext():
        made = pool.map(make, todo, chunksize=8) if pool is not None else map(make, todo)
        videos = list(tqdm(made, total=len(todo), desc=f"synthesizing {codec} videos", disable=not progress))
    rows = [[v["path"], classes[v["label"]], v["split"], ";".join(table[classes[v["label"]]])] for v in videos]
    with (out / "manifest.csv").open("w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([["path", "label", "split", "steps"], *rows])
    (out / "labels.json").write_text(json.dumps({"classes": classes, "actions": ACTIONS}, indent=2) + "\n")
    meta = {
        "generator": GENERATOR, "seed": seed, "confound": confound, "codec": codec, "size": size, "fps": fps,
        "frames_per_action": frames_per_action, "n_train": n_train, "n_test": n_test, "scene": asdict(scene),
        "activities": table, "tools": tools(scene.still_pairs), "backgrounds": BACKGROUNDS[: len(classes)],
        "distractors": list(DISTRACTORS)[: len(classes)],
        **({"props": list(PROPS)[: len(classes)]} if scene.props else {}),
        "support": support(videos),
        # The pixels drawn before encoding, and what drew and encoded them: two syntheses with the same digest drew the
        # same scene; their decoded frames then differ only if the codec libraries differ (lossy encoding).
        "rendered_sha256": hashlib.sha256("".join(v["rendered_sha256"] for v in videos).encode()).hexdigest(),
        "versions": {"numpy": np.__version__, "av": av.__version__,
                     "libavcodec": ".".join(map(str, av.library_versions["libavcodec"]))},
        "videos": videos,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return out / "manifest.csv"
