import pytest
import torch

from pcmci.data.sampling import crop_offsets, segment_indices, view_indices


def test_eval_picks_segment_centres():
    assert segment_indices(32, 8, train=False) == [2, 6, 10, 14, 18, 22, 26, 30]
    assert segment_indices(10, 4, train=False) == [1, 3, 6, 8]
    assert segment_indices(5, 5, train=False) == [0, 1, 2, 3, 4]


def test_train_offsets_stay_in_their_segment_and_follow_the_generator():
    num_frames, frames = 100, 8
    bounds = [num_frames * i // frames for i in range(frames + 1)]
    seen = set()
    for seed in range(50):
        idx = segment_indices(num_frames, frames, True, torch.Generator().manual_seed(seed))
        assert all(lo <= i < hi for i, lo, hi in zip(idx, bounds[:-1], bounds[1:]))
        assert idx == segment_indices(num_frames, frames, True, torch.Generator().manual_seed(seed))
        seen.add(tuple(idx))
    assert len(seen) > 40


def test_short_video_padding_rule_repeats_frames_in_order():
    assert segment_indices(5, 8, train=False, pad=True) == [0, 0, 1, 2, 2, 3, 4, 4]
    generator = torch.Generator().manual_seed(0)
    assert segment_indices(5, 8, train=True, generator=generator, pad=True) == [0, 0, 1, 2, 2, 3, 4, 4]
    assert segment_indices(1, 4, train=False, pad=True) == [0, 0, 0, 0]
    assert view_indices(5, 8, 3, pad=True) == [[0, 0, 1, 2, 2, 3, 4, 4]] * 3


def test_short_or_empty_video_raises_without_padding():
    with pytest.raises(ValueError, match="has 3 frames, fewer than the 8 requested"):
        segment_indices(3, 8, train=False)
    with pytest.raises(ValueError, match="has 0 frames"):
        segment_indices(0, 8, train=False, pad=True)


def test_view_clips_spread_inside_segments():
    assert view_indices(32, 8, 1) == [segment_indices(32, 8, train=False)]
    assert view_indices(32, 4, 2) == [[2, 10, 18, 26], [6, 14, 22, 30]]
    clips = view_indices(100, 8, 3)
    bounds = [100 * i // 8 for i in range(9)]
    for j in range(8):
        column = [clip[j] for clip in clips]
        assert bounds[j] <= column[0] < column[1] < column[2] < bounds[j + 1]


def test_crop_offsets():
    assert crop_offsets(80, 20, 1) == [30]
    assert crop_offsets(80, 20, 3) == [0, 30, 60]
    assert crop_offsets(20, 20, 3) == [0, 0, 0]
