"""Frame–caption pairs with a planted co-occurrence (issue 19) and the prop layer of the synthetic renderer."""
import math

import numpy as np
import pytest

from pcmci.data.captions import NO_PROP, caption, caption_pairs, draw_prop, render_pair
from pcmci.data.synthetic import PROPS, Scene, _plan, _render, activities, confounder_table

SCENE = Scene(still_pairs=1)


@pytest.mark.parametrize("cooccur", [0.0, 0.6, 0.9])
def test_prop_rates_match_the_stated_distribution(cooccur):
    # P(own) = c, P(none) = P(each other prop) = (1 - c) / k; counted over n seeded draws, each rate within 5 binomial
    # standard deviations (a false failure has probability < 1e-6 per rate)
    k, n, label = 7, 20000, 3
    rng = np.random.default_rng(0)
    counts = np.bincount([draw_prop(label, cooccur, k, rng) + 1 for _ in range(n)], minlength=k + 1)
    expected = np.full(k + 1, (1 - cooccur) / k)  # index 0: no prop; index j + 1: prop j
    expected[label + 1] = cooccur
    for observed, p in zip(counts / n, expected):
        assert abs(observed - p) <= 5 * math.sqrt(max(p * (1 - p), 1e-12) / n) + 1e-12


def test_captions_name_the_activity_and_the_prop_in_view():
    assert caption("fry egg", NO_PROP) == "a video of a person fry egg."
    assert caption("fry egg", list(PROPS).index("apron")) == "a video of a person fry egg, with an apron."
    pairs = caption_pairs(seed=3, clips=14, cooccur=0.5, frames=2, scene=SCENE)
    classes = list(activities(1))
    assert pairs.frames.shape == (28, 64, 64, 3) and pairs.frames.dtype == np.uint8
    for text, label, prop in zip(pairs.captions, pairs.labels, pairs.props):
        assert text == caption(classes[label], int(prop))
    again = caption_pairs(seed=3, clips=14, cooccur=0.5, frames=2, scene=SCENE)
    assert np.array_equal(pairs.frames, again.frames) and pairs.captions == again.captions


def test_a_hidden_prop_leaves_no_trace_and_a_shown_prop_is_a_small_object():
    shown, _, _ = render_pair(5, 2, 0.0, SCENE, prop=4, frames=3)
    hidden, _, _ = render_pair(5, 2, 0.0, SCENE, prop=4, hide=frozenset({"prop"}), frames=3)
    other_hidden, _, _ = render_pair(5, 2, 0.0, SCENE, prop=6, hide=frozenset({"prop"}), frames=3)
    assert np.array_equal(hidden, other_hidden)  # which prop was hidden cannot be read off the frames
    changed = np.abs(shown.astype(int) - hidden.astype(int)).max(-1) > 20
    assert 0.003 < changed.mean() < 0.05  # a 6.5-unit object in a 64 x 64 frame: ~1-3 % of the pixels


def test_hiding_the_actor_removes_hand_and_tool_and_keeps_the_prop():
    label = list(activities(1)).index("fry egg")  # a still-pair class: hand and tool
    _, style, distractor, _, rng = _plan(0, "train", label, 0.9, 1)
    state = rng.bit_generator.state
    full = _render(label, style, distractor, 8, 64, rng, SCENE, noise=False, prop=2).astype(int)
    rng.bit_generator.state = state
    bare = _render(label, style, distractor, 8, 64, rng, SCENE, noise=False, prop=2,
                   hide=frozenset({"actor"})).astype(int)
    rng.bit_generator.state = state
    room = _render(label, style, distractor, 8, 64, rng, SCENE, noise=False, prop=2,
                   hide=frozenset({"actor", "prop"})).astype(int)
    actor = np.abs(full - bare).max(-1) > 0
    prop = np.abs(bare - room).max(-1) > 0
    assert actor.any() and prop.any()
    # where neither the actor nor the prop is drawn, all three renders agree (the draws did not shift)
    assert np.array_equal(full[~actor & ~prop], room[~actor & ~prop])


def test_sets_with_props_draw_a_third_confounder_and_break_it_out_of_distribution():
    rows = confounder_table(seed=0, n_train=700, n_test=700, confound=0.9, still_pairs=1, props=True)
    train = [r for r in rows if r["split"] == "train"]
    ood = [r for r in rows if r["split"] == "test_ood"]
    own = np.mean([r["prop"] == r["label"] for r in train])
    # P(own) = 0.9 + 0.1 / 7 = 0.914 in train (n = 700, sd 0.011); 1/7 = 0.143 out of distribution (n = 350, sd 0.019)
    assert abs(own - (0.9 + 0.1 / 7)) < 5 * 0.011
    assert abs(np.mean([r["prop"] == r["label"] for r in ood]) - 1 / 7) < 5 * 0.019
    plain = confounder_table(seed=0, n_train=700, n_test=700, confound=0.9, still_pairs=1)
    assert [{k: v for k, v in r.items() if k != "prop"} for r in rows] == plain
