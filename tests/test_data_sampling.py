import pytest
import torch

from torch.utils.data import DistributedSampler

from pcmci.data.sampling import crop_offsets, epoch_order, segment_indices, train_crop_window, view_indices


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


@pytest.mark.parametrize("height,width,min_scale", [(64, 64, 0.5), (48, 80, 0.25), (90, 30, 0.9), (5, 7, 0.01)])
def test_train_crop_windows_fit_the_frame_and_cover_the_scale_range(height, width, min_scale):
    short = min(height, width)
    areas = []
    for seed in range(300):
        top, left, side = train_crop_window(height, width, min_scale, torch.Generator().manual_seed(seed))
        assert (top, left, side) == train_crop_window(height, width, min_scale, torch.Generator().manual_seed(seed))
        assert 0 <= top <= height - side and 0 <= left <= width - side and 1 <= side <= short
        areas.append(side**2 / short**2)
    # side is rounded to whole pixels: the area fraction may leave [min_scale, 1] by at most (2 side + 1) / short^2
    slack = (2 * short + 1) / short**2
    assert min(areas) >= min_scale - slack and max(areas) <= 1
    if short >= 30:  # a uniform area draw reaches both ends of the range in 300 draws
        assert min(areas) < min_scale + 0.1 * (1 - min_scale) + slack and max(areas) > 1 - 0.1 * (1 - min_scale) - slack
    assert train_crop_window(height, width, 1.0, torch.Generator().manual_seed(0))[2] == short


def test_train_crop_scale_out_of_range_raises():
    with pytest.raises(ValueError, match="min_scale must be in"):
        train_crop_window(64, 64, 0.0, torch.Generator())


@pytest.mark.parametrize("n,world", [(10, 1), (10, 3), (7, 4), (3, 8), (16, 2)])
@pytest.mark.parametrize("shuffle", [True, False])
def test_epoch_order_shards_as_torch_distributed_sampler(n, world, shuffle):
    """The reference is torch's own ``DistributedSampler`` (seeded ``seed * 100003``), as the loader used before."""
    for epoch in (0, 3):
        for rank in range(world):
            sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=shuffle, seed=5 * 100003)
            sampler.set_epoch(epoch)
            assert epoch_order(n, 5, epoch, shuffle, rank, world) == list(sampler)


def test_weighted_epoch_order_draws_in_proportion_to_the_weights():
    """Counts over 400 epochs of 50 draws against the expected ``weights_i / sum(weights) * 20000``: a binomial count
    with p <= 0.4 has a standard deviation under sqrt(20000 * 0.24) = 69; 5 standard deviations is 350."""
    weights = torch.tensor([0.0, 1.0, 2.0, 7.0, 10.0] * 10)
    counts = torch.zeros(50)
    for epoch in range(400):
        order = epoch_order(50, 1, epoch, True, weights=weights)
        assert len(order) == 50 and order == epoch_order(50, 1, epoch, True, weights=weights)
        counts += torch.bincount(torch.tensor(order), minlength=50)
    expected = weights / weights.sum() * 20000
    assert counts[weights == 0].sum() == 0
    assert float((counts - expected).abs().max()) < 350
    shards = [epoch_order(50, 1, 0, True, rank, 3, weights) for rank in range(3)]
    assert sorted(sum(shards, [])) == sorted((epoch_order(50, 1, 0, True, weights=weights) * 2)[:51])
    with pytest.raises(ValueError, match="non-negative"):
        epoch_order(3, 0, 0, True, weights=torch.tensor([1.0, -1.0, 1.0]))
