"""Each causal stage, the head and the TimeSformer block against a direct float64 computation of its
equation on small tensors (loops over batch, labels, bases; POT for the transport plan)."""
from __future__ import annotations

import math

import numpy as np
import ot
import pytest
import torch

from pcmci.config import HeadConfig, ICHConfig, ICIConfig, IVCConfig
from pcmci.model.dictionary import kmeans, nwgm_attention
from pcmci.model.head import CrossAttentionHead
from pcmci.model.ich import ICH
from pcmci.model.ici import ICI
from pcmci.model.ivc import IVC
from pcmci.model.timesformer import DividedSTBlock

torch.manual_seed(0)


def np_(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def layer_norm(x: np.ndarray, ln: torch.nn.LayerNorm) -> np.ndarray:
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + ln.eps) * np_(ln.weight) + np_(ln.bias)


def linear(x: np.ndarray, lin: torch.nn.Linear) -> np.ndarray:
    y = x @ np_(lin.weight).T
    return y + np_(lin.bias) if lin.bias is not None else y


def mlp(x: np.ndarray, m: torch.nn.Module) -> np.ndarray:
    h = linear(x, m.fc1)
    h = 0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))
    return linear(h, m.fc2)


def nwgm(query: np.ndarray, keys: np.ndarray, values: np.ndarray, prior: np.ndarray) -> np.ndarray:
    out = np.zeros((query.shape[0], values.shape[1]))
    for n in range(query.shape[0]):
        a = softmax(query[n] @ keys.T / math.sqrt(query.shape[1]))
        w = prior * a
        out[n] = (w[:, None] * values).sum(0) / w.sum()
    return out


def fit_dictionary(stage: torch.nn.Module, dim: int, size: int) -> None:
    stage.dictionary.fit(torch.randn(4 * size, dim))


def ich_direct(ich: ICH, cfg: ICHConfig, t: np.ndarray, vp: np.ndarray) -> np.ndarray:
    """ICH built from ``cfg`` on one clip ``t[L,D]``, ``vp[F,D]`` in float64 loops (POT for the plan)."""
    l, f, eps = t.shape[0], vp.shape[0], cfg.eps
    tn = t / np.linalg.norm(t, axis=1, keepdims=True)
    vn = vp / np.linalg.norm(vp, axis=1, keepdims=True)
    s = tn @ vn.T
    q = ot.sinkhorn(np.full(l, 1 / l), np.full(f, 1 / f), 1 - s, eps, method="sinkhorn_log",
                    numItermax=cfg.iters, stopThr=0)
    if cfg.proxy == "similarity":
        weights = s
    elif cfg.proxy == "plan":
        weights = l * q
    else:
        over = np.maximum(softmax(s / eps) - l * q, 0)
        weights = over / np.maximum(over.sum(1, keepdims=True), 1e-6)
    h = weights @ vp
    z, prior = np_(ich.dictionary.atoms), np_(ich.dictionary.prior)
    w_q, w_k, w_h, w_o = ich.query_proj, ich.key_proj, ich.value_proj, ich.out_proj
    if cfg.adjust == "population":
        h_prior = nwgm(linear(t, w_q), linear(z, w_k), linear(z, w_h), prior)
        return layer_norm(t + linear(h_prior, w_o), ich.norm)
    if cfg.adjust == "posterior":
        h_hat = nwgm(linear(t + linear(h, w_h), w_q), linear(z, w_k), linear(z, w_h), prior)
        return layer_norm(t + linear(np.concatenate([t, h_hat], 1), w_o), ich.norm)
    out = np.zeros_like(t)
    h_prior = nwgm(linear(t, w_q), linear(z, w_k), linear(z, w_h), prior)
    for j in range(l):
        u = h[j] / np.linalg.norm(h[j])
        out[j] = t[j] - (t[j] @ u) * u + linear(h_prior[j : j + 1], w_o)[0]
    return layer_norm(out, ich.norm)


@pytest.mark.filterwarnings("ignore:Sinkhorn did not converge")
@pytest.mark.parametrize("proxy,adjust", [("overalign", "prior"), ("plan", "prior"), ("similarity", "prior"),
                                          ("overalign", "posterior"), ("overalign", "population")])
def test_ich_matches_equation(proxy: str, adjust: str) -> None:
    b, l, f, d = 2, 5, 4, 16
    cfg = ICHConfig(dict_size=6, proxy=proxy, adjust=adjust, iters=200, eps=0.1)
    ich = ICH(cfg, d).double()
    fit_dictionary(ich, d, 6)
    t, vp = torch.randn(b, l, d, dtype=torch.float64), torch.randn(b, f, d, dtype=torch.float64)
    got = np_(ich.adjust(t, vp))
    for i in range(b):
        np.testing.assert_allclose(got[i], ich_direct(ich, cfg, np_(t[i]), np_(vp[i])), atol=1e-6)


def test_ich_population_adjustment_ignores_the_clip() -> None:
    """``adjust="population"``: T' is the same for any two clips (and for none); the model skips the CLIP frames."""
    d = 16
    ich = ICH(ICHConfig(dict_size=4, adjust="population"), d).double()
    fit_dictionary(ich, d, 4)
    t = torch.randn(1, 3, d, dtype=torch.float64)
    a, b = (ich.adjust(t, torch.randn(1, 4, d, dtype=torch.float64)) for _ in range(2))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(ich.adjust(t, None), a)
    assert not ich.reads_frames and ICH(ICHConfig(dict_size=4, adjust="prior"), d).reads_frames


def test_ich_prior_output_differs_from_the_text_only_along_the_clips_proxy() -> None:
    """``adjust="prior"`` with ``W_o = 0`` and an identity LN: read from the module's output alone, each label's T'
    is the text with its whole component along the clip's proxy direction ``u`` removed, then normalised. LN only
    shifts (by a multiple of the all-ones vector) and scales, so ``t`` must lie in span{T', 1, u} with the
    coefficient of ``u`` equal to ``<t, u>`` (the pre-norm text is orthogonal to ``u``); another direction in place
    of ``u`` does not explain T', and ``<t, u>`` is not zero, so something was removed."""
    d, labels = 16, 3
    ich = ICH(ICHConfig(dict_size=4, adjust="prior"), d).double()
    fit_dictionary(ich, d, 4)
    with torch.no_grad():
        ich.out_proj.weight.zero_()
        ich.out_proj.bias.zero_()
        ich.norm.weight.fill_(1.0)
        ich.norm.bias.zero_()
    t = torch.randn(1, labels, d, dtype=torch.float64)
    vp = torch.randn(1, 4, d, dtype=torch.float64)
    out, t, u = np_(ich.adjust(t, vp))[0], np_(t)[0], np_(torch.nn.functional.normalize(ich.proxy(t, vp), dim=-1))[0]
    other = np.random.default_rng(0).standard_normal((labels, d))
    for j in range(labels):
        basis = np.stack([out[j], np.ones(d), u[j]], axis=1)
        coef = np.linalg.lstsq(basis, t[j], rcond=None)[0]
        np.testing.assert_allclose(basis @ coef, t[j], atol=1e-10)
        assert abs(t[j] @ u[j]) > 1e-2 and coef[2] == pytest.approx(t[j] @ u[j], abs=1e-10)
        wrong = np.stack([out[j], np.ones(d), other[j] / np.linalg.norm(other[j])], axis=1)
        assert np.abs(wrong @ np.linalg.lstsq(wrong, t[j], rcond=None)[0] - t[j]).max() > 1e-3


def relation_layer_direct(x: np.ndarray, layer: torch.nn.Module) -> np.ndarray:
    k_bases, dk = layer.bases, x.shape[1] // layer.bases
    prior = softmax(np_(layer.base_logits))
    q, k, v = linear(x, layer.query_proj), linear(x, layer.key_proj), linear(x, layer.value_proj)
    r = np.zeros((x.shape[0], dk))
    for j in range(k_bases):
        sl = slice(j * dk, (j + 1) * dk)
        g = softmax(q[:, sl] @ k[:, sl].T / math.sqrt(dk))
        r += prior[j] * g @ v[:, sl]
    y = layer_norm(x + linear(r, layer.out_proj), layer.norm1)
    return layer_norm(y + mlp(y, layer.ffn), layer.norm2)


def test_ici_matches_equation() -> None:
    b, l, d = 2, 6, 16
    ici = ICI(ICIConfig(bases=4, layers=2), d).double()
    with torch.no_grad():
        for layer in ici.layers:
            layer.base_logits.normal_()
    t = torch.randn(b, l, d, dtype=torch.float64)
    got = np_(ici.relate(t))
    for i in range(b):
        want = np_(t[i])
        for layer in ici.layers:
            want = relation_layer_direct(want, layer)
        np.testing.assert_allclose(got[i], want, atol=1e-6)


def prenorm_relation_layer_direct(x: np.ndarray, layer: torch.nn.Module) -> np.ndarray:
    """``X + W_O sum_k pi_k G_k(LN_1 X) LN_1(X) W_k``, then ``+ FFN(LN_2 X)``, by loops over the bases."""
    k_bases, dk = layer.bases, x.shape[1] // layer.bases
    prior = softmax(np_(layer.base_logits))
    h = layer_norm(x, layer.norm1)
    q, k, v = linear(h, layer.query_proj), linear(h, layer.key_proj), linear(h, layer.value_proj)
    r = np.zeros((x.shape[0], dk))
    for j in range(k_bases):
        sl = slice(j * dk, (j + 1) * dk)
        r += prior[j] * softmax(q[:, sl] @ k[:, sl].T / math.sqrt(dk)) @ v[:, sl]
    y = x + linear(r, layer.out_proj)
    return y + mlp(layer_norm(y, layer.norm2), layer.ffn)


def ivc_direct(ivc: IVC, cfg: IVCConfig, x: np.ndarray, mm: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """IVC built from ``cfg`` on one clip ``x[N,D]`` with mediator ``mm[L,D]`` in float64 loops -> (V*, per-base
    alignment terms)."""
    n, d = x.shape
    kb = cfg.bases
    dk = d // kb
    mm = mm - mm.mean(0, keepdims=True)
    mm = (mm - mm.mean(1, keepdims=True)) / np.sqrt(mm.var(1, keepdims=True) + 1e-5)
    if cfg.static:
        x = x - x.mean(0, keepdims=True)
    v1 = prenorm_relation_layer_direct(x, ivc.video_relation)
    h1 = layer_norm(x, ivc.video_relation.norm1)
    qv, kv = linear(h1, ivc.video_relation.query_proj), linear(h1, ivc.video_relation.key_proj)
    pm = softmax(np_(ivc.mediator_base_logits))
    qm, km = linear(mm, ivc.mediator_query_proj), linear(mm, ivc.mediator_key_proj)
    hr = layer_norm(v1, ivc.norm_relate)
    vv = linear(hr, ivc.video_value_proj)
    pi = softmax(hr @ mm.T / math.sqrt(d))
    r, aligns = np.zeros((n, dk)), []
    for j in range(kb):
        sl = slice(j * dk, (j + 1) * dk)
        g = pi @ softmax(qm[:, sl] @ km[:, sl].T / math.sqrt(dk)) @ pi.T
        g = g / g.sum(1, keepdims=True)
        r += pm[j] * g @ vv[:, sl]
        g_v = softmax(qv[:, sl] @ kv[:, sl].T / math.sqrt(dk))
        aligns.append(((g_v - g) ** 2).sum() / n**2)
    vp = v1 + linear(r, ivc.out_proj)
    ha = layer_norm(vp, ivc.norm)
    m_hat = np.zeros((n, d))
    for token in range(n):
        a = softmax(linear(ha[token : token + 1], ivc.mediator_attn_proj)[0] @ mm.T / math.sqrt(d))
        m_hat[token] = a @ mm
    z, prior = np_(ivc.dictionary.atoms), np_(ivc.dictionary.prior)
    w_q, w_k, w_v = ivc.query_proj, ivc.key_proj, ivc.value_proj
    if not cfg.mediator_only:
        v_hat = nwgm(linear(ha, w_q), linear(z, w_k), linear(z, w_v), prior)
        return vp + linear(np.concatenate([m_hat, v_hat], 1), ivc.fuse_proj), aligns
    v_hat = nwgm(linear(m_hat, w_q), linear(z, w_k), linear(z, w_v), prior)
    return linear(m_hat, ivc.mediator_proj) + v_hat + np_(ivc.pos[0]), aligns


def randomize_(module: torch.nn.Module) -> None:
    """Every parameter drawn at random (the stage's zero-initialised output layers would hide their terms)."""
    with torch.no_grad():
        for param in module.parameters():
            param.normal_(0.0, 0.5)


@pytest.mark.parametrize("static,mediator_only", [(True, True), (False, False)])
def test_ivc_matches_equation(static: bool, mediator_only: bool) -> None:
    b, n, l, d, kb = 2, 5, 4, 16, 4
    cfg = IVCConfig(bases=kb, dict_size=6, align_weight=0.5, static=static, mediator_only=mediator_only)
    ivc = IVC(cfg, d, tokens=n, mlp_ratio=2.0).double()
    fit_dictionary(ivc, d, 6)
    randomize_(ivc)
    v, m = torch.randn(b, n, d, dtype=torch.float64), torch.randn(b, l, d, dtype=torch.float64)
    got, align = ivc.deconfound(v, m)
    aligns = []
    for i in range(b):
        want, terms = ivc_direct(ivc, cfg, np_(v[i]), np_(m[i]))
        aligns += terms
        np.testing.assert_allclose(np_(got[i]), want, atol=1e-6)
    np.testing.assert_allclose(float(align.detach()), np.mean(aligns), rtol=1e-6)


def test_ivc_starts_as_the_identity() -> None:
    """Freshly built, the default IVC returns its input tokens exactly (zero output layers on a residual stream),
    so a model with the stage starts where the model without it starts; after one step it does not."""
    n, l, d = 5, 4, 16
    ivc = IVC(IVCConfig(bases=4, dict_size=6), d, tokens=n, mlp_ratio=2.0).double()
    fit_dictionary(ivc, d, 6)
    v, m = torch.randn(2, n, d, dtype=torch.float64), torch.randn(2, l, d, dtype=torch.float64)
    out = ivc.deconfound(v, m)[0]
    assert torch.equal(out, v)
    out.square().sum().backward()
    grads = {name: p.grad for name, p in ivc.named_parameters() if p.grad is not None}
    assert grads["fuse_proj.weight"].abs().max() > 0 and grads["video_relation.out_proj.weight"].abs().max() > 0


def test_only_the_static_ablation_is_blind_to_a_clip_constant_token() -> None:
    """Under the ablation switch ``static=true`` adding a clip-constant vector to every token (a still background,
    or a still cause) leaves V* unchanged; the default IVC keeps it (what stands still may be the cause)."""
    n, l, d = 6, 4, 16
    v, m = torch.randn(2, n, d, dtype=torch.float64), torch.randn(2, l, d, dtype=torch.float64)
    context = 3.0 * torch.randn(2, 1, d, dtype=torch.float64)
    static = IVC(IVCConfig(bases=4, dict_size=5, static=True), d, tokens=n, mlp_ratio=2.0).double()
    fit_dictionary(static, d, 5)
    randomize_(static)
    torch.testing.assert_close(static.deconfound(v + context, m)[0], static.deconfound(v, m)[0])
    default = IVC(IVCConfig(bases=4, dict_size=5), d, n, 2.0).double()
    fit_dictionary(default, d, 5)
    randomize_(default)
    assert (default.deconfound(v + context, m)[0] - default.deconfound(v, m)[0]).abs().max() > 1e-3


def test_head_matches_equation() -> None:
    b, c, n, d = 2, 3, 5, 16
    head = CrossAttentionHead(HeadConfig(layers=1, heads=2), d, c).double()
    q, mem = torch.randn(b, c, d, dtype=torch.float64), torch.randn(b, n, d, dtype=torch.float64)
    got = np_(head(q, mem))
    layer = head.layers[0]
    attn = layer.attn
    assert attn.key_proj.bias is None  # softmax cancels a key bias
    for i in range(b):
        x, m = np_(q[i]), layer_norm(np_(mem[i]), layer.norm_mem)
        xn = layer_norm(x, layer.norm_q)
        qq, kk, vv = linear(xn, attn.query_proj), m @ np_(attn.key_proj.weight).T, linear(m, attn.value_proj)
        hd = d // 2
        o = np.concatenate([softmax(qq[:, h * hd:(h + 1) * hd] @ kk[:, h * hd:(h + 1) * hd].T / math.sqrt(hd))
                            @ vv[:, h * hd:(h + 1) * hd] for h in range(2)], 1)
        x = x + linear(o, attn.out_proj)
        x = x + mlp(layer_norm(x, layer.norm2), layer.mlp)
        want = (layer_norm(x, head.norm) * np_(head.weight)).sum(1) + np_(head.bias)
        np.testing.assert_allclose(got[i], want, atol=1e-6)


def test_divided_attention_matches_loops() -> None:
    """Temporal attention = per-patch attention over frames; spatial = per-frame attention with the class token."""
    b, f, p, w = 2, 3, 4, 8
    block = DividedSTBlock(w, 2, 2.0, 0.0, f, p).double().eval()
    x = torch.randn(b, f * p, w, dtype=torch.float64)
    got_t = block.temporal(x)
    for i in range(b):
        for patch in range(p):
            seq = x[i].view(f, p, w)[:, patch]
            torch.testing.assert_close(got_t[i].view(f, p, w)[:, patch], block.temporal_attn(seq[None])[0])
    xc = torch.randn(b, 1 + f * p, w, dtype=torch.float64)
    got_s = block.spatial(xc)
    for i in range(b):
        cls_outs = []
        for frame in range(f):
            seq = torch.cat([xc[i, :1], xc[i, 1:].view(f, p, w)[frame]])
            y = block.attn(seq[None])[0]
            torch.testing.assert_close(got_s[i, 1:].view(f, p, w)[frame], y[1:])
            cls_outs.append(y[0])
        torch.testing.assert_close(got_s[i, 0], torch.stack(cls_outs).mean(0))


def test_nwgm_attention_matches_direct() -> None:
    q, keys, values = torch.randn(2, 3, 8), torch.randn(5, 8), torch.randn(5, 4)
    prior = torch.tensor([0.1, 0.4, 0.0, 0.3, 0.2])
    got = nwgm_attention(q, keys, values, prior)
    for i in range(2):
        np.testing.assert_allclose(np_(got[i]), nwgm(np_(q[i]), np_(keys), np_(values), np_(prior)), atol=1e-5)


def test_kmeans_recovers_clusters_and_prior() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    sizes = [50, 30, 20]
    x = torch.cat([c + 0.1 * torch.randn(s, 2, generator=g) for c, s in zip(centres, sizes)])
    found, counts = kmeans(x, 3)
    nearest = torch.cdist(found, centres).argmin(1)
    assert sorted(nearest.tolist()) == [0, 1, 2]
    assert torch.cdist(found, centres).amin(1).max() < 0.1
    assert counts.tolist() == [float(sizes[i]) for i in nearest]


def test_unbuilt_dictionary_raises_clear_error() -> None:
    ich = ICH(ICHConfig(dict_size=4), 8)
    with pytest.raises(RuntimeError, match="dictionary is not built"):
        ich.adjust(torch.randn(1, 3, 8), torch.randn(1, 2, 8))


def test_dictionary_size_is_clamped_to_four_features_per_atom(caplog: pytest.LogCaptureFixture) -> None:
    """Asking for more strata than n / 4 features fits n // 4, warns once, and NWGM ignores the rest. Three well
    separated blobs of 4 points each: the 3 atoms are the blob means, each with prior 4/12."""
    from pcmci.model.dictionary import ConfounderDictionary

    dictionary = ConfounderDictionary(8, 4, "kmeans")
    centres = torch.tensor([[10.0, 0, 0, 0], [0, 10.0, 0, 0], [0, 0, 10.0, 0]])
    feats = (centres[:, None] + 0.1 * torch.randn(3, 4, 4)).reshape(12, 4)
    with caplog.at_level("WARNING"):
        dictionary.fit(feats)
        dictionary.fit(feats)
    assert sum("8 strata requested but only 12 features" in r.message for r in caplog.records) == 1
    atoms, prior = dictionary()
    assert (prior[3:] == 0).all()
    torch.testing.assert_close(prior[:3].double(), torch.full((3,), 1 / 3, dtype=torch.float64))
    torch.testing.assert_close(torch.sort(atoms[:3], 0).values, torch.sort(feats.view(3, 4, 4).mean(1), 0).values)
    with pytest.raises(ValueError, match="finite features"):
        dictionary.fit(torch.full((4, 4), float("nan")))
