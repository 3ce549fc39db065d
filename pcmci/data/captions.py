"""Frame–caption pairs with a planted co-occurrence, for pretraining the project's own small VLM (issue 19).

The paper's ICH removes a pretrained VLM's co-occurrence hallucination ("frying eggs" matches better when the stove
is masked and the apron left). We cannot download CLIP here, so the project makes a VLM with that failure: frames of
the synthetic activities (:mod:`pcmci.data.synthetic`, one frame per clip) captioned with the activity's label text,
where an object that goes with the activity but does not cause it — its *prop* (:data:`~pcmci.data.synthetic.PROPS`,
prop ``i`` belongs to activity ``i``) — stands in the room with probability ``cooccur`` and the caption names it.
Label texts share words as real label sets do ("make coffee" / "make tea", "fry egg" / "boil egg").

Per pair ``i`` (seeded by ``(seed, i)``, nothing else): the label ``i mod C``, background and distractor uniform and
independent of it, the prop: the label's own with probability ``cooccur``, otherwise none or another activity's
prop (equally likely). The frames are evenly spaced frames of the rendered clip from a random offset.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from .synthetic import PROPS, Scene, _render

NO_PROP = -1
CAPTION = "a video of a person {activity}."
CAPTION_WITH_PROP = "a video of a person {activity}, with {article} {prop}."


@dataclass
class CaptionSet:
    """``frames`` uint8 ``[N,H,W,3]``; ``captions`` N strings; ``labels`` int ``[N]``; ``props`` int ``[N]``
    (:data:`NO_PROP` when none stands in the room); ``classes`` the activity names."""

    frames: np.ndarray
    captions: list[str]
    labels: np.ndarray
    props: np.ndarray
    classes: list[str]


def draw_prop(label: int, cooccur: float, k: int, rng: np.random.Generator) -> int:
    """The label's own prop with probability ``cooccur``; else none or one of the ``k - 1`` others (equally)."""
    if rng.random() < cooccur:
        return label
    other = int(rng.integers(k))  # 0..k-1 stands for "none" or another prop, each with probability 1/k
    return NO_PROP if other == label else other


def caption(activity: str, prop: int) -> str:
    """The caption of a frame: the activity's label text, and the prop when one stands in the room."""
    if prop == NO_PROP:
        return CAPTION.format(activity=activity)
    name = list(PROPS)[prop]
    return CAPTION_WITH_PROP.format(activity=activity, article="an" if name[0] in "aeiou" else "a", prop=name)


def render_pair(seed: int, index: int, cooccur: float, scene: Scene = Scene(still_pairs=1), size: int = 64,
                frames_per_action: int = 8, prop: int | None = None, hide: frozenset[str] = frozenset(),
                frames: int = 1) -> tuple[np.ndarray, int, int]:
    """Clip ``index``: (``frames`` evenly spaced frames uint8 ``[frames,H,W,3]`` from a random offset, label, prop). ``prop`` forces the prop (the draws stay the same, so
    only the room's object changes); ``hide`` leaves layers out of the same frame (``synthetic._render``)."""
    rng = np.random.default_rng([seed, 19, index])
    k = len(scene.classes())
    label = index % k
    drawn = draw_prop(label, cooccur, k, rng)
    prop = drawn if prop is None else prop
    style, distractor = int(rng.integers(k)), int(rng.integers(k))
    offset = rng.random()
    clip = _render(label, style, distractor, frames_per_action, size, rng, scene,
                   prop=None if prop == NO_PROP else prop, hide=hide)
    picks = ((offset + np.arange(frames)) * len(clip) / frames).astype(int)
    return clip[picks], label, prop


def caption_pairs(seed: int, clips: int, cooccur: float, frames: int = 1, scene: Scene = Scene(still_pairs=1),
                  size: int = 64, frames_per_action: int = 8, progress: bool = False) -> CaptionSet:
    """``clips x frames`` frame–caption pairs (``frames`` evenly spaced frames of each clip share its caption; see
    the module docstring); deterministic from the arguments."""
    if not 0.0 <= cooccur <= 1.0:
        raise ValueError(f"cooccur must be in [0, 1], got {cooccur}")
    classes = list(scene.classes())
    images, captions, labels, props = [], [], [], []
    for i in tqdm(range(clips), desc="rendering frame-caption pairs", disable=not progress):
        shots, label, prop = render_pair(seed, i, cooccur, scene, size, frames_per_action, frames=frames)
        images.append(shots)
        captions += [caption(classes[label], prop)] * frames
        labels += [label] * frames
        props += [prop] * frames
    return CaptionSet(np.concatenate(images), captions, np.array(labels), np.array(props), classes)
