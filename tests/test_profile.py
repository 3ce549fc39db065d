"""Profiler: exact FLOP count of the tiny preset against a hand count, handles vs torch's counter, the report
files and keys, the cross-check failure path, and the paper preset's parameter budget."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pcmci.cli import main
from pcmci.config import preset
from pcmci.kernels import sinkhorn as sk
from pcmci.model import build_model
from pcmci.profiling import profiler
from pcmci.profiling.analytic import clip_visual_macs, timesformer_macs
from pcmci.profiling.flops import fvcore_count, is_matmul_like, torch_count

C, A = 3, 2  # class and atomic-action texts of the tiny profile: L = 5 label texts


def _ln(*shape: int) -> int:
    return 5 * math.prod(shape)  # fvcore: affine LayerNorm = 5 FLOPs per element


def _linear(rows: int, n_in: int, n_out: int) -> int:
    return rows * n_in * n_out


def _hand_count() -> dict[str, int]:
    """MACs of one tiny clip (8 frames of 64^2, D=64, K=8 bases of width 8), written out op by op."""
    L, N, D, M = C + A, 8, 64, 32  # label texts, video tokens, joint dim, k-means strata (ICH and IVC)
    # CLIP image tower per frame: 16 patches + cls = 17 tokens, width 64, 2 layers, MLP 256
    block = 2 * _ln(17, 64) + 4 * _linear(17, 64, 64) + 2 * 17 * 17 * 64 + 2 * _linear(17, 64, 256)
    clip = 8 * (16 * 3 * 16 * 16 * 64 + 2 * _ln(17, 64) + 2 * block + 64 * 64)
    # TimeSformer: 8 frames x 16 patches = 128 tokens (+ cls), width 64, 2 divided space-time blocks
    temporal = _ln(128, 64) + 3 * _linear(128, 64, 64) + 16 * 2 * 8 * 8 * 64 + 2 * _linear(128, 64, 64)
    spatial = _ln(129, 64) + 4 * _linear(8 * 17, 64, 64) + 8 * 2 * 17 * 17 * 64
    mlp = _ln(129, 64) + 2 * _linear(129, 64, 256)
    video = 128 * 3 * 16 * 16 * 64 + 2 * (temporal + spatial + mlp) + _ln(129, 64) + _linear(8, 64, D)
    # ICH: S = T VP^T, Sinkhorn (50 iterations, 2 per iteration + plan), O VP; NWGM over 32 strata queried by
    # W_q T, keys W_k Z, values W_H Z; W_o; LN (the projection removing the clip's direction is elementwise)
    ich = (L * D * N + L * N * (2 * 50 + 1) + L * N * D + _linear(L, D, D)
           + 2 * _linear(M, D, D) + 2 * L * D * M + _linear(L, D, D) + _ln(L, D))
    # relation layer on X[n,D]: U, U', W; the fused op K*n*(n*(d+e)+e); W_O (d->D); LN; FFN 64->128->64; LN
    def relation_layer(n: int) -> int:
        return 3 * _linear(n, D, D) + 8 * n * (n * 16 + 8) + _linear(n, 8, D) + 2 * _ln(n, D) + 2 * _linear(n, D, 128)

    ici = relation_layer(L)
    transported = 2 * _linear(L, D, D) + 8 * L * L * 8 + N * D * L + 8 * N * L * L + 8 * N * L * N
    # (no G^V maps: they are computed only for the alignment loss, off by default)
    relate = relation_layer(N) + transported + _linear(N, D, D) + 8 * N * N * 8 + _linear(N, 8, D) + _ln(N, D)
    # mediator rows centred + LN without affine (4 per element); P(m|V) = softmax(W_a V' M^T); A M
    mediator = 4 * L * D + _linear(N, D, D) + 2 * N * L * D
    # NWGM over the 32 population strata queried by W_q V', keys W_k D_V, values W_v D_V; W_f [M^; V^] (2D -> D); LN
    ivc = relate + mediator + _linear(N, D, D) + 2 * _linear(M, D, D) + 2 * N * D * M + _linear(N, 2 * D, D) + _ln(N, D)
    cross = _linear(C, D, D) + _linear(N, D, 2 * D) + C * N * 2 * D + _linear(C, D, D)
    head = _ln(N, D) + 3 * _ln(C, D) + cross + 2 * _linear(C, D, 128)
    return {"clip_visual": clip, "timesformer": video, "ich": ich, "ici": ici, "ivc": ivc, "head": head}


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("profile")
    # ICH's `prior` adjustment reads the CLIP frames at inference, so every module and fused op runs
    rc = main(["--quiet", "profile", "tiny", "model.ich.adjust=prior", "--device", "cpu", "--classes", str(C),
               "--actions", str(A), "--warmup", "0", "--repeats", "1", "--out", str(out)])
    assert rc == 0
    return json.loads((out / "profile.json").read_text()), out


def test_tiny_flops_equal_hand_count(tiny_report: tuple[dict[str, Any], Path]) -> None:
    flops = tiny_report[0]["flops"]
    hand = _hand_count()
    assert flops["by_stage"] == hand
    inputs = 4 * (C + A + 8) * 64  # LN(T) and LN(V) (no affine weights: 4 per element) put the stage inputs on one scale
    assert flops["total"] == sum(hand.values()) + inputs == 47_579_720
    assert flops["by_module"]["other"] == inputs and flops["by_module"]["clip_text"] == 0


def test_no_skipped_matmul_and_cross_checks_pass(tiny_report: tuple[dict[str, Any], Path]) -> None:
    report = tiny_report[0]
    assert report["flops"]["skipped_matmul"] == []
    assert not any(is_matmul_like(s["op"]) for s in report["flops"]["skipped"])
    assert {"aten::gelu", "aten::softmax"} <= {s["op"] for s in report["flops"]["skipped"]}
    check = report["cross_check"]
    assert check["ok"]
    rows = {r["what"]: r for r in check["rows"]}
    assert rows["timesformer vs closed form"]["rel_diff"] == 0 and rows["clip_visual vs closed form"]["rel_diff"] == 0
    assert rows["timesformer vs FlopCounterMode/2"]["rel_diff"] == 0
    assert rows["clip_visual vs FlopCounterMode/2"]["rel_diff"] == 0
    # the fused ops' handles against the independent count of their unrolled reference math
    sinkhorn = rows["pcmci::log_sinkhorn vs its unrolled reference"]
    relation = rows["pcmci::relation vs its unrolled reference"]
    assert sinkhorn["rel_diff"] == relation["rel_diff"] == 0
    assert sinkhorn["reference"] == (C + A) * 8 * (2 * 50 + 1)  # one exp per entry per half-iteration, plus the plan
    assert relation["reference"] == 8 * (C + A) * ((C + A) * 16 + 8) + 8 * 8 * (8 * 16 + 8)  # ICI (N=L) + IVC (N=8)


def test_report_files_and_keys(tiny_report: tuple[dict[str, Any], Path]) -> None:
    report, out = tiny_report
    keys = {"name", "config", "inputs", "params", "flops", "cross_check", "budget", "comparison", "latency"}
    assert keys <= set(report)
    params = report["params"]
    assert set(params["by_module"]) == {"clip_visual", "clip_text", "timesformer", "label_texts", "ich", "ici", "ivc",
                                        "head"}
    assert params["total"] == sum(m["params"] for m in params["by_module"].values() if m["counted"])
    assert params["all"] == params["total"] + params["excluded"]["clip_text"]
    assert params["frozen"] == params["by_module"]["clip_visual"]["params"]
    assert params["by_module"]["label_texts"]["params"] == 0  # T is a frozen buffer unless model.learn_text
    assert {"total", "per_view", "views", "by_module", "by_stage", "by_operator", "skipped", "skipped_matmul"} <= set(
        report["flops"])
    lat = report["latency"]
    assert set(lat["inference"]["stages_ms"]) == {"clip_visual", "timesformer", "ich", "ici", "ivc", "head"}
    assert lat["inference"]["clips_per_s"] > 0 and lat["train_step"]["eager"]["clips_per_s"] > 0
    assert [r["source"] for r in report["comparison"]] == ["measured", "published", "published", "published"]
    assert report["budget"]["params"]["paper"] == 211e6 and report["budget"]["flops"]["paper"] == 650e9
    md = (out / "profile.md").read_text()
    assert "Comparison with published figures" in md and "1 FLOP = 1 multiply-add" in md
    for png in ("modules.png", "stages.png", "comparison.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_cross_check_failure_is_loud(tiny_report: tuple[dict[str, Any], Path], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    broken = json.loads(json.dumps(tiny_report[0]))
    broken["cross_check"]["rows"][0].update(rel_diff=0.1, ok=False)
    broken["cross_check"]["ok"] = False
    monkeypatch.setattr(profiler, "profile_model", lambda *a, **k: broken)
    with pytest.raises(RuntimeError, match="cross-check disagrees by more than 2%"):
        profiler.run_profile(preset("tiny"), profiler.ProfileOptions(), tmp_path)
    assert "**FAIL**" in (tmp_path / "profile.md").read_text()


def test_inflated_fused_op_count_fails_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    """Sinkhorn's fvcore handle and its FlopCounterMode formula both read ``_macs``: doubled, they still agree
    with each other (and every stage row), but not with the count of the unrolled reference -> exit 1."""
    macs = sk._macs
    monkeypatch.setattr(sk, "_macs", lambda shape, iters: 2 * macs(shape, iters))
    rc = main(["--quiet", "profile", "tiny", "model.ich.adjust=prior", "--device", "cpu", "--classes", str(C),
               "--actions", str(A), "--warmup", "0", "--repeats", "1", "--no-train", "--out", str(tmp_path)])
    assert rc == 1
    err = capsys.readouterr().err
    assert "pcmci::log_sinkhorn vs its unrolled reference: 100.00%" in err and "ich vs" not in err
    report = json.loads((tmp_path / "profile.json").read_text())
    assert [r["what"] for r in report["cross_check"]["rows"] if not r["ok"]] == [
        "pcmci::log_sinkhorn vs its unrolled reference"]


class _Ops(nn.Module):
    """Broadcast matmul, a 3-operand einsum, SDPA and both nn.MultiheadAttention paths."""

    def __init__(self) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(16, 4, batch_first=True)

    def forward(self, x: torch.Tensor, y: torch.Tensor, g: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        pi = torch.softmax(x @ y.transpose(1, 2), -1)[:, None]  # [B,1,N,L]
        t = pi @ g  # broadcast over the K maps: [B,K,N,L]
        r = torch.einsum("k,bknl,bkle->bne", p, t, y.view(2, 5, 4, 4).transpose(1, 2))
        a = F.scaled_dot_product_attention(x.view(2, 6, 2, 8).transpose(1, 2), y.view(2, 5, 2, 8).transpose(1, 2),
                                           y.view(2, 5, 2, 8).transpose(1, 2))
        s = self.self_attn(x, x, x, need_weights=False)[0]
        c = self.cross_attn(x, y, y, need_weights=False)[0]
        return r.sum() + a.sum() + s.sum() + c.sum()


def test_handles_match_torch_counter() -> None:
    model = _Ops().eval()
    inputs = (torch.rand(2, 6, 16), torch.rand(2, 5, 16), torch.rand(2, 4, 5, 5), torch.rand(4))
    count = fvcore_count(model, inputs)
    ops = count.by_operator
    assert ops["matmul"] == 2 * 6 * 16 * 5 + 2 * 4 * 6 * 5 * 5
    assert ops["einsum"] == 4 * 2 * 6 * 5 * 4
    assert ops["scaled_dot_product_attention"] == 2 * (2 * 6 * 5 * 2 * 16)  # the direct call and cross_attn
    assert ops["_native_multi_head_attention"] == 2 * (4 * 6 * 16 * 16 + 2 * 6 * 6 * 16)
    assert count.skipped_matmul == []
    assert count.torch_comparable == torch_count(model, inputs)[""]


def test_motion_embedding_adds_what_torch_flop_counter_counts() -> None:
    """The closed form's extra term for the motion embedding (a second patch embedding, of the frame differences)
    against torch's FlopCounterMode (2 FLOPs per multiply-add; it leaves out the norms, which the two models share)."""
    from torch.utils.flop_counter import FlopCounterMode

    from pcmci.config import TimeSformerConfig
    from pcmci.model.timesformer import TimeSformer

    def counted(cfg: TimeSformerConfig) -> int:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            TimeSformer(cfg, out_dim=16).eval()(torch.rand(3, 4, 3, 32, 32))
        return counter.get_total_flops()

    plain = TimeSformerConfig(img_size=32, patch_size=8, frames=4, width=32, depth=2, heads=2)
    motion = TimeSformerConfig(**{**plain.__dict__, "motion_embed": True})
    added = timesformer_macs(motion, 16, clips=3) - timesformer_macs(plain, 16, clips=3)
    assert added == 3 * 4 * 16 * 3 * 8 * 8 * 32  # clips x frames x patches x (3 x 8 x 8 inputs) x width
    assert 2 * added == counted(motion) - counted(plain)


def test_paper_preset_parameter_budget() -> None:
    cfg = preset("paper")
    params = profiler.param_report(build_model(cfg.model, [f"activity {i}" for i in range(10)],
                                               [f"action {i}" for i in range(48)]))
    assert abs(params["total"] / 211e6 - 1) <= 0.05
    assert params["by_module"]["clip_visual"]["params"] == 86_192_640
    assert params["excluded"]["clip_text"] == pytest.approx(63.4e6, rel=0.01)
    assert params["by_module"]["timesformer"]["params"] == pytest.approx(121.4e6, rel=0.01)
    per_view = timesformer_macs(cfg.model.timesformer, 512) + clip_visual_macs(224, 16, 768, 12, 4.0, 512, images=8)
    assert timesformer_macs(cfg.model.timesformer, 512) == pytest.approx(196e9, rel=0.01)
    assert clip_visual_macs(224, 16, 768, 12, 4.0, 512) == pytest.approx(17.6e9, rel=0.01)
    assert abs(cfg.data.test_views * per_view / 650e9 - 1) <= 0.05


def test_default_model_runs_no_clip_frames_at_inference_and_reports_the_fitting_cost() -> None:
    """``model.ich.adjust=population`` (default): fvcore counts 0 FLOPs in CLIP's image tower and in the Sinkhorn op
    at inference (nothing computed and unused); the fitting pass counts the tower's closed form and the Sinkhorn."""
    from pcmci.profiling.flops import fvcore_count
    from pcmci.profiling.profiler import _DictionaryFeatures

    torch.manual_seed(0)
    cfg = preset("tiny").model
    model = build_model(cfg, [f"c{i}" for i in range(C)], [f"a{i}" for i in range(A)]).eval()
    video = torch.rand(1, 8, 3, 64, 64)
    model.build_dictionaries([torch.rand(2, 8, 3, 64, 64)])
    count = fvcore_count(model, (video,))
    assert count.by_module.get("clip.model.visual", 0) == 0 and count.by_operator.get("log_sinkhorn", 0) == 0
    fitting = fvcore_count(_DictionaryFeatures(model), (video,))
    assert fitting.by_module["model.clip.model.visual"] == clip_visual_macs(64, 16, 64, 2, 4.0, 64, images=8)
    assert fitting.by_operator["log_sinkhorn"] == (C + A) * 8 * (2 * 50 + 1)


@pytest.mark.parametrize("option, value, message", [
    ("--batch", "1000000000000", "profile: batch must be at most 4096, got 1000000000000"),
    ("--views", "100000", "profile: views must be at most 64, got 100000"),
    ("--classes", "10000001", "profile: classes must be at most 10000, got 10000001"),
    ("--views", "0", "profile: views must be at least 1, got 0"),
    ("--actions", "-1", "profile: actions must be at least 0, got -1"),
    ("--warmup", "-2", "profile: warmup must be at least 0, got -2"),
])
def test_a_size_out_of_range_is_refused_before_any_allocation(option: str, value: str, message: str, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    """``--batch 1e12`` reached the allocator (its raw error, or minutes of swapping); ``--views 0``, ``--actions -1``
    and ``--warmup -2`` each said "warmup and actions must be >= 0 and views >= 1": one line naming the option."""
    assert main(["--quiet", "profile", "tiny", option, value, "--device", "cpu", "--out", str(tmp_path)]) == 1
    assert capsys.readouterr().err == f"pcmci: error: {message}\n"
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("argv, message", [
    (["--preset", ""], "config '' is neither a preset (tiny, paper, breakfast, coin, charades) nor a file"),
    ([""], "config '' is neither a preset (tiny, paper, breakfast, coin, charades) nor a file"),
    (["--preset", "", "tiny"], "give either --preset NAME or CONFIG, not both"),
])
def test_an_empty_config_name_is_refused_not_read_as_tiny(argv: list[str], message: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    """Found by a bug hunt: ``--preset ''`` or ``''`` (an unset variable) profiled the tiny preset instead, and
    ``--preset ''`` beside a CONFIG was not named as a second config."""
    assert main(["--quiet", "profile", *argv, "--device", "cpu", "--out", str(tmp_path)]) == 1
    assert capsys.readouterr().err == f"pcmci: error: {message}\n"
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_it_is_refused_before_the_model_is_built(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a bug hunt: ``--device cuda`` on a machine without CUDA built the model, fitted its dictionaries and
    counted its FLOPs (minutes for the paper preset) before the timing named the device."""
    monkeypatch.setattr(profiler, "build_model", lambda *_: pytest.fail("the model was built"))
    assert main(["--quiet", "profile", "tiny", "--device", "cuda", "--out", str(tmp_path)]) == 1
    assert capsys.readouterr().err.startswith("pcmci: error: device 'cuda' asked for, but CUDA is not available")
    assert not any(tmp_path.iterdir())



@pytest.mark.parametrize("preset", [["--preset", "tiny"], []], ids=["--preset tiny", "default"])
def test_overrides_without_config_are_read_as_overrides(preset: list[str], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a bug hunt: ``--preset tiny model.stages=[ich]`` stopped with "give either --preset NAME or CONFIG",
    ``model.stages=[ich]`` alone with "config 'model.stages=[ich]' is neither a preset nor a file" (argparse reads
    the first override as CONFIG)."""
    seen = []

    def stop(cfg: Any, *_: object, name: str) -> None:  # what matters is the config it was given
        seen.append((cfg, name))
        raise KeyboardInterrupt

    monkeypatch.setattr("pcmci.profiling.run_profile", stop)
    assert main(["--quiet", "profile", *preset, "model.stages=[ich]", "data.test_views=2", "--out",
                 str(tmp_path)]) == 130
    ((cfg, name),) = seen
    assert cfg.model.stages == ["ich"] and cfg.data.test_views == 2 and name == "tiny"


def test_an_out_holding_a_profile_is_refused_unless_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a bug hunt: a second profile into the default runs/profile (``pcmci profile`` after ``pcmci profile
    --preset paper``) replaced the first one's report without asking."""
    (tmp_path / "profile.json").write_text("{}")
    started = []

    def stop(*_: object, **__: object) -> None:
        started.append(True)
        raise KeyboardInterrupt

    monkeypatch.setattr("pcmci.profiling.run_profile", stop)
    assert main(["--quiet", "profile", "tiny", "--device", "cpu", "--out", str(tmp_path)]) == 1
    assert capsys.readouterr().err == (f"pcmci: error: {tmp_path} holds a report already (profile.json); pass another "
                                       "--out, or --overwrite to replace it\n")
    assert (tmp_path / "profile.json").read_text() == "{}" and not started
    assert main(["--quiet", "profile", "tiny", "--device", "cpu", "--out", str(tmp_path), "--overwrite"]) == 130
    assert started
