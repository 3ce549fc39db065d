"""FLOP counting on the real forward: fvcore with handles for every matrix product and attention path, the
list of ops fvcore still skips (with an estimate of their share), and the ``torch.utils.flop_counter`` cross-check.

Convention: one multiply-add = one FLOP (fvcore's and TimeSformer's); ``FlopCounterMode`` counts two and is halved.
"""
from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import Handle, get_shape
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from ..kernels import FVCORE_HANDLES

# fvcore operator keys that torch.utils.flop_counter does not count (normalisations, resampling, pooling)
NOT_IN_TORCH_COUNTER = ("batch_norm", "group_norm", "layer_norm", "instance_norm", "upsample_nearest2d",
                        "upsample_bilinear2d", "adaptive_avg_pool2d", "grid_sampler")
# matrix products, convolutions, attention, the project's ops, and opaque Python autograd functions
_MATMUL_LIKE = re.compile(r"^pcmci::|^prim::PythonOp|::(\w*mm\w*|matmul|linear|bilinear|\w*conv\w*|einsum"
                          r"|\w*attention\w*|tensordot|dot|vdot|mv|addmv)$")


def _shape(value: Any) -> list[int]:
    shape = get_shape(value)
    if shape is None:
        raise ValueError(f"fvcore handle needs a tensor of known shape, got {value}")
    return list(shape)


def sdpa_handle(inputs: list[Any], outputs: list[Any]) -> int:
    """``aten::scaled_dot_product_attention(q[...,Lq,E], k[...,Lk,E], v[...,Lk,Ev])``: ``q k^T`` and ``P v``."""
    q, k, v = (_shape(x) for x in inputs[:3])
    return math.prod(q[:-1]) * k[-2] * (q[-1] + v[-1])


def native_mha_handle(inputs: list[Any], outputs: list[Any]) -> int:
    """``aten::_native_multi_head_attention`` (``nn.MultiheadAttention``'s inference fast path, batch first):
    q/k/v in-projections, attention over all heads, output projection."""
    q, k = _shape(inputs[0]), _shape(inputs[1])
    batch, lq, e = math.prod(q[:-2]), q[-2], q[-1]
    lk = k[-2]
    return batch * (2 * lq * e * e + 2 * lk * e * e + 2 * lq * lk * e)


def matmul_handle(inputs: list[Any], outputs: list[Any]) -> int:
    """``aten::matmul`` with broadcast batch dims on either side (fvcore's own handle only reads the first)."""
    a, b = _shape(inputs[0]), _shape(inputs[1])
    a = [1, *a] if len(a) == 1 else a
    b = [*b, 1] if len(b) == 1 else b
    batch = torch.broadcast_shapes(torch.Size(a[:-2]), torch.Size(b[:-2]))
    return math.prod(batch) * a[-2] * a[-1] * b[-1]


def einsum_handle(inputs: list[Any], outputs: list[Any]) -> int:
    """``aten::einsum``: one multiply-add per term of the full sum, the product of every index size (what the
    bmm torch lowers it to executes; fvcore's handle takes numpy's float path estimate instead)."""
    equation = inputs[0].toIValue().replace(" ", "")
    operands = inputs[1].node().inputs()
    sizes: dict[str, int] = {}
    for spec, value in zip(equation.split("->")[0].split(","), operands):
        if "." in spec:
            raise ValueError(f"einsum handle does not support ellipsis equations: {equation}")
        sizes.update(zip(spec, _shape(value)))
    return math.prod(sizes.values())


def _output_numel(inputs: list[Any], outputs: list[Any]) -> int:
    shape = get_shape(outputs[0]) if outputs else None
    return math.prod(shape) if shape else 0


HANDLES: dict[str, Handle] = {
    **FVCORE_HANDLES,
    "aten::scaled_dot_product_attention": sdpa_handle,
    "aten::_native_multi_head_attention": native_mha_handle,
    "aten::matmul": matmul_handle,
    "aten::einsum": einsum_handle,
}


def is_matmul_like(op: str) -> bool:
    """Whether a traced op name is a matrix product, convolution, attention or one of the project's ops."""
    return bool(_MATMUL_LIKE.search(op))


@dataclass
class FvcoreCount:
    """fvcore counts of one forward (MACs): total, by module name, by operator, and the skipped ops."""

    total: int
    by_module_operator: dict[str, dict[str, int]]
    skipped: list[dict[str, Any]]

    @property
    def by_module(self) -> dict[str, int]:
        return {name: sum(ops.values()) for name, ops in self.by_module_operator.items()}

    @property
    def by_operator(self) -> dict[str, int]:
        return self.by_module_operator.get("", {})

    @property
    def torch_comparable_by_module(self) -> dict[str, int]:
        """Per module, the count without the ops ``torch.utils.flop_counter`` has no formula for."""
        return {name: sum(v for op, v in ops.items() if op not in NOT_IN_TORCH_COUNTER)
                for name, ops in self.by_module_operator.items()}

    @property
    def skipped_matmul(self) -> list[str]:
        return [s["op"] for s in self.skipped if is_matmul_like(s["op"])]

    @property
    def torch_comparable(self) -> int:
        return self.torch_comparable_by_module.get("", 0)


def _analysis(model: nn.Module, inputs: tuple[Tensor, ...], handles: dict[str, Handle]) -> FlopCountAnalysis:
    analysis = FlopCountAnalysis(model, inputs).set_op_handle(**handles)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    return analysis


@torch.no_grad()
def fvcore_count(model: nn.Module, inputs: tuple[Tensor, ...]) -> FvcoreCount:
    """Count the forward ``model(*inputs)`` with fvcore + ``HANDLES``.

    Ops fvcore still skips are traced once more with a one-FLOP-per-output-element handle, which gives each an
    estimated share of the total (an upper bound for copies and views, which cost none).
    """
    analysis = _analysis(model, inputs, HANDLES)
    total = int(analysis.total())
    skipped_counts = analysis.unsupported_ops()
    estimate: dict[str, int] = {}
    if skipped_counts:
        estimate = dict(_analysis(model, inputs, {op: _output_numel for op in skipped_counts}).by_operator())
    skipped = [
        {"op": op, "calls": n, "est_flops": int(estimate.get(op.split("::")[-1], 0)),
         "share": estimate.get(op.split("::")[-1], 0) / max(total, 1)}
        for op, n in skipped_counts.most_common()
    ]
    return FvcoreCount(
        total=total,
        by_module_operator={m: {op: int(v) for op, v in ops.items()}
                            for m, ops in analysis.by_module_and_operator().items()},
        skipped=sorted(skipped, key=lambda s: -s["est_flops"]),
    )


def _sdpa_cpu_flops(query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    return sdpa_flop_count(query, key, value)


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Parameters temporarily without ``requires_grad`` (FlopCounterMode's module tracker needs grad-free views)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def torch_count(model: nn.Module, inputs: tuple[Tensor, ...]) -> dict[str, int]:
    """``torch.utils.flop_counter`` count of the forward, halved to MACs, by module path (``""`` = whole model).

    ``nn.MultiheadAttention``'s fast path is switched off so its projections and attention reach torch's own
    ``addmm``/SDPA formulas (it has none for ``_native_multi_head_attention``); the CPU flash SDPA kernel gets
    torch's SDPA formula.
    """
    counter = FlopCounterMode(display=False, custom_mapping={
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops})
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with _frozen(model), torch.no_grad(), counter:
            model(*inputs)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    root = type(model).__name__
    out = {}
    for name, ops in counter.get_flop_counts().items():
        if name == "Global":
            out[""] = sum(ops.values()) // 2
        elif name.startswith(root + "."):
            out[name[len(root) + 1:]] = sum(ops.values()) // 2
    return out
