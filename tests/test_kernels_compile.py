"""Both ops under torch.compile(fullgraph=True) on CPU; FLOP formulas and fvcore handles."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from pcmci.kernels import FVCORE_HANDLES, log_sinkhorn, relation_product


def _f(cost, q, k, v, prior, mask):
    plan = log_sinkhorn(cost, 0.1, 10, mask=mask)
    return plan.sum(-1).square().sum() + relation_product(q, k, v, prior).square().sum() + (plan * cost).sum()


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])  # cuda: Triton kernels inside the graph


def _args(device="cpu"):
    g = torch.Generator().manual_seed(0)
    cost = torch.rand(2, 5, 3, generator=g)
    q, k, v = torch.randn(3, 2, 2, 6, 4, generator=g).unbind(0)
    prior = torch.rand(2, generator=g)
    mask = torch.ones(2, 5, 3, dtype=torch.bool)
    mask[1, -1] = False
    return [*(x.to(device).requires_grad_() for x in (cost, q, k, v, prior)), mask.to(device)]


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_equals_eager_fullgraph(device):
    torch._dynamo.reset()
    args = _args(device)
    y0 = _f(*args)
    g0 = torch.autograd.grad(y0, args[:5])
    y = torch.compile(_f, fullgraph=True)(*args)
    g = torch.autograd.grad(y, args[:5])
    torch.testing.assert_close(y, y0)
    for a, b in zip(g, g0):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_compiled_nonfinite_cost_raises():
    torch._dynamo.reset()
    cost = torch.rand(1, 3, 3)
    cost[0, 0, 0] = float("nan")
    with pytest.raises(RuntimeError, match="NaN or inf"):
        torch.compile(lambda c: log_sinkhorn(c, 0.1, 3), fullgraph=True)(cost)


def test_flop_formulas():
    cost, q, k, v, prior, mask = _args()
    with FlopCounterMode(display=False) as counter:
        log_sinkhorn(cost, 0.1, 10, mask=mask).sum().backward()
        relation_product(q, k, v, prior).sum().backward()
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    assert counts["pcmci.log_sinkhorn"] == 2 * 2 * 5 * 3 * 21
    assert counts["pcmci.log_sinkhorn_backward"] == 2 * counts["pcmci.log_sinkhorn"]
    assert counts["pcmci.relation"] == 2 * 2 * 2 * 6 * (6 * 8 + 4)


def test_fvcore_handles():
    fvcore = pytest.importorskip("fvcore.nn")
    cost, q, k, v, prior, _ = (x.detach() if isinstance(x, torch.Tensor) else x for x in _args())

    class Both(torch.nn.Module):
        def forward(self, cost, q, k, v, prior):
            return log_sinkhorn(cost, 0.1, 10), relation_product(q, k, v, prior)

    flops = fvcore.FlopCountAnalysis(Both(), (cost, q, k, v, prior)).set_op_handle(**FVCORE_HANDLES)
    flops.unsupported_ops_warnings(False)
    assert flops.by_operator() == {"log_sinkhorn": 2 * 5 * 3 * 21, "relation": 2 * 2 * 6 * (6 * 8 + 4)}
