import csv
import hashlib
import json
import math
from collections import Counter

import av
import numpy as np
import pytest

from pcmci.data.datasets import LabelSet, read_manifest
from pcmci.data.decode import decode_frames, probe
from pcmci.data.synthetic import ACTIVITIES, render_counterfactual, synthesize


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("synth") / "a", seed=3, n_train=12, n_test=9, progress=False)


def test_files_splits_and_labels(small):
    root = small.parent
    rows = read_manifest(small, LabelSet.load(root / "labels.json"))
    assert Counter(r.split for r in rows) == {"train": 12, "test_id": 4, "test_ood": 5}
    assert all(r.path.is_file() and r.path.suffix == ".webm" for r in rows)
    labels = json.loads((root / "labels.json").read_text())
    assert labels["classes"] == list(ACTIVITIES) and len(labels["classes"]) == 6
    used = {action for steps in ACTIVITIES.values() for action in steps}
    assert len(labels["actions"]) >= 8 and set(labels["actions"]) == used
    assert all(3 <= len(r.steps) <= 4 and r.steps == ACTIVITIES[r.label] for r in rows)
    train_labels = Counter(r.label for r in rows if r.split == "train")
    assert set(train_labels.values()) == {2}  # balanced
    meta = json.loads((root / "meta.json").read_text())
    assert meta["seed"] == 3 and meta["codec"] == "vp9" and len(meta["videos"]) == 21
    assert {"background", "distractor", "label", "path"} <= set(meta["videos"][0])


def test_pairs_differing_only_in_order_exist():
    pairs = [
        (a, b) for a in ACTIVITIES for b in ACTIVITIES
        if a < b and sorted(ACTIVITIES[a]) == sorted(ACTIVITIES[b])
    ]
    assert len(pairs) >= 2
    assert all(ACTIVITIES[a] != ACTIVITIES[b] for a, b in pairs)


def test_deterministic_from_seed(small, tmp_path):
    """The same seed writes the same set, also when two spawned processes render and encode it."""
    again = synthesize(tmp_path / "b", seed=3, n_train=12, n_test=9, progress=False, jobs=2)
    assert again.read_bytes() == small.read_bytes()
    meta_a = json.loads((small.parent / "meta.json").read_text())
    meta_b = json.loads((again.parent / "meta.json").read_text())
    assert meta_a == meta_b
    for video in meta_a["videos"][:3] + meta_a["videos"][-2:]:
        n = video["num_frames"]
        a, _ = decode_frames(small.parent / video["path"], list(range(n)))
        b, _ = decode_frames(again.parent / video["path"], list(range(n)))
        np.testing.assert_array_equal(a, b)
    other = synthesize(tmp_path / "c", seed=4, n_train=12, n_test=9, progress=False)
    meta_c = json.loads((other.parent / "meta.json").read_text())
    assert meta_c["videos"] != meta_a["videos"] and meta_c["rendered_sha256"] != meta_a["rendered_sha256"]


def test_meta_records_the_rendered_pixels_and_the_libraries(small):
    """Each video's digest is that of its frames re-rendered from meta.json alone (the counterfactual renderer with
    the video's own ids, hashed here with hashlib); the set's digest is over the videos' in order."""
    meta = json.loads((small.parent / "meta.json").read_text())
    for video in meta["videos"]:
        frames = render_counterfactual(meta, video, video["background"], video["distractor"])
        assert frames.dtype == np.uint8 and frames.shape[0] == video["num_frames"]
        assert video["rendered_sha256"] == hashlib.sha256(repr(frames.shape).encode() + frames.tobytes()).hexdigest()
    joined = "".join(v["rendered_sha256"] for v in meta["videos"]).encode()
    assert meta["rendered_sha256"] == hashlib.sha256(joined).hexdigest()
    assert meta["versions"]["numpy"] == np.__version__ and meta["versions"]["av"] == av.__version__


@pytest.mark.parametrize("confound", [0.8, 0.0])
def test_confound_strength_in_train_and_chance_in_ood(tmp_path, confound):
    """P(own confounder) = confound + (1 - confound) / 6 in train and test_id (confound 0: independent, 1/6),
    1/6 in test_ood."""
    manifest = synthesize(
        tmp_path / "d", n_train=600, n_test=1200, confound=confound, codec="mjpeg", size=16,
        frames_per_action=1, progress=False,
    )
    videos = json.loads((manifest.parent / "meta.json").read_text())["videos"]
    own = confound + (1 - confound) / 6
    for split, expected in [("train", own), ("test_id", own), ("test_ood", 1 / 6)]:
        chosen = [v for v in videos if v["split"] == split]
        for key in ("background", "distractor"):
            rate = np.mean([v[key] == v["label"] for v in chosen])
            assert abs(rate - expected) < 0.06, (split, key, rate)
    ood = [v for v in videos if v["split"] == "test_ood"]
    assert len(Counter(v["background"] for v in ood)) == 6


@pytest.mark.parametrize("codec,suffix", [("vp9", ".webm"), ("h264", ".mp4"), ("mjpeg", ".avi")])
def test_all_codecs_decode(tmp_path, codec, suffix):
    manifest = synthesize(tmp_path, n_train=2, n_test=2, codec=codec, progress=False)
    with manifest.open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "label", "split", "steps"]
    for row in rows:
        path = tmp_path / row["path"]
        assert path.suffix == suffix
        info = probe(path)
        assert info.codec == codec and (info.width, info.height) == (64, 64) and info.num_frames >= 24
        frames, _ = decode_frames(path, list(range(info.num_frames)))
        assert frames.shape == (info.num_frames, 64, 64, 3) and frames.std() > 10


@pytest.mark.parametrize("still_pairs", [0, 1])
def test_confounder_only_probe_is_a_shortcut_in_distribution_and_chance_out_of_it(still_pairs: int):
    """A linear probe on the confounders alone (one-hot background + distractor) at the default confound 0.9 and
    the demo's sizes: >= 0.85 in distribution, <= chance + 0.10 out of it (the demo scene adds a still-object
    class; camera, light and the distractor's motion do not change which confounder a clip has)."""
    from sklearn.linear_model import LogisticRegression

    from pcmci.data.synthetic import activities, confounder_table

    rows = confounder_table(seed=0, n_train=720, n_test=240, confound=0.9, still_pairs=still_pairs)
    kinds = len(activities(still_pairs))

    def xy(split: str) -> tuple[np.ndarray, np.ndarray]:
        part = [r for r in rows if r["split"] == split]
        x = np.zeros((len(part), 2 * kinds))
        x[np.arange(len(part)), [r["background"] for r in part]] = 1
        x[np.arange(len(part)), [kinds + r["distractor"] for r in part]] = 1
        return x, np.array([r["label"] for r in part])

    probe_model = LogisticRegression(max_iter=1000).fit(*xy("train"))
    acc = {split: probe_model.score(*xy(split)) for split in ("test_id", "test_ood")}
    assert acc["test_id"] >= 0.85, acc
    assert acc["test_ood"] <= 1 / kinds + 0.10, acc


def test_counterfactual_render_reproduces_the_video_and_swaps_only_the_confounders(small):
    from pcmci.data.synthetic import render_counterfactual

    meta = json.loads((small.parent / "meta.json").read_text())
    video = next(v for v in meta["videos"] if v["split"] == "test_ood")
    own = render_counterfactual(meta, video, video["background"], video["distractor"])
    decoded, _ = decode_frames(small.parent / video["path"], list(range(video["num_frames"])))
    assert own.shape == decoded.shape
    assert np.abs(own.astype(float) - decoded).mean() < 4.0  # only the VP9 round trip differs
    other = render_counterfactual(meta, video, (video["background"] + 1) % 6, (video["distractor"] + 1) % 6)
    changed = np.abs(own.astype(float) - other).max(-1) > 30
    assert 0.3 < changed.mean() < 1.0  # the background and distractor changed, the hand's pixels did not
    hand = np.abs(own.astype(float) - np.array([225.0, 170.0, 130.0])).max(-1) < 30
    assert changed[hand].mean() < 0.05


def test_still_cause_is_identical_in_every_frame_while_the_camera_moves_the_room() -> None:
    """Demo scene: the tool of a still-object class has the same pixels in every frame (noise off) while the room
    behind it scrolls, shakes and flickers, and its twin class shares the exact action sequence."""
    from pcmci.data.synthetic import DEMO_SCENE, STILL_PAIRS, TOOLS, _plan, _render, activities, tools

    table = DEMO_SCENE.classes()
    own, twin, tool, _ = STILL_PAIRS[0]
    assert table == activities(1, order_pairs=False)
    assert table[own] == table[twin] and tools(1) == {own: tool, twin: STILL_PAIRS[0][3]}
    label = list(table).index(own)
    _, style, distractor, _, rng = _plan(0, "train", label, 0.9, DEMO_SCENE.still_pairs,
                                         order_pairs=DEMO_SCENE.order_pairs)
    frames = _render(label, style, distractor, 8, 64, rng, DEMO_SCENE, noise=False).astype(float)
    colour = np.array(TOOLS[tool], dtype=float)
    tool_px = (np.abs(frames - colour).max(-1) < 1).all(0)  # the tool's colour in every frame, at the same pixels
    assert tool_px.sum() >= 40, tool_px.sum()
    assert np.ptp(frames[:, tool_px], axis=0).max() == 0  # identical in every frame
    still = np.ptp(frames, axis=0).max(-1) == 0
    assert still.mean() < 0.2, still.mean()  # the camera and light move nearly everything else
    assert (still & tool_px).sum() == tool_px.sum()


def test_scene_knobs_are_checked_and_recorded(tmp_path) -> None:
    from pcmci.data.synthetic import Scene, scene_of

    with pytest.raises(ValueError, match="camera must be in"):
        Scene(camera=1.5)
    with pytest.raises(ValueError, match="still_pairs must be in"):
        Scene(still_pairs=5)
    scene = Scene(camera=0.5, lighting=0.25, distractor_motion=1.0, still_pairs=1)
    manifest = synthesize(tmp_path, n_train=7, n_test=2, codec="mjpeg", size=32, frames_per_action=2, progress=False,
                          scene=scene)
    meta = json.loads((manifest.parent / "meta.json").read_text())
    assert scene_of(meta) == scene and len(meta["activities"]) == 7 and meta["generator"] == 3
    labels = json.loads((manifest.parent / "labels.json").read_text())
    assert labels["classes"][-1] == "boil egg"


@pytest.mark.parametrize("confound, props, joint", [(0.9, False, False), (0.5, True, False), (0.0, False, False),
                                                   (0.9, True, True)])
def test_support_matches_the_generators_law(confound: float, props: bool, joint: bool) -> None:
    """``support`` against the generator's law, not its code: each confounder kind is the activity's own with
    probability ``own = confound + (1 - confound) / k`` in train and test_id and ``1 / k`` in test_ood, independently,
    so the share of videos with none of ``m`` kinds their own is ``(1 - own)^m`` — and ``1 - own`` with one joint
    context (``m = 1``). Over n videos the share is binomial with std ``sqrt(p (1 - p) / n)``; 4 std bound it (a
    false failure about once in 16,000 seeds)."""
    from pcmci.data.synthetic import activities, confounder_table, support

    n = 8000
    rows = confounder_table(seed=3, n_train=n, n_test=2 * n, confound=confound, still_pairs=1, props=props,
                            joint=joint)
    k, kinds = len(activities(1)), 1 if joint else 3 if props else 2
    own = confound + (1 - confound) / k
    shares = support(rows)
    for split, own_p in (("train", own), ("test_id", own), ("test_ood", 1 / k)):
        p = (1 - own_p) ** kinds
        assert abs(shares[split] - p) <= 4 * math.sqrt(p * (1 - p) / n), (split, shares[split], p)


def test_support_counts_videos_with_no_confounder_of_their_class() -> None:
    from pcmci.data.synthetic import support

    rows = [{"split": "train", "label": 0, "background": 1, "distractor": 2},
            {"split": "train", "label": 0, "background": 0, "distractor": 2},
            {"split": "train", "label": 1, "background": 0, "distractor": 1},
            {"split": "test_ood", "label": 2, "background": 0, "distractor": 1}]
    assert support(rows) == {"train": 1 / 3, "test_ood": 1.0}


def test_joint_context_shares_one_draw_and_keeps_the_videos_motion(tmp_path) -> None:
    """``context="joint"``: every confounder of a video has the background's id, in every split, and the video is
    the independent set's video with only its distractor swapped (same motion, camera, light: the same draws).
    Checked on the rendered frames: re-rendering the independent video with the joint set's ids gives the joint
    video exactly (noise included, before encoding)."""
    from dataclasses import replace

    from pcmci.data.synthetic import DEMO_SCENE, Scene, confounder_table, render_counterfactual

    joint = replace(DEMO_SCENE, props=True, context="joint")
    manifest = synthesize(tmp_path / "joint", n_train=14, n_test=14, codec="mjpeg", size=32, frames_per_action=2,
                          progress=False, scene=joint)
    meta = json.loads((manifest.parent / "meta.json").read_text())
    assert meta["scene"]["context"] == "joint"
    assert all(v["distractor"] == v["background"] == v["prop"] for v in meta["videos"])
    independent = {**meta, "scene": {**meta["scene"], "context": "independent"}}
    rows = confounder_table(0, 14, 14, 0.9, joint.still_pairs, props=True, order_pairs=joint.order_pairs)
    assert [r["background"] for r in rows] == [v["background"] for v in meta["videos"]]
    for video in meta["videos"][:4]:
        ids = (video["background"], video["distractor"], video["prop"])
        assert np.array_equal(render_counterfactual(independent, video, *ids), render_counterfactual(meta, video, *ids))
    with pytest.raises(ValueError, match="context must be"):
        Scene(context="shared")


def test_without_order_pairs_every_class_differs_by_its_actions_or_its_tool() -> None:
    """``order_pairs=False`` drops exactly the second class of each order-only pair; in what is left two classes
    with the same actions in any order are a still-object pair, told apart by their tools."""
    from pcmci.data.synthetic import ORDER_TWINS, activities, tools

    for still_pairs in (0, 1, 2):
        kept, full = activities(still_pairs, order_pairs=False), activities(still_pairs)
        assert list(kept) == [name for name in full if name not in ORDER_TWINS]
        tool = tools(still_pairs)
        for a in kept:
            for b in kept:
                if a < b and sorted(kept[a]) == sorted(kept[b]):
                    assert kept[a] == kept[b] and tool[a] != tool[b], (a, b)


def test_a_set_without_order_pairs_labels_renders_and_rerenders_consistently(tmp_path) -> None:
    """The knob reaches the labels, meta.json and the counterfactual re-render (which must find the same classes
    to reproduce a video from its recorded draws)."""
    from pcmci.data.synthetic import Scene, render_counterfactual, scene_of

    scene = Scene(camera=0.3, still_pairs=1, order_pairs=False)
    manifest = synthesize(tmp_path, n_train=10, n_test=4, frames_per_action=2, progress=False, scene=scene)
    labels = json.loads((manifest.parent / "labels.json").read_text())
    assert labels["classes"] == ["make cereal", "fry egg", "make juice", "make sandwich", "boil egg"]
    meta = json.loads((manifest.parent / "meta.json").read_text())
    assert scene_of(meta) == scene and list(meta["activities"]) == labels["classes"]
    assert {v["label"] for v in meta["videos"] if v["split"] == "train"} == set(range(5))
    seven = {**meta, "scene": {**meta["scene"], "order_pairs": True}}  # the class list without the knob
    mismatched = []
    for video in meta["videos"][:5]:  # labels 0..4
        decoded, _ = decode_frames(manifest.parent / video["path"], list(range(video["num_frames"])))
        own = render_counterfactual(meta, video, video["background"], video["distractor"])
        assert own.shape == decoded.shape
        assert np.abs(own.astype(float) - decoded).mean() < 4.0  # only the VP9 round trip differs (as above)
        wrong = render_counterfactual(seven, video, video["background"], video["distractor"])
        mismatched.append(wrong.shape != decoded.shape or np.abs(wrong.astype(float) - decoded).mean() > 4.0)
    assert not mismatched[0] and all(mismatched[1:])  # "make cereal" is class 0 either way; the rest differ


def test_an_existing_set_is_kept_unless_overwritten_and_bad_sizes_stop_before_writing(tmp_path) -> None:
    """A second synth into the same folder would replace the manifest and leave the first set's extra videos
    beside it; it is refused, and ``overwrite`` removes exactly the earlier set's listed videos (a user's own file
    in videos/ stays). Sizes and counts out of range fail before anything is written."""
    out = tmp_path / "set"
    first = synthesize(out, n_train=4, n_test=2, codec="mjpeg", size=16, frames_per_action=1, progress=False)
    mine = out / "videos" / "mine.txt"
    mine.write_text("keep")
    manifest = first.read_bytes()
    with pytest.raises(FileExistsError, match="manifest.csv exists; .* --overwrite"):
        synthesize(out, n_train=2, n_test=2, codec="mjpeg", size=16, frames_per_action=1, progress=False)
    assert first.read_bytes() == manifest
    synthesize(out, n_train=2, n_test=2, codec="mjpeg", size=16, frames_per_action=1, progress=False, overwrite=True)
    listed = {row.split(",")[0] for row in first.read_text().splitlines()[1:]}
    on_disk = {f"videos/{p.name}" for p in (out / "videos").iterdir()}
    assert on_disk == listed | {"videos/mine.txt"} and len(listed) == 4
    for kwargs, cause in (({"size": 10_000}, "size must be an even number in"), ({"n_train": -3}, "must be >= 0")):
        with pytest.raises(ValueError, match=cause):
            synthesize(tmp_path / "never", progress=False, **kwargs)
    assert not (tmp_path / "never").exists()
