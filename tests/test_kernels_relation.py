"""relation: fused Triton kernels (interpreter on CPU) vs the reference, forward and backward."""
import pytest
import torch
from conftest import DEVICE, HALF, needs_triton, tolerance

from pcmci.kernels import relation_product, relation_reference
from pcmci.kernels import relation as rl



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
    out = relation_product(*xs, mask)
    grads = torch.autograd.grad((out * grad).sum(), xs)
    torch.testing.assert_close(out, out_ref.detach(), **tolerance(torch.float32))
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, **tolerance(torch.float32, gradient=True))


@needs_triton
@pytest.mark.parametrize("dtype", HALF)
def test_triton_half_precision(monkeypatch, dtype):
    (q, k, v, prior), _ = _inputs(1, 2, 20, 16, 16, False)
    ref = relation_reference(q, k, v, prior)
    monkeypatch.setenv("PCMCI_KERNELS", "triton")
    xs = [x.to(dtype).requires_grad_() for x in (q, k, v)]
    out = relation_product(*xs, prior)
    grads = torch.autograd.grad(out.float().square().sum(), xs)
    assert out.dtype == dtype and all(g.dtype == dtype and torch.isfinite(g).all() for g in grads)
    torch.testing.assert_close(out.float(), ref, **tolerance(dtype))


def test_reference_and_op_gradcheck():
    (q, k, v, prior), mask = _inputs(2, 2, 5, 3, 4, True, dtype=torch.float64)
    xs = [x.cpu().requires_grad_() for x in (q, k, v, prior)]
    mask = mask.cpu()
    assert torch.autograd.gradcheck(lambda *a: relation_reference(*a, mask), xs)
    assert torch.autograd.gradcheck(lambda *a: relation_product(*a, mask), xs)  # the op's recomputing backward


def test_masked_keys_and_maps():
    (q, k, v, prior), mask = _inputs(2, 3, 6, 4, 5, True)
    out, maps = relation_product(q, k, v, prior, mask, return_maps=True)
    assert maps.shape == (2, 3, 6, 6)
    assert (maps.masked_select(~mask[:, None, None, :].expand_as(maps)) == 0).all()
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 3, 6, device=DEVICE))
    v_poisoned = v.masked_fill(~mask[:, None, :, None], 1e4)  # padded values must not leak into the output
    torch.testing.assert_close(relation_product(q, k, v_poisoned, prior, mask), out)
    torch.testing.assert_close(torch.einsum("k,bknm,bkme->bne", prior, maps, v), out)


def test_opcheck():
    (q, k, v, prior), mask = _inputs(2, 2, 5, 3, 4, True)
    args = [x.cpu().requires_grad_() for x in (q, k, v, prior)]
    for m in (None, mask.cpu()):
        torch.library.opcheck(torch.ops.pcmci.relation.default, (*args, m))


def test_shape_errors():
    (q, k, v, prior), _ = _inputs(1, 2, 4, 3, 3, False)
    with pytest.raises(ValueError, match="prior"):
        relation_product(q, k, v, prior[:1])


@needs_triton
def test_triton_fp16_64x64_tiles_match_the_fp32_reference(monkeypatch):
    """fp16 at the paper's head width (d = e = 64) and N = 70: the 64-row tiles of the dispatch table, two query
    and two key blocks (the online softmax rescales), forward and backward, against the fp32 reference on the
    same fp16-rounded inputs (so input rounding is not counted).

    Tolerances from the kernels' roundings: scores, softmax and every dot accumulate in fp32; what is rounded to
    fp16 (unit roundoff u = 2^-11 = 4.9e-4) is the probability tile before ``P V``, the scaled ``dout`` and the
    ``dS`` tile before their dots, and each stored result. The output is a convex combination of values
    (|v| <= ~4.5 for 70*2*64 normal draws), so its error is at most 2u|v|max ~ 4.4e-3: atol 6e-3. A gradient
    entry sums products each rounded at most three times (3u ~ 1.5e-3 relative) over terms that cancel in
    ``p (dp - rowdot)``; bounded by 1e-2 of the gradient's largest entry (measured with torch 2.14 / triton 3.8:
    1.7e-4 on the output, at most 5e-4 of the largest entry on the gradients)."""
    B, K, N, d = 1, 2, 70, 64
    launches = rl.launch_configs(B, K, N, d, d, torch.float16, 80)
    assert [(x.constexprs["BM"], x.constexprs["BN"]) for x in launches] == [(64, 64), (64, 64), (64, 32)]
    (q, k, v, prior), _ = _inputs(B, K, N, d, d, False)
    q, k, v = (x.half() for x in (q, k, v))
    grad = torch.randn(B, N, d, device=DEVICE)
    ref_in = [x.float().requires_grad_() for x in (q, k, v)]
    out_ref = relation_reference(*ref_in, prior)
    grads_ref = torch.autograd.grad((out_ref * grad).sum(), ref_in)
    monkeypatch.setenv("PCMCI_KERNELS", "triton")
    xs = [x.clone().requires_grad_() for x in (q, k, v)]
    out = relation_product(*xs, prior)
    grads = torch.autograd.grad((out.float() * grad).sum(), xs)
    assert out.dtype == torch.float16 and all(g.dtype == torch.float16 for g in grads)
    torch.testing.assert_close(out.float(), out_ref.detach(), atol=6e-3, rtol=0)
    for g, g_ref in zip(grads, grads_ref):
        assert (g.float() - g_ref).abs().max() <= 1e-2 * g_ref.abs().max()
