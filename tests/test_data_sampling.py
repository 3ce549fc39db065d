import pytest
import torch

from pcmci.data.sampling import segment_indices


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


def test_too_short_video_raises():
    with pytest.raises(ValueError, match="has 3 frames, fewer than the 8 requested"):
        segment_indices(3, 8, train=False)
