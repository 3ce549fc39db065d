"""Gradient accumulation: k batches of b clips make the same optimiser step as one batch of k x b."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from conftest import tiny_run_overrides
from engine_runs import one_thread, step_losses

from pcmci.config import load_config
from pcmci.engine.checkpoint import load_checkpoint
from pcmci.engine.train import _micro_batch_sizes, train

def _grad_norms(run: Path) -> list[float]:
    records = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    return [r["grad_norm"] for r in records if "step" in r]


def test_two_accumulated_batches_of_3_equal_one_batch_of_6(synthetic_set: Path, tiny_run: Path,
                                                           tmp_path: Path) -> None:
    with one_thread():  # as tiny_run (batch 6, no accumulation) was trained
        train(load_config("tiny", tiny_run_overrides(synthetic_set, tmp_path, "optim.batch_size=3",
                                                     "optim.accum_steps=2")))
    accumulated, single = load_checkpoint(tmp_path / "checkpoint.pt"), load_checkpoint(tiny_run / "checkpoint.pt")
    assert accumulated["scheduler"]["last_epoch"] == single["scheduler"]["last_epoch"] == 8
    # each loss after the first is computed with the weights the accumulated steps before it produced
    np.testing.assert_allclose(step_losses(tmp_path), step_losses(tiny_run), rtol=0, atol=1e-5)
    # the gradient itself, before clipping: Adam and the clip to norm 1 would hide a wrongly scaled one (a
    # micro-batch's loss not divided by its share) from the weights. Both runs add the same per-clip gradients in
    # another order (two halved means of 3 vs one mean of 6): a few float32 roundings (2^-24 = 6e-8 each) apart.
    np.testing.assert_allclose(_grad_norms(tmp_path), _grad_norms(tiny_run), rtol=1e-5)
    # The weights after the 8 steps. Adam divides each gradient element by its own running RMS, so the rounding
    # difference above is relative to that element's gradient, not to the largest one: an element whose gradient
    # is within rounding error of 0 may take a step of another size, at most about lr per step, and the weights it
    # changes change the later losses. Such elements are rare and their steps small (measured: 6e-6 at most). A
    # tenth of one step, lr / 10, bounds that; a real accumulation fault (a micro-batch's gradient dropped, or
    # stepped on its own) moves most weights by about lr at every step.
    lr = single["config"]["optim"]["lr"]
    for name, weight in single["model"].items():
        np.testing.assert_allclose(accumulated["model"][name].numpy(), weight.numpy(), rtol=0, atol=lr / 10,
                                   err_msg=name)


def test_micro_batches_cover_each_rank_shard() -> None:
    assert _micro_batch_sizes(24, 6, 1) == [6, 6, 6, 6]
    assert _micro_batch_sizes(25, 3, 2) == [3, 3, 3, 3, 1]  # 13 items per rank (one padded)
