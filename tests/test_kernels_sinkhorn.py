"""log_sinkhorn: Triton kernels (interpreter on CPU) vs the reference, POT, gradients and properties."""
import numpy as np
import pytest
import torch
from conftest import DEVICE, HALF, needs_triton, tolerance
from hypothesis import given, settings
from hypothesis import strategies as st

from pcmci.kernels import log_sinkhorn, log_sinkhorn_reference
from pcmci.kernels import sinkhorn as sk



def _problem(B: int, R: int, S: int, masked: bool, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    cost = torch.rand(B, R, S, generator=g) * 2
    if not masked:
        return cost.to(DEVICE), None
    mask = torch.ones(B, R, S, dtype=torch.bool)
    mask[0, -2:, :] = False  # padded rows
    mask[-1, :, -3:] = False  # padded columns
    mask[-1, 0, 0] = False  # a single hole
    return cost.to(DEVICE), mask.to(DEVICE)


def _ref_grads(cost, eps, iters, mask, a, b, grad):
    xs = [x.detach().clone().requires_grad_() for x in (cost, a, b)]
    plan = log_sinkhorn_reference(xs[0], eps, iters, xs[1], xs[2], mask)
    return plan.detach(), torch.autograd.grad((plan * grad).sum(), xs)


@needs_triton
@pytest.mark.parametrize("masked", [False, True])
def test_onchip_op_matches_reference(monkeypatch, masked):
    """Regime 1 through the registered op and its autograd, non-power-of-two sizes, given marginals."""
    monkeypatch.setenv("PCMCI_KERNELS", "triton")
    cost, mask = _problem(3, 6, 11, masked)
    a = torch.rand(3, 6, device=DEVICE) + 0.5
    b = torch.rand(11, device=DEVICE) + 0.5
    a, b = a / a.sum(-1, keepdim=True), b / b.sum()
    grad = torch.randn_like(cost)
    plan_ref, grads_ref = _ref_grads(cost, 0.2, 7, mask, a, b, grad)
    xs = [x.clone().requires_grad_() for x in (cost, a, b)]
    plan = log_sinkhorn(xs[0], 0.2, 7, xs[1], xs[2], mask)
    grads = torch.autograd.grad((plan * grad).sum(), xs)
    torch.testing.assert_close(plan, plan_ref, **tolerance(torch.float32))
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, **tolerance(torch.float32, gradient=True))
    if mask is not None:
        assert (plan[~mask] == 0).all()


@needs_triton
@pytest.mark.parametrize("masked", [False, True])
def test_streamed_kernels_match_reference(masked):
    """Regime 2 (forced with 4x8 tiles: several tiles each way) forward and backward."""
    cost, mask = _problem(2, 7, 13, masked, seed=1)
    la, lb = sk._log_marginals(cost, None, None, mask)
    grad = torch.randn_like(cost)
    plan, rh, ch = sk.triton_forward(cost, la, lb, 0.3, 4, mask, block=(4, 8))
    dcost, dla, dlb = sk.triton_backward(grad, cost, la, lb, rh, ch, 0.3, mask, block=(4, 8))
    xs = [x.clone().requires_grad_() for x in (cost, la, lb)]
    ref = sk.reference_forward(xs[0], xs[1], xs[2], 0.3, 4, mask)
    grads_ref = torch.autograd.grad((ref[0] * grad).sum(), xs)
    torch.testing.assert_close(plan, ref[0].detach(), **tolerance(torch.float32))
    torch.testing.assert_close(rh, ref[1].detach(), **tolerance(torch.float32))
    for g, g_ref in zip((dcost, dla, dlb), grads_ref):
        valid = torch.isfinite(g_ref)
        torch.testing.assert_close(g[valid], g_ref[valid], **tolerance(torch.float32, gradient=True))


@needs_triton
@pytest.mark.parametrize("dtype", HALF)
def test_kernel_half_precision_input(monkeypatch, dtype):
    monkeypatch.setenv("PCMCI_KERNELS", "triton")
    cost, _ = _problem(2, 5, 6, False)
    cost = cost.to(dtype).requires_grad_()
    plan = log_sinkhorn(cost, 0.5, 5)
    (grad,) = torch.autograd.grad(plan.square().sum(), cost)
    assert plan.dtype == grad.dtype == dtype
    ref = log_sinkhorn_reference(cost.detach().float(), 0.5, 5)
    torch.testing.assert_close(plan.float(), ref, **tolerance(dtype))


def test_torch_replay_backward_is_exact_gradcheck():
    """The op's own backward (reverse replay of stored potentials) passes gradcheck in float64."""
    cost, mask = _problem(2, 4, 5, True)
    cost = cost.cpu().double().requires_grad_()
    a = torch.rand(2, 4, dtype=torch.float64).add(0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda c, a: log_sinkhorn(c, 0.4, 5, a, None, mask.cpu()), (cost, a))


def test_reference_gradcheck():
    cost = torch.rand(2, 3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.rand(4, dtype=torch.float64).add(0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda c, b: log_sinkhorn_reference(c, 0.3, 6, None, b), (cost, b))


def test_matches_pot_log_solver():
    ot = pytest.importorskip("ot")
    cost = torch.rand(3, 9, 6, dtype=torch.float64)
    a = torch.rand(9, dtype=torch.float64) + 0.2
    b = torch.rand(6, dtype=torch.float64) + 0.2
    a, b = a / a.sum(), b / b.sum()
    plan = log_sinkhorn_reference(cost, 0.1, 300, a, b)
    for i in range(3):
        ref = ot.sinkhorn(a.numpy(), b.numpy(), cost[i].numpy(), 0.1, method="sinkhorn_log", numItermax=2000,
                          stopThr=1e-13)
        np.testing.assert_allclose(plan[i].numpy(), ref, atol=1e-9)


@needs_triton
def test_kernel_matches_pot(monkeypatch):
    ot = pytest.importorskip("ot")
    monkeypatch.setenv("PCMCI_KERNELS", "triton")
    cost, _ = _problem(2, 5, 7, False, seed=3)
    plan = log_sinkhorn(cost, 0.2, 100).cpu().double()
    for i in range(2):
        ref = ot.sinkhorn(np.full(5, 1 / 5), np.full(7, 1 / 7), cost[i].cpu().double().numpy(), 0.2,
                          method="sinkhorn_log", numItermax=2000, stopThr=1e-13)
        np.testing.assert_allclose(plan[i].numpy(), ref, atol=1e-6)


@settings(max_examples=10, deadline=None)
@given(R=st.integers(1, 7), S=st.integers(1, 7), log_eps=st.floats(-1, 1), seed=st.integers(0, 99))
def test_marginals_after_enough_iterations(R, S, log_eps, seed):
    cost = torch.rand(2, R, S, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    plan = log_sinkhorn_reference(cost, 10**log_eps, 300)
    torch.testing.assert_close(plan.sum(-1), torch.full((2, R), 1 / R, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(plan.sum(-2), torch.full((2, S), 1 / S, dtype=torch.float64), atol=1e-6, rtol=0)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 99), shift=st.floats(-3, 3))
def test_invariant_to_row_and_column_constants(seed, shift):
    g = torch.Generator().manual_seed(seed)
    cost = torch.rand(1, 5, 4, dtype=torch.float64, generator=g)
    rows, cols = torch.randn(1, 5, 1, generator=g, dtype=torch.float64), torch.randn(1, 1, 4, generator=g, dtype=torch.float64)
    plan = log_sinkhorn_reference(cost, 0.2, 500)
    shifted = log_sinkhorn_reference(cost + shift * rows + cols, 0.2, 500)
    torch.testing.assert_close(shifted, plan, atol=1e-8, rtol=1e-6)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 99))
def test_permutation_equivariance(seed):
    g = torch.Generator().manual_seed(seed)
    cost = torch.rand(2, 5, 6, generator=g, dtype=torch.float64)
    pr, pc = torch.randperm(5, generator=g), torch.randperm(6, generator=g)
    plan = log_sinkhorn_reference(cost, 0.3, 20)
    torch.testing.assert_close(log_sinkhorn_reference(cost[:, pr][:, :, pc], 0.3, 20), plan[:, pr][:, :, pc])


@settings(max_examples=8, deadline=None)
@given(R=st.integers(1, 5), S=st.integers(1, 5), pad_r=st.integers(0, 3), pad_s=st.integers(0, 3), seed=st.integers(0, 99))
def test_mask_excludes_padding_exactly(R, S, pad_r, pad_s, seed):
    g = torch.Generator().manual_seed(seed)
    cost = torch.rand(1, R + pad_r, S + pad_s, generator=g, dtype=torch.float64) * 5
    mask = torch.zeros_like(cost, dtype=torch.bool)
    mask[:, :R, :S] = True
    padded = log_sinkhorn_reference(cost, 0.5, 10, mask=mask)
    assert (padded[~mask] == 0).all()
    torch.testing.assert_close(padded[:, :R, :S], log_sinkhorn_reference(cost[:, :R, :S], 0.5, 10), atol=1e-12, rtol=0)


@settings(max_examples=8, deadline=None)
@given(log_eps=st.floats(-3, 1), scale=st.floats(0.1, 10), seed=st.integers(0, 99))
def test_extreme_eps_stays_finite(log_eps, scale, seed):
    cost = torch.rand(2, 6, 5, generator=torch.Generator().manual_seed(seed)) * scale
    cost.requires_grad_()
    plan = log_sinkhorn(cost, 10**log_eps, 20)
    (grad,) = torch.autograd.grad(plan.square().sum(), cost)
    assert torch.isfinite(plan).all() and torch.isfinite(grad).all()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_cost_is_a_clear_error(bad):
    cost = torch.rand(1, 3, 3)
    cost[0, 1, 2] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        log_sinkhorn(cost, 0.1, 5)
    mask = torch.ones(1, 3, 3, dtype=torch.bool)
    mask[0, 1, 2] = False
    assert torch.isfinite(log_sinkhorn(cost, 0.1, 5, mask=mask)).all()  # masked entries may hold anything


def test_opcheck():
    cost = torch.rand(2, 4, 3, requires_grad=True)
    la, lb = sk._log_marginals(cost, None, None, None)
    mask = torch.rand(2, 4, 3) > 0.2
    for m in (None, mask):
        torch.library.opcheck(torch.ops.pcmci.log_sinkhorn.default, (cost, la, lb, 0.5, 3, m))


def test_dispatch_env(monkeypatch):
    monkeypatch.setenv("PCMCI_KERNELS", "fast")
    with pytest.raises(ValueError, match="PCMCI_KERNELS"):
        log_sinkhorn(torch.rand(1, 2, 2), 0.1, 2)
