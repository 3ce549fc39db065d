"""relation: fused Triton kernels (interpreter on CPU) vs the reference, forward and backward."""
import importlib
import os

import pytest
import torch

from pcmci.kernels import relation, relation_reference

rl = importlib.import_module("pcmci.kernels.relation")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
HALF = [torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])  # the interpreter (numpy) has no bf16
needs_triton = pytest.mark.skipif(
    DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1", reason="needs CUDA or TRITON_INTERPRET=1"
)


def _inputs(B, K, N, d, e, masked, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, B, K, N, d, generator=g, dtype=dtype)
    v = torch.randn(B, K, N, e, generator=g, dtype=dtype)
    prior = torch.rand(K, generator=g, dtype=dtype).softmax(0)
    mask = None
    if masked:
        mask = torch.ones(B, N, dtype=torch.bool)
        mask[-1, N // 2:] = False
        mask[0, 0] = False
    return [x.to(DEVICE) for x in (q, k, v, prior)], None if mask is None else mask.to(DEVICE)


@needs_triton
@pytest.mark.parametrize("shape,masked", [((2, 3, 7, 5, 6), False), ((2, 2, 70, 8, 12), True)])
def test_triton_matches_reference(monkeypatch, shape, masked):
    """Forward and backward through the registered op; N=70 spans two key/query tiles (online softmax)."""
    (q, k, v, prior), mask = _inputs(*shape, masked)
    grad = torch.randn(shape[0], shape[2], shape[4], device=DEVICE)
    xs = [x.clone().requires_grad_() for x in (q, k, v, prior)]
    out_ref = relation_reference(*xs, mask)
    grads_ref = torch.autograd.grad((out_ref * grad).sum(), xs)
    monkeypatch.setenv("PCMCI_KERNELS", "triton")
    xs = [x.clone().requires_grad_() for x in (q, k, v, prior)]
    out = relation(*xs, mask)
    grads = torch.autograd.grad((out * grad).sum(), xs)
    torch.testing.assert_close(out, out_ref.detach(), atol=1e-5, rtol=1e-5)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, atol=1e-4, rtol=1e-4)


@needs_triton
@pytest.mark.parametrize("dtype", HALF)
def test_triton_half_precision(monkeypatch, dtype):
    (q, k, v, prior), _ = _inputs(1, 2, 20, 16, 16, False)
    ref = relation_reference(q, k, v, prior)
    monkeypatch.setenv("PCMCI_KERNELS", "triton")
    xs = [x.to(dtype).requires_grad_() for x in (q, k, v)]
    out = relation(*xs, prior)
    grads = torch.autograd.grad(out.float().square().sum(), xs)
    assert out.dtype == dtype and all(g.dtype == dtype and torch.isfinite(g).all() for g in grads)
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)


def test_reference_and_op_gradcheck():
    (q, k, v, prior), mask = _inputs(2, 2, 5, 3, 4, True, dtype=torch.float64)
    xs = [x.cpu().requires_grad_() for x in (q, k, v, prior)]
    mask = mask.cpu()
    assert torch.autograd.gradcheck(lambda *a: relation_reference(*a, mask), xs)
    assert torch.autograd.gradcheck(lambda *a: relation(*a, mask), xs)  # the op's recomputing backward


def test_masked_keys_and_maps():
    (q, k, v, prior), mask = _inputs(2, 3, 6, 4, 5, True)
    out, maps = relation(q, k, v, prior, mask, return_maps=True)
    assert maps.shape == (2, 3, 6, 6)
    assert (maps.masked_select(~mask[:, None, None, :].expand_as(maps)) == 0).all()
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 3, 6, device=DEVICE))
    v_poisoned = v.masked_fill(~mask[:, None, :, None], 1e4)  # padded values must not leak into the output
    torch.testing.assert_close(relation(q, k, v_poisoned, prior, mask), out)
    torch.testing.assert_close(torch.einsum("k,bknm,bkme->bne", prior, maps, v), out)


def test_opcheck():
    (q, k, v, prior), mask = _inputs(2, 2, 5, 3, 4, True)
    args = [x.cpu().requires_grad_() for x in (q, k, v, prior)]
    for m in (None, mask.cpu()):
        torch.library.opcheck(torch.ops.pcmci.relation.default, (*args, m))


def test_shape_errors():
    (q, k, v, prior), _ = _inputs(1, 2, 4, 3, 3, False)
    with pytest.raises(ValueError, match="prior"):
        relation(q, k, v, prior[:1])
