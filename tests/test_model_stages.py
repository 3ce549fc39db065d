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


@pytest.mark.filterwarnings("ignore:Sinkhorn did not converge")
@pytest.mark.parametrize("proxy", ["overalign", "plan", "similarity"])
def test_ich_matches_equation(proxy: str) -> None:
    b, l, f, d, tau = 2, 5, 4, 16, 0.07
    ich = ICH(ICHConfig(dict_size=6, proxy=proxy, iters=200, eps=0.1), d, tau).double()
    fit_dictionary(ich, d, 6)
    t, vp = torch.randn(b, l, d, dtype=torch.float64), torch.randn(b, f, d, dtype=torch.float64)
    got = np_(ich(t, vp))
    z, prior = np_(ich.dictionary.atoms), np_(ich.dictionary.prior)
    for i in range(b):
        tn = np_(t[i]) / np.linalg.norm(np_(t[i]), axis=1, keepdims=True)
        vn = np_(vp[i]) / np.linalg.norm(np_(vp[i]), axis=1, keepdims=True)
        s = tn @ vn.T
        q = ot.sinkhorn(np.full(l, 1 / l), np.full(f, 1 / f), 1 - s, 0.1, method="sinkhorn_log",
                        numItermax=200, stopThr=0)
        if proxy == "similarity":
            weights = s
        elif proxy == "plan":
            weights = l * q
        else:
            over = np.maximum(softmax(s / tau) - l * q, 0)
            weights = over / np.maximum(over.sum(1, keepdims=True), 1e-6)
        h = linear(weights @ np_(vp[i]), ich.w_h)
        h_hat = nwgm(linear(np_(t[i]) + h, ich.w_q), linear(z, ich.w_k), linear(z, ich.w_h), prior)
        want = layer_norm(np_(t[i]) + linear(np.concatenate([np_(t[i]), h_hat], 1), ich.w_o), ich.norm)
        np.testing.assert_allclose(got[i], want, atol=1e-6)


def relation_layer_direct(x: np.ndarray, layer: torch.nn.Module) -> np.ndarray:
    k_bases, dk = layer.bases, x.shape[1] // layer.bases
    prior = softmax(np_(layer.omega))
    q, k, v = linear(x, layer.u), linear(x, layer.u_prime), linear(x, layer.w)
    r = np.zeros((x.shape[0], dk))
    for j in range(k_bases):
        sl = slice(j * dk, (j + 1) * dk)
        g = softmax(q[:, sl] @ k[:, sl].T / math.sqrt(dk))
        r += prior[j] * g @ v[:, sl]
    y = layer_norm(x + linear(r, layer.w_o), layer.norm1)
    return layer_norm(y + mlp(y, layer.ffn), layer.norm2)


def test_ici_matches_equation() -> None:
    b, l, d = 2, 6, 16
    ici = ICI(ICIConfig(bases=4, layers=2), d).double()
    with torch.no_grad():
        for layer in ici.layers:
            layer.omega.normal_()
    t = torch.randn(b, l, d, dtype=torch.float64)
    got = np_(ici(t))
    for i in range(b):
        want = np_(t[i])
        for layer in ici.layers:
            want = relation_layer_direct(want, layer)
        np.testing.assert_allclose(got[i], want, atol=1e-6)


def test_ivc_matches_equation() -> None:
    b, n, l, d, kb = 2, 5, 4, 16, 4
    ivc = IVC(IVCConfig(bases=kb, dict_size=6, align_weight=0.5), d, heads=2, mlp_ratio=2.0).double()
    fit_dictionary(ivc, d, 6)
    with torch.no_grad():
        ivc.m_omega.normal_()
        ivc.video_relation.omega.normal_()
    v, m = torch.randn(b, n, d, dtype=torch.float64), torch.randn(b, l, d, dtype=torch.float64)
    got, align = ivc(v, m)
    attn = ivc.mediator_attn
    w_in, b_in = np_(attn.in_proj_weight), np_(attn.in_proj_bias)
    dk = d // kb
    aligns = []
    for i in range(b):
        x, mm = np_(v[i]), np_(m[i])
        v1 = relation_layer_direct(x, ivc.video_relation)
        qv, kv = linear(x, ivc.video_relation.u), linear(x, ivc.video_relation.u_prime)
        pm = softmax(np_(ivc.m_omega))
        qm, km, vv = linear(mm, ivc.m_u), linear(mm, ivc.m_u_prime), linear(v1, ivc.v_w)
        pi = softmax(v1 @ mm.T / math.sqrt(d))
        r = np.zeros((n, dk))
        for j in range(kb):
            sl = slice(j * dk, (j + 1) * dk)
            g_m = softmax(qm[:, sl] @ km[:, sl].T / math.sqrt(dk))
            g = pi @ g_m @ pi.T
            g = g / g.sum(1, keepdims=True)
            r += pm[j] * g @ vv[:, sl]
            g_v = softmax(qv[:, sl] @ kv[:, sl].T / math.sqrt(dk))
            aligns.append(((g_v - g) ** 2).sum() / n**2)
        vp = layer_norm(v1 + linear(r, ivc.w_o), ivc.norm_relate)
        heads, hd = attn.num_heads, d // attn.num_heads
        q_, k_, v_ = vp @ w_in[:d].T + b_in[:d], mm @ w_in[d:2 * d].T + b_in[d:2 * d], mm @ w_in[2 * d:].T + b_in[2 * d:]
        o = np.concatenate([softmax(q_[:, h * hd:(h + 1) * hd] @ k_[:, h * hd:(h + 1) * hd].T / math.sqrt(hd))
                            @ v_[:, h * hd:(h + 1) * hd] for h in range(heads)], 1)
        m_hat = linear(o, attn.out_proj)
        z, prior = np_(ivc.dictionary.atoms), np_(ivc.dictionary.prior)
        v_hat = nwgm(linear(vp, ivc.w_q), linear(z, ivc.w_k), linear(z, ivc.w_v), prior)
        want = layer_norm(vp + linear(np.concatenate([m_hat, v_hat], 1), ivc.w_f), ivc.norm)
        np.testing.assert_allclose(np_(got[i]), want, atol=1e-6)
    np.testing.assert_allclose(float(align.detach()), np.mean(aligns), rtol=1e-6)


def test_head_matches_equation() -> None:
    b, c, n, d = 2, 3, 5, 16
    head = CrossAttentionHead(HeadConfig(layers=1, heads=2), d, c).double()
    q, mem = torch.randn(b, c, d, dtype=torch.float64), torch.randn(b, n, d, dtype=torch.float64)
    got = np_(head(q, mem))
    layer = head.layers[0]
    w_in, b_in = np_(layer.attn.in_proj_weight), np_(layer.attn.in_proj_bias)
    for i in range(b):
        x, m = np_(q[i]), layer_norm(np_(mem[i]), layer.norm_mem)
        xn = layer_norm(x, layer.norm_q)
        qq, kk, vv = xn @ w_in[:d].T + b_in[:d], m @ w_in[d:2 * d].T + b_in[d:2 * d], m @ w_in[2 * d:].T + b_in[2 * d:]
        hd = d // 2
        o = np.concatenate([softmax(qq[:, h * hd:(h + 1) * hd] @ kk[:, h * hd:(h + 1) * hd].T / math.sqrt(hd))
                            @ vv[:, h * hd:(h + 1) * hd] for h in range(2)], 1)
        x = x + linear(o, layer.attn.out_proj)
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
    ich = ICH(ICHConfig(dict_size=4), 8, 0.07)
    with pytest.raises(RuntimeError, match="dictionary is not built"):
        ich(torch.randn(1, 3, 8), torch.randn(1, 2, 8))
