"""Gradient accumulation: k batches of b clips make the same optimiser step as one batch of k x b."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from conftest import tiny_run_overrides
from engine_runs import step_losses

from pcmci.config import load_config
from pcmci.engine.checkpoint import load_checkpoint
from pcmci.engine.train import _micro_batch_sizes, train


def test_two_accumulated_batches_of_3_equal_one_batch_of_6(synthetic_set: Path, tiny_run: Path,
                                                           tmp_path: Path) -> None:
    train(load_config("tiny", tiny_run_overrides(synthetic_set, tmp_path, "optim.batch_size=3", "optim.accum_steps=2",
                                                 "optim.epochs=1")))
    assert load_checkpoint(tmp_path / "checkpoint.pt")["scheduler"]["last_epoch"] == 4
    # warm-up is the first epoch, so these 4 steps see the learning rates of the 2-epoch batch-6 run; each loss
    # after the first is computed with the weights the accumulated steps before it produced
    np.testing.assert_allclose(step_losses(tmp_path), step_losses(tiny_run)[:4], rtol=0, atol=1e-5)


def test_micro_batches_cover_each_rank_shard() -> None:
    assert _micro_batch_sizes(24, 6, 1) == [6, 6, 6, 6]
    assert _micro_batch_sizes(25, 3, 2) == [3, 3, 3, 3, 1]  # 13 items per rank (one padded)
