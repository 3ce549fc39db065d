"""Adam and AdamW for every trainer (the model, the backdoor's references, the VLM pretraining), on torch's fused
kernel where every parameter lives on a device that has one.

The fused kernel updates all tensors in one pass instead of a loop of per-tensor ops: on the ``tiny`` model (71
tensors) an AdamW step on a 2-core CPU takes about 0.8 ms instead of 5 ms, about a tenth of a training step
(``bench/bench_optimizer.py``). It computes the same update (to float rounding) as the default for-each path.
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
