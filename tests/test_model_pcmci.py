"""The assembled model: gradients, every stage subset and order, dictionaries, loading of pretrained weights."""
from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path
import logging

import open_clip
import pytest
import timm
import torch
from conftest import ACTIONS, CLASSES
from former_names import VARIANTS, with_former_names

from pcmci.config import ClipConfig, ConfigError, TimeSformerConfig, load_config, preset, to_dict
from pcmci.model import PCMCI, build_model
from pcmci.model.clip import FrozenCLIP
from pcmci.model.timesformer import TimeSformer

STAGES = ["ich", "ici", "ivc"]
ALL_ORDERS = [list(p) for r in range(4) for c in itertools.combinations(STAGES, r) for p in itertools.permutations(c)]


def test_every_trainable_parameter_gets_a_gradient_and_clip_none(tiny_model) -> None:
    fitted = tiny_model(aux_weight=0.5)
    cfg = copy.deepcopy(fitted.cfg)
    cfg.ivc.align_weight = 0.1  # modules take their options when built
    model = build_model(cfg, fitted.classes, fitted.actions)
    model.load_state_dict(fitted.state_dict())  # its fitted dictionaries
    # Layers that start at zero (TimeSformer's temporal_fc, IVC's residual outputs) pass no gradient to what feeds
    # them at init; one step of training moves them, as this does.
    ivc = model.ivc
    zero_init = [block.temporal_fc for block in model.video.blocks] + [
        ivc.out_proj, ivc.fuse_proj, ivc.video_relation.out_proj, ivc.video_relation.ffn.fc2]
    with torch.no_grad():
        for layer in zero_init:
            layer.weight.normal_(0, 0.02)
    x = torch.rand(3, 8, 3, 64, 64)
    out = model(x)
    assert out["logits"].shape == (3, 3) and out["aux_logits"].shape == (3, 3)
    model.loss(out, torch.tensor([0, 1, 2]), torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 1, 1]])).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) > 50
    assert [n for n, p in trainable if p.grad is None or not p.grad.abs().sum()] == []
    clip_params = list(model.clip.parameters())
    assert clip_params and all(not p.requires_grad and p.grad is None for p in clip_params)


@pytest.mark.parametrize("stages", ALL_ORDERS, ids=lambda s: "-".join(s) or "baseline")
def test_stage_subsets_and_orders_forward_backward(tiny_model, stages: list[str]) -> None:
    model = tiny_model(stages)
    assert model.order == stages
    out = model(torch.rand(2, 8, 3, 64, 64))
    assert out["logits"].shape == (2, 3) and torch.isfinite(out["logits"]).all()
    model.loss(out, torch.tensor([0, 2])).backward()
    assert model.video.proj.weight.grad is not None
    for name in STAGES:
        stage = getattr(model, name)
        assert (stage is not None) == (name in stages)


def test_stage_order_changes_the_computation(tiny_model) -> None:
    x = torch.rand(2, 8, 3, 64, 64)
    a = tiny_model(["ich", "ici"])
    b = tiny_model(["ici", "ich"])
    b.load_state_dict(a.state_dict())
    b.build_dictionaries([x])
    a.build_dictionaries([x])
    b.ich.dictionary.load_state_dict(a.ich.dictionary.state_dict())
    assert not torch.allclose(a(x)["logits"], b(x)["logits"])


def test_dictionaries_are_buffers_saved_with_the_model(tiny_model) -> None:
    model = tiny_model()
    state = model.state_dict()
    assert {"ich.dictionary.atoms", "ich.dictionary.prior", "ivc.dictionary.atoms", "ivc.dictionary.prior"} <= set(state)
    assert torch.isclose(state["ich.dictionary.prior"].sum(), torch.tensor(1.0))
    fresh = build_model(model.cfg, model.classes, model.actions)
    assert not fresh.dictionaries_ready
    fresh.load_state_dict(state)
    assert fresh.dictionaries_ready
    x = torch.rand(2, 8, 3, 64, 64)
    torch.testing.assert_close(fresh.eval()(x)["logits"], model.eval()(x)["logits"])


def test_learned_dictionary_needs_no_fitting() -> None:
    cfg = preset("tiny").model
    cfg.ich.dictionary = cfg.ivc.dictionary = "learned"
    model = build_model(cfg, ["a", "b"])
    assert model.dictionaries_ready
    assert model(torch.rand(1, 8, 3, 64, 64))["logits"].shape == (1, 2)


def test_wrong_input_shape_is_a_clear_error(tiny_model) -> None:
    model = tiny_model()
    with pytest.raises(ValueError, match=r"expects frames \[B,F,3,H,W\]"):
        model(torch.rand(2, 3, 64, 64))
    with pytest.raises(ValueError, match=r"TimeSformer expects frames \[B,8,3,64,64\]"):
        model(torch.rand(2, 5, 3, 64, 64))


def test_text_is_frozen_by_default_and_learnable_on_request(tiny_model) -> None:
    model = tiny_model()
    assert "text" in dict(model.named_buffers()) and "text" not in dict(model.named_parameters())
    cfg = preset("tiny").model
    cfg.learn_text = True
    cfg.stages = ["ici"]
    learned = build_model(cfg, ["a", "b"], [])
    assert learned.text.requires_grad
    learned.loss(learned(torch.rand(2, 8, 3, 64, 64)), torch.tensor([0, 1])).backward()
    assert learned.text.grad is not None and learned.text.grad.abs().sum() > 0


def test_stages_see_inputs_on_one_scale(tiny_model) -> None:
    """CLIP texts (norm 1) and TimeSformer tokens enter the stages LayerNorm'd: zero mean, unit variance."""
    model = tiny_model()
    state = model.initial_state(torch.rand(2, 8, 3, 64, 64))
    for x in (state.texts, state.video):
        torch.testing.assert_close(x.mean(-1), torch.zeros(x.shape[:-1]), atol=1e-5, rtol=0)
        torch.testing.assert_close(x.var(-1, unbiased=False), torch.ones(x.shape[:-1]), atol=1e-3, rtol=0)


def test_static_input_is_an_ablation_switch_off_by_default(tiny_model) -> None:
    """A still image added to every frame changes the video tokens of the default full model (nothing is assumed
    about what stands still); only the ablation switch ``model.ivc.static_input`` takes the mean frame out."""
    frames = torch.rand(2, 8, 3, 64, 64)
    still = torch.rand(2, 1, 3, 64, 64)
    with torch.no_grad():
        full = tiny_model().eval()
        assert not full.cfg.ivc.static_input and not full.cfg.ivc.static
        assert (full.encode_video(frames + still) - full.encode_video(frames)).abs().max() > 1e-2
        cfg = copy.deepcopy(full.cfg)
        cfg.ivc.static_input = True
        static = build_model(cfg, full.classes, full.actions).eval()
        torch.testing.assert_close(static.encode_video(frames + still), static.encode_video(frames), atol=1e-5, rtol=0)


def _clip_sees_another_background(model: PCMCI, monkeypatch: pytest.MonkeyPatch, background: torch.Tensor) -> None:
    """From now on CLIP sees every frame blended half-half with ``background``; the TimeSformer's input is untouched."""
    encode = model.clip.encode_frames
    monkeypatch.setattr(model.clip, "encode_frames", lambda frames: encode(0.5 * frames + 0.5 * background))


@pytest.mark.slow
def test_leak_the_background_clip_sees_does_not_reach_the_logits(tiny_run: Path, monkeypatch) -> None:
    """Leak test on a trained checkpoint (the default full model): changing only what CLIP sees of the scene
    leaves every logit as it was — bit for bit, since no stage reads the CLIP frames at inference. The same change
    moves the logits of ``model.ich.adjust=prior`` (its ``t - <t,u>u`` reads the clip), so the test can fail."""
    from pcmci.engine.evaluate import load_model

    torch.manual_seed(1)
    frames, background = torch.rand(4, 8, 3, 64, 64), torch.rand(4, 1, 3, 64, 64)
    model, cfg = load_model(tiny_run / "checkpoint.pt", torch.device("cpu"))
    assert cfg.model.ich.adjust == "population" and "ich" in model.order
    with torch.no_grad():
        before = model(frames)["logits"]
        _clip_sees_another_background(model, monkeypatch, background)
        assert torch.equal(model(frames)["logits"], before)

    prior = build_model(load_config("tiny", ["model.ich.adjust=prior"]).model, ["a", "b", "c"], ["x"])
    prior.build_dictionaries([torch.rand(4, 8, 3, 64, 64)])
    prior.eval()
    with torch.no_grad():
        before = prior(frames)["logits"]
        _clip_sees_another_background(prior, monkeypatch, background)
        assert (prior(frames)["logits"] - before).abs().max() > 1e-4


def test_population_ich_runs_without_the_clip_frames(monkeypatch) -> None:
    """``model.ich.adjust=population`` (the default) reads the CLIP frames only to fit its strata, never in an
    evaluation ``forward``."""
    torch.manual_seed(0)
    cfg = load_config("tiny").model
    assert cfg.ich.adjust == "population"
    model = build_model(cfg, ["a", "b"], ["x"])
    model.build_dictionaries([torch.rand(2, 8, 3, 64, 64)])

    def no_frames(frames: torch.Tensor) -> torch.Tensor:
        raise AssertionError("forward read the CLIP frames")

    monkeypatch.setattr(model.clip, "encode_frames", no_frames)
    assert model.eval()(torch.rand(2, 8, 3, 64, 64))["logits"].shape == (2, 2)


def test_text_is_initialised_from_clip_text_embeddings(tiny_model) -> None:
    model = tiny_model()
    want = model.clip.encode_text(model.classes + model.actions)
    torch.testing.assert_close(model.text.detach(), want)
    torch.testing.assert_close(model.text.norm(dim=-1), torch.ones(len(want)))


def test_clip_loads_local_weights(tmp_path) -> None:
    source = open_clip.create_model("pcmci-tiny-clip")
    path = tmp_path / "tiny_clip.pt"
    torch.save(source.state_dict(), path)
    clip = FrozenCLIP(ClipConfig(name="pcmci-tiny-clip", pretrained=str(path)))
    for (name, a), b in zip(source.state_dict().items(), clip.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_clip_absent_weights_warn_once_and_use_random_init(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        clip = FrozenCLIP(ClipConfig(name="ViT-B-32", pretrained="openai", cache_dir="/nonexistent-cache"))
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "RANDOM CLIP weights" in warnings[0].getMessage()
    assert clip.embed_dim == 512


def test_clip_unknown_tag_and_model_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="model.clip.pretrained='nope': unknown open_clip pretrained tag"):
        FrozenCLIP(ClipConfig(name="ViT-B-32", pretrained="nope"))
    with pytest.raises(ConfigError, match="model.clip.name='ViT-Q-99': unknown open_clip model"):
        FrozenCLIP(ClipConfig(name="ViT-Q-99"))


def test_clip_embeddings_are_normalised_and_frozen() -> None:
    clip = FrozenCLIP(ClipConfig())
    clip.train()
    assert not clip.model.training
    vp = clip.encode_frames(torch.rand(2, 3, 3, 64, 64))
    assert vp.shape == (2, 3, 64)
    torch.testing.assert_close(vp.norm(dim=-1), torch.ones(2, 3))
    assert clip.encode_text(["a", "b"]) is clip.encode_text(["a", "b"])


def test_timesformer_inflates_a_timm_vit_checkpoint(tmp_path) -> None:
    vit = timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=16, embed_dim=32, depth=2,
                                                           num_heads=2, num_classes=5)
    path = tmp_path / "vit.pt"
    torch.save(vit.state_dict(), path)
    cfg = TimeSformerConfig(img_size=32, patch_size=16, frames=4, width=32, depth=2, heads=2, pretrained=str(path))
    model = TimeSformer(cfg, out_dim=16)
    torch.testing.assert_close(model.blocks[1].attn.qkv.weight, vit.blocks[1].attn.qkv.weight)
    torch.testing.assert_close(model.blocks[1].temporal_attn.qkv.weight, vit.blocks[1].attn.qkv.weight)
    torch.testing.assert_close(model.pos_embed, vit.pos_embed)
    assert model.blocks[0].temporal_fc.weight.abs().sum() == 0
    assert model(torch.rand(2, 4, 3, 32, 32)).shape == (2, 4, 16)


def test_timesformer_motion_embedding_matches_a_float64_patch_loop(tmp_path) -> None:
    """``x_t = E(f_t) + E_d(f_{t+1} - f_t)``: the first layer's input tokens against a float64 loop over frames and
    patches (each patch flattened channel-major, as a stride-p convolution reads it). Zero at init, the model equals
    the paper's TimeSformer; pretrained weights load with ``E_d`` left new."""
    cfg = TimeSformerConfig(img_size=32, patch_size=8, frames=4, width=16, depth=1, heads=2, motion_embed=True)
    model = TimeSformer(cfg, out_dim=8).double()
    plain = TimeSformer(TimeSformerConfig(img_size=32, patch_size=8, frames=4, width=16, depth=1, heads=2),
                        out_dim=8).double()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("motion_embed")})
    frames = torch.rand(2, 4, 3, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(model(frames), plain(frames), rtol=0, atol=0)
    with torch.no_grad():
        model.motion_embed.proj.weight.normal_()
        model.motion_embed.proj.bias.normal_()
    captured = {}
    model.blocks[0].register_forward_pre_hook(lambda module, args: captured.setdefault("x", args[0]))
    model(frames)
    mean, std = float(model.mean[0, 0]), float(model.std[0, 0])  # the model's float32 constants, read back
    e_w, e_b = model.patch_embed.proj.weight.flatten(1), model.patch_embed.proj.bias
    d_w, d_b = model.motion_embed.proj.weight.flatten(1), model.motion_embed.proj.bias
    for b in range(2):
        for t in range(4):
            nxt = frames[b, t + 1] if t < 3 else frames[b, t]  # the last frame's difference is zero
            for i in range(4):
                for j in range(4):
                    cut = (slice(None), slice(8 * i, 8 * i + 8), slice(8 * j, 8 * j + 8))
                    patch, step = frames[b, t][cut], nxt[cut] - frames[b, t][cut]
                    want = (e_w @ ((patch - mean) / std).flatten() + e_b + d_w @ (step / std).flatten() + d_b
                            + model.pos_embed[0, 1 + 4 * i + j] + model.time_embed[0, t])
                    torch.testing.assert_close(captured["x"][b, 1 + 16 * t + 4 * i + j], want, rtol=1e-12, atol=1e-12)
    vit = timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=1,
                                                           num_heads=2, num_classes=5)
    torch.save(vit.state_dict(), tmp_path / "vit.pt")
    loaded = TimeSformer(TimeSformerConfig(**{**cfg.__dict__, "pretrained": str(tmp_path / "vit.pt")}), out_dim=8)
    assert loaded.motion_embed.proj.weight.abs().sum() == 0
    torch.testing.assert_close(loaded.patch_embed.proj.weight, vit.patch_embed.proj.weight)


def test_timesformer_rejects_a_mismatched_checkpoint(tmp_path) -> None:
    vit = timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=16, embed_dim=48, depth=1, num_heads=2)
    torch.save(vit.state_dict(), tmp_path / "vit.pt")
    cfg = TimeSformerConfig(img_size=32, frames=4, width=32, depth=1, heads=2, pretrained=str(tmp_path / "vit.pt"))
    with pytest.raises(ValueError, match="has shape"):
        TimeSformer(cfg, out_dim=16)


def test_config_errors_name_the_cause(tmp_path) -> None:
    with pytest.raises(ConfigError, match="unknown config key 'optim.lrr'"):
        load_config("tiny", ["optim.lrr=0.1"])
    with pytest.raises(ConfigError, match=r"unknown stage name\(s\) \['icx'\]"):
        load_config("tiny", ["model.stages=[ich,icx]"])
    with pytest.raises(ConfigError, match="expects an integer"):
        load_config("tiny", ["optim.epochs=many"])
    with pytest.raises(ConfigError, match="'optim.lr' expects a number, got 'fast'"):
        load_config("tiny", ["optim.lr=fast"])
    with pytest.raises(ConfigError, match="unknown preset|neither a preset"):
        load_config("nonexistent-preset")
    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: tiny\nmodel:\n  head:\n    layerz: 3\n")
    with pytest.raises(ConfigError, match="unknown config key 'model.head.layerz'"):
        load_config(bad)


def test_config_yaml_and_overrides_compose(tmp_path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("preset: tiny\noptim:\n  lr: 0.01\n  weight_decay: 5e-2\nmodel:\n  stages: [ivc, ich]\n")
    cfg = load_config(path, ["optim.epochs=3", "model.ich.ot_grad=false"])
    assert cfg.optim.lr == 0.01 and cfg.optim.epochs == 3 and cfg.optim.weight_decay == 0.05
    assert load_config("tiny", ["optim.lr=2e-3"]).optim.lr == 0.002  # YAML 1.1 reads "2e-3" as a string
    assert cfg.model.stages == ["ivc", "ich"] and cfg.model.ich.ot_grad is False
    assert load_config("paper").model.timesformer.width == 768


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_state_dict_with_the_former_stage_names_loads_with_identical_outputs(variant: str, tmp_path: Path) -> None:
    """Weights saved before the stages' layers got role names (``ivc.w_q`` -> ``ivc.query_proj`` ...) load, by
    ``load_state_dict`` and from an export's ``model.safetensors``, into a model that computes the same logits."""
    from safetensors.torch import save_file

    cfg = load_config("tiny", VARIANTS[variant])
    torch.manual_seed(0)
    model = build_model(cfg.model, CLASSES, ACTIONS).eval()
    model.build_dictionaries([torch.rand(4, 8, 3, 64, 64) for _ in range(2)])
    former = with_former_names(model.state_dict(), variant)
    assert {"ich.w_q.weight", "ici.layers.0.omega", "ivc.m_u.weight", "head.layers.0.attn.q.weight"} <= (
        set(former) - set(model.state_dict()))
    frames = torch.rand(2, 8, 3, 64, 64)
    fresh = build_model(cfg.model, CLASSES, ACTIONS).eval()
    fresh.load_state_dict(former)
    save_file({k: v.contiguous() for k, v in former.items()}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(to_dict(cfg)))
    (tmp_path / "labels.json").write_text(json.dumps({"classes": CLASSES, "actions": ACTIONS}))
    exported = PCMCI.from_pretrained(tmp_path)
    with torch.no_grad():
        want = model(frames)["logits"]
        assert torch.equal(fresh(frames)["logits"], want) and torch.equal(exported(frames)["logits"], want)
