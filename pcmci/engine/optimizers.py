"""Adam and AdamW for every trainer (the model, the backdoor's references, the VLM pretraining), on torch's fused
kernel where every parameter lives on a device that has one.

The fused kernel updates all tensors in one pass where torch's default on CPU loops over them tensor by tensor: on
the ``tiny`` model (71 tensors, 2-core CPU) an AdamW step takes 0.63 ms instead of 3.2 ms and a whole training step
(batch 8) 26.0 ms instead of 29.8 ms (1.15x; 1.08-1.15x over four runs, one noisy run 1.41x), measured side by
side by ``bench/bench_optimizer.py`` (``bench/results/cpu-2026-12-08-optimizer.json``). It computes the same update
as the default path up to float rounding, so a run does not reproduce an unfused run's numbers bit for bit.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch

FUSED_DEVICES = ("cpu", "cuda")  # where torch (>= 2.4) has fused Adam kernels


def fusable(params: list[torch.Tensor]) -> bool:
    """Whether torch's fused Adam kernel takes ``params``: floating point, all on one device of a fused kind."""
    devices = {p.device for p in params}
    return (len(devices) == 1 and next(iter(devices)).type in FUSED_DEVICES
            and all(p.is_floating_point() for p in params))


def adam(params: Iterable[torch.Tensor], lr: float, weight_decay: float,
         kind: Literal["adamw", "adam"] = "adamw") -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay) or Adam (L2 in the gradient) over ``params``, fused where :func:`fusable`."""
    params = list(params)
    if not params:
        raise ValueError("the optimiser has no parameters to train (every parameter is frozen)")
    cls = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
    return cls(params, lr=lr, weight_decay=weight_decay, **({"fused": True} if fusable(params) else {}))
