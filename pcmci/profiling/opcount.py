"""A second, independent count of the project's fused ops (``pcmci::log_sinkhorn``, ``pcmci::relation``).

The fvcore handles and the ``FlopCounterMode`` formulas of these ops both come from the op's own closed form,
so their agreement proves nothing about that form. Here every call of the ops in a forward is recorded and its
reference math (the spec, unrolled in PyTorch) re-executed and counted op by op:

- Sinkhorn: one multiply-add equivalent per ``exp`` evaluated (each half-iteration exponentiates every cost
  entry once inside its log-sum-exp, the plan once more): the ``aten.exp`` elements of the unrolled reference.
- relation: ``FlopCounterMode`` (halved to multiply-adds) over the reference's ``q k^T`` and ``P v`` products,
  plus the prior-weighted sum over the K bases (one multiply-add per base and output element), which the
  reference folds into its ``P v`` einsum and the fused kernel does separately.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from ..kernels import relation, sinkhorn

_OPS = ("log_sinkhorn", "relation")


class _ExpCounter(TorchDispatchMode):
    """Counts the elements of every ``aten.exp`` result."""

    def __init__(self) -> None:
        super().__init__()
        self.exps = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket is torch.ops.aten.exp:
            self.exps += out.numel()
        return out


class OpRecorder(TorchDispatchMode):
    """Records the arguments of every ``pcmci::log_sinkhorn`` / ``pcmci::relation`` call it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func.namespace == "pcmci" and func.overloadpacket.__name__ in _OPS:
            self.calls.append((func.overloadpacket.__name__,
                               tuple(a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args)))
        return func(*args, **(kwargs or {}))

    def counts(self) -> dict[str, int]:
        """Multiply-adds per op name, summed over the recorded calls, counted on the unrolled reference."""
        totals: Counter = Counter({op: 0 for op, _ in self.calls})
        for op, args in self.calls:
            totals[op] += sinkhorn_macs(*args) if op == "log_sinkhorn" else relation_macs(*args)
        return dict(totals)


@torch.no_grad()
def sinkhorn_macs(cost: torch.Tensor, log_a: torch.Tensor, log_b: torch.Tensor, eps: float, iters: int,
                  mask: torch.Tensor | None) -> int:
    """``exp`` evaluations of the reference Sinkhorn forward on these arguments."""
    counter = _ExpCounter()
    with counter:
        sinkhorn.reference_forward(cost, log_a, log_b, eps, iters, mask)
    return counter.exps


@torch.no_grad()
def relation_macs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prior: torch.Tensor,
                  mask: torch.Tensor | None) -> int:
    """Matrix-product multiply-adds of the reference relation forward, plus its prior-weighted sum."""
    counter = FlopCounterMode(display=False)
    with counter:
        relation.reference_forward(q, k, v, prior, mask)
    B, K, N, _ = q.shape
    return counter.get_total_flops() // 2 + B * K * N * v.shape[-1]
