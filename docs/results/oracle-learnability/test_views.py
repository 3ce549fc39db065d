"""ID / OOD accuracy of trained checkpoints scored with 1, 3 and 5 temporal views per test video (TSN segment
offsets spread inside each segment, class probabilities averaged; ``data.test_views``), the rest unchanged.

    python docs/results/oracle-learnability/test_views.py 1,3,5 runs/oracle3/baseline-seed*/checkpoint.pt

Each checkpoint is copied to a scratch folder with ``data.test_views`` set, then ``pcmci.engine.evaluate`` scores it.
"""
import sys
import tempfile
from pathlib import Path

import torch

from pcmci.engine.evaluate import evaluate

views = [int(v) for v in sys.argv[1].split(",")]
with tempfile.TemporaryDirectory() as scratch:
    for checkpoint in sys.argv[2:]:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        row = []
        for v in views:
            state["config"]["data"]["test_views"] = v
            copy = Path(scratch) / f"views{v}" / "checkpoint.pt"
            copy.parent.mkdir(exist_ok=True)
            torch.save(state, copy)
            result = evaluate(copy, ["test_id", "test_ood"], copy.parent / "eval", progress=False)
            row.append(f"views {v}: ID {result['test_id']['acc']:.3f} OOD {result['test_ood']['acc']:.3f}")
        print(checkpoint, " | ".join(row), flush=True)
