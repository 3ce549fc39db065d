"""Foreign TimeSformer weights, verified numerically: a HF ``TimesformerModel`` converted to ours gives the same
tokens (every input route: model directory, safetensors, .bin, the classifier variant, ``pcmci convert``), and an
inflated timm ViT gives each frame the ViT's own tokens."""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
import timm
import torch
from transformers import TimesformerConfig, TimesformerForVideoClassification, TimesformerModel

from pcmci.cli import main
from pcmci.config import TimeSformerConfig
from pcmci.model.convert import read_weights
from pcmci.model.timesformer import IMAGENET_HALF, TimeSformer

SHAPE = dict(img_size=32, patch_size=16, frames=4, width=32, depth=2, heads=2, mlp_ratio=4.0)
MEAN, STD = IMAGENET_HALF[0][0], IMAGENET_HALF[1][0]


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Every parameter (biases, norms, embeddings included) drawn at random, so no tensor is left at its init."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


@pytest.fixture(scope="module")
def hf_model() -> TimesformerModel:
    config = TimesformerConfig(image_size=32, patch_size=16, num_frames=4, hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=2, intermediate_size=128)
    model = TimesformerModel(config).eval()
    randomize(model, seed=0)
    return model


def hf_tokens(model: TimesformerModel, frames: torch.Tensor) -> torch.Tensor:
    """HF's last hidden state ``[B,1+P*F,W]`` (patch-major) reordered to ours (class token, then frame-major)."""
    with torch.no_grad():
        out = model(pixel_values=(frames - MEAN) / STD).last_hidden_state
    b, _, w = out.shape
    patches = out[:, 1:].view(b, -1, frames.shape[1], w).transpose(1, 2).reshape(b, -1, w)
    return torch.cat([out[:, :1], patches], dim=1)


def ours(pretrained: str, **shape: float) -> TimeSformer:
    return TimeSformer(TimeSformerConfig(**{**SHAPE, **shape}, pretrained=pretrained), out_dim=8).eval()


def assert_same_tokens(model: TimeSformer, hf: TimesformerModel) -> None:
    frames = torch.rand(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = model.tokens(frames)
    want = hf_tokens(hf, frames)
    assert want.abs().mean() > 0.1  # a real signal, not a degenerate all-zero output
    assert (got - want).abs().max().item() < 1e-4


def test_hf_timesformer_directory_converts_to_the_same_tokens(hf_model, tmp_path: Path) -> None:
    hf_model.save_pretrained(tmp_path / "hf")
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    assert_same_tokens(ours(str(tmp_path / "hf")), hf_model)
    assert_same_tokens(ours(str(tmp_path / "hf" / "model.safetensors")), hf_model)


def test_hf_bin_and_classifier_checkpoints_convert_too(hf_model, tmp_path: Path) -> None:
    classifier = TimesformerForVideoClassification(hf_model.config)
    classifier.timesformer.load_state_dict(hf_model.state_dict())
    torch.save(classifier.state_dict(), tmp_path / "pytorch_model.bin")
    hf_model.config.to_json_file(tmp_path / "config.json")
    assert_same_tokens(ours(str(tmp_path)), hf_model)


def test_pcmci_convert_writes_a_file_that_loads_to_the_same_tokens(hf_model, tmp_path: Path, capsys) -> None:
    hf_model.save_pretrained(tmp_path / "hf")
    out = tmp_path / "ts.pt"
    assert main(["--quiet", "convert", "timesformer", str(tmp_path / "hf"), "--out", str(out)]) == 0
    assert f"model.timesformer.pretrained={out}" in capsys.readouterr().out
    assert_same_tokens(ours(str(out)), hf_model)
    with pytest.raises(ValueError, match=r"model.timesformer.heads=4 \(weights: 2\)"):
        ours(str(out), heads=4)


def test_hf_config_that_differs_from_ours_is_named(hf_model, tmp_path: Path) -> None:
    hf_model.save_pretrained(tmp_path / "hf")
    with pytest.raises(ValueError, match=r"model.timesformer.frames=8 \(weights: 4\)"):
        ours(str(tmp_path / "hf"), frames=8)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "attention_type": "joint_space_time"}))
    with pytest.raises(ValueError, match="attention_type"):
        ours(str(tmp_path / "hf"))
    shutil.rmtree(tmp_path / "hf")
    with pytest.raises(FileNotFoundError, match="no file"):
        read_weights(tmp_path / "hf")
    (tmp_path / "hf").mkdir()
    with pytest.raises(FileNotFoundError, match="holds neither model.safetensors nor pytorch_model.bin"):
        read_weights(tmp_path / "hf")


@pytest.mark.parametrize("depth, same_frames", [(3, True), (1, False)])
def test_inflated_vit_gives_each_frame_the_vit_tokens(tmp_path: Path, depth: int, same_frames: bool) -> None:
    """With ``temporal_fc`` (and ``time_embed``) at zero each frame's patch tokens are the ViT's on that frame.

    Across blocks the class token is averaged over frames, so distinct frames match the ViT exactly for one
    block; a clip of one repeated image matches it through every block and the final norm.
    """
    vit = timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=16, embed_dim=32, depth=depth,
                                                           num_heads=2, num_classes=5).eval()
    randomize(vit, seed=2)
    torch.save(vit.state_dict(), tmp_path / "vit.pt")
    model = ours(str(tmp_path / "vit.pt"), depth=depth)
    assert all(b.temporal_fc.weight.abs().sum() == 0 for b in model.blocks)
    gen = torch.Generator().manual_seed(3)
    frames = torch.rand(2, 1, 3, 32, 32, generator=gen).expand(2, 4, 3, 32, 32) if same_frames else \
        torch.rand(2, 4, 3, 32, 32, generator=gen)
    with torch.no_grad():
        tokens = model.tokens(frames)[:, 1:].unflatten(1, (4, -1))
        for f in range(4):
            want = vit.forward_features((frames[:, f] - MEAN) / STD)[:, 1:]
            assert want.abs().mean() > 0.1
            assert (tokens[:, f] - want).abs().max().item() < 1e-4


def test_a_checkpoint_holding_pickled_objects_is_refused_naming_them(tmp_path: Path) -> None:
    torch.save({"model": {"cls_token": torch.zeros(1, 1, 32)}, "args": argparse.Namespace(lr=0.1)}, tmp_path / "c.pth")
    with pytest.raises(ValueError, match="Unsupported global: GLOBAL argparse.Namespace"):
        read_weights(tmp_path / "c.pth")


@pytest.mark.parametrize("content, cause", [(b"", "EOFError: empty"), (b"hello, not a torch file\n", "KeyError"),
                                            (b"PK\x03\x04" + bytes(60), "RuntimeError: PytorchStreamReader")])
def test_an_unreadable_torch_file_is_named(tmp_path: Path, content: bytes, cause: str) -> None:
    """Empty, text and truncated-zip ``.pt`` files: one ``ValueError`` naming the file, not torch's own exception."""
    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"{path} is not a readable torch file \\({cause}"):
        read_weights(path)
