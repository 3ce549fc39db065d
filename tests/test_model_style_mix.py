"""The style-mix intervention (``model.timesformer.style_mix``) against a float64 loop, and what it keeps."""
from __future__ import annotations

import pytest
import torch

from pcmci.config import ConfigError, load_config
from pcmci.model.style_mix import StyleMix, mix_statistics

EPS = 1e-6


def loop_reference(x: torch.Tensor, lam: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
    """The equation of ``pcmci.model.style_mix`` one clip and one channel at a time, in float64."""
    x = x.double()
    out = torch.empty_like(x)
    b, t, w = x.shape
    for i in range(b):
        j = int(partner[i])
        for c in range(w):
            own, other = x[i, :, c], x[j, :, c]
            mu, mu_j = sum(own.tolist()) / t, sum(other.tolist()) / t
            var = sum((v - mu) ** 2 for v in own.tolist()) / t
            var_j = sum((v - mu_j) ** 2 for v in other.tolist()) / t
            sigma, sigma_j = (var + EPS) ** 0.5, (var_j + EPS) ** 0.5
            lam_i = float(lam[i])
            for k in range(t):
                out[i, k, c] = ((own[k] - mu) / sigma * (lam_i * sigma + (1 - lam_i) * sigma_j)
                                + lam_i * mu + (1 - lam_i) * mu_j)
    return out


# Inputs of scale ~3 around an offset ~2 (|x| < 15); each output is ~6 rounded operations on such values scaled
# by sigma_mix / sigma < 4, so float32 rounding (2^-24 ~ 6e-8) stays under 15 * 4 * 6 * 6e-8 ~ 2e-5.
CASES = [(torch.float64, 1e-12, 1e-12), (torch.float32, 3e-5, 1e-5)]
SHAPES = [(2, 1, 1), (3, 5, 4), (4, 128, 8), (5, 7, 3)]


@pytest.mark.parametrize(("dtype", "atol", "rtol"), CASES)
@pytest.mark.parametrize("shape", SHAPES)
def test_mix_statistics_matches_a_float64_loop(dtype: torch.dtype, atol: float, rtol: float, shape) -> None:
    g = torch.Generator().manual_seed(sum(shape))
    b = shape[0]
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * torch.rand(1, 1, shape[2], generator=g,
                                                                            dtype=torch.float64) * 3
         + torch.randn(1, 1, shape[2], generator=g, dtype=torch.float64) * 2)
    lam = torch.rand(b, generator=g, dtype=torch.float64)
    partner = (torch.arange(b) + 1) % b
    got = mix_statistics(x.to(dtype), lam, partner)
    torch.testing.assert_close(got.double(), loop_reference(x.to(dtype), lam, partner), atol=atol, rtol=rtol)


def test_mixing_keeps_where_tokens_differ_and_moves_only_the_statistics() -> None:
    """Each clip's standardised token pattern (where the hand and a still tool are) is unchanged; its channel means
    and spreads become the mixed ones (checked by recounting them from the output)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 64, 6, generator=g, dtype=torch.float64) * 2 + 1
    lam = torch.tensor([0.0, 0.3, 0.9, 1.0], dtype=torch.float64)
    partner = torch.tensor([2, 3, 0, 1])
    out = mix_statistics(x, lam, partner)

    def standardised(v: torch.Tensor) -> torch.Tensor:
        return (v - v.mean(1, keepdim=True)) / v.std(1, unbiased=False, keepdim=True)

    torch.testing.assert_close(standardised(out), standardised(x), atol=1e-6, rtol=1e-6)  # eps 1e-6 in sigma
    mu, sd = x.mean(1), x.std(1, unbiased=False)
    torch.testing.assert_close(out.mean(1), lam[:, None] * mu + (1 - lam[:, None]) * mu[partner])
    torch.testing.assert_close(out.std(1, unbiased=False), lam[:, None] * sd + (1 - lam[:, None]) * sd[partner],
                               atol=1e-6, rtol=1e-6)


def test_the_statistics_are_constants_for_the_gradient() -> None:
    x = torch.randn(3, 10, 4, dtype=torch.float64, requires_grad=True)
    lam, partner = torch.tensor([0.2, 0.5, 1.0], dtype=torch.float64), torch.tensor([1, 2, 0])
    upstream = torch.randn(3, 10, 4, dtype=torch.float64)
    (mix_statistics(x, lam, partner) * upstream).sum().backward()
    d = x.detach()
    sigma = (d.var(1, unbiased=False, keepdim=True) + EPS).sqrt()
    mixed = lam.view(-1, 1, 1) * sigma + (1 - lam.view(-1, 1, 1)) * sigma[partner]
    torch.testing.assert_close(x.grad, upstream * mixed / sigma)


def test_the_layer_is_the_identity_at_evaluation_and_at_p_zero_and_mixes_in_training() -> None:
    x = torch.randn(6, 32, 8)
    layer = StyleMix(p=1.0, alpha=0.1)
    assert torch.equal(layer.eval()(x), x)
    assert torch.equal(StyleMix(p=0.0, alpha=0.1).train()(x), x)
    assert torch.equal(layer.train()(x[:1]), x[:1])  # one clip has no partner
    torch.manual_seed(0)
    mixed = layer.train()(x)
    assert not torch.allclose(mixed, x, atol=1e-3)


def test_the_model_mixes_only_in_training_and_the_config_is_checked() -> None:
    from pcmci.model import build_model

    cfg = load_config("tiny", ["model.timesformer.style_mix=0.5", "model.stages=[]"])
    model = build_model(cfg.model, ["a", "b", "c"], [])
    frames = torch.rand(4, 8, 3, 64, 64)
    model.eval()
    plain = load_config("tiny", ["model.stages=[]"])
    twin = build_model(plain.model, ["a", "b", "c"], [])
    twin.load_state_dict(model.state_dict())  # no parameters of its own: same weights, same evaluation
    assert torch.equal(model(frames)["logits"], twin.eval()(frames)["logits"])
    for key in ("model.timesformer.style_mix=1.5", "model.timesformer.style_mix_alpha=0"):
        with pytest.raises(ConfigError, match="model.timesformer.style_mix="):
            load_config("tiny", [key])
