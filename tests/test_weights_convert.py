"""Foreign TimeSformer weights, verified numerically: a HF ``TimesformerModel`` converted to ours gives the same
tokens (every input route: model directory, safetensors, .bin, the classifier variant, ``pcmci convert``), and an
inflated timm ViT gives each frame the ViT's own tokens."""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import timm
import torch
from transformers import TimesformerConfig, TimesformerForVideoClassification, TimesformerModel

from pcmci.cli import main
from pcmci.config import TimeSformerConfig
from pcmci.errors import WeightsError
from pcmci.model.convert import FORMAT, read_weights
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


class _Payload:
    """Unpickling this calls ``os.system``, a module torch's unpickler blocks outright ("unsupported GLOBAL")."""

    def __reduce__(self) -> tuple:
        return os.system, ("true",)


@pytest.mark.parametrize("payload, name", [(argparse.Namespace(lr=0.1), "argparse.Namespace"),
                                           (_Payload(), "posix.system")])
def test_a_checkpoint_holding_pickled_objects_is_refused_naming_them(tmp_path: Path, payload: object,
                                                                     name: str) -> None:
    """Both of torch's wordings ("Unsupported global: GLOBAL x", "unsupported GLOBAL x ... is blocked") give the
    object and why it is refused, never torch's advice to re-run with ``weights_only=False``."""
    path = tmp_path / "c.pth"
    torch.save({"model": {"cls_token": torch.zeros(1, 1, 32)}, "args": payload}, path)
    with pytest.raises(WeightsError) as refused:
        read_weights(path)
    assert str(refused.value) == (f"{path}: it holds pickled Python objects ({name}) beyond tensors and plain "
                                  "containers, refused since unpickling them could run arbitrary code")


@pytest.mark.parametrize("content, cause", [(b"", "EOFError: empty"), (b"hello, not a torch file\n", "KeyError"),
                                            (b"PK\x03\x04" + bytes(60), "RuntimeError: PytorchStreamReader")])
def test_an_unreadable_torch_file_is_named(tmp_path: Path, content: bytes, cause: str) -> None:
    """Empty, text and truncated-zip ``.pt`` files: one ``ValueError`` naming the file, not torch's own exception."""
    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"{path} is not a readable torch file \\({cause}"):
        read_weights(path)


def _convert(capsys: pytest.CaptureFixture, src: Path, out: Path, *flags: str) -> tuple[int, str]:
    """(exit code, stderr) of ``pcmci convert timesformer SRC --out OUT``."""
    code = main(["--quiet", "convert", "timesformer", str(src), "--out", str(out), *flags])
    return code, capsys.readouterr().err


def test_convert_never_writes_over_its_source_an_existing_file_or_a_folder(hf_model, tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture) -> None:
    """``--out SRC/model.safetensors`` destroyed the source (and died of a bus error reading it); an existing file was
    replaced without asking; a folder gave torch's RuntimeError."""
    src = tmp_path / "hf"
    hf_model.save_pretrained(src)
    capsys.readouterr()  # transformers' progress bar
    kept = {p: p.read_bytes() for p in src.iterdir()}
    for target in (src / "model.safetensors", src / "config.json"):
        assert _convert(capsys, src, target, "--overwrite") == (
            1, f"pcmci: error: --out {target} is the source file {target}; write the converted file elsewhere\n")
    assert _convert(capsys, src, tmp_path) == (
        1, f"pcmci: error: --out {tmp_path} is a folder; name the file to write, e.g. {tmp_path / 'timesformer.pt'}\n")
    out = tmp_path / "ts.pt"
    out.write_bytes(b"an earlier file")
    assert _convert(capsys, src, out) == (1, f"pcmci: error: --out {out} exists already; write to a new file, or "
                                             "replace it (pcmci convert --overwrite)\n")
    assert out.read_bytes() == b"an earlier file"
    assert {p: p.read_bytes() for p in src.iterdir()} == kept
    assert _convert(capsys, src, out, "--overwrite") == (0, "")
    assert_same_tokens(ours(str(out)), hf_model)


def test_a_convert_that_fails_to_write_keeps_the_file_it_would_replace(hf_model, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture) -> None:
    hf_model.save_pretrained(tmp_path / "hf")
    capsys.readouterr()  # transformers' progress bar
    out = tmp_path / "ts.pt"
    out.write_bytes(b"an earlier file")

    def full(*args, **kwargs) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    code, err = _convert(capsys, tmp_path / "hf", out, "--overwrite")
    assert code == 1 and "No space left on device" in err and len(err.splitlines()) == 1
    assert out.read_bytes() == b"an earlier file" and sorted(p.name for p in tmp_path.iterdir()) == ["hf", "ts.pt"]


@pytest.mark.parametrize("config, message", [
    ({"image_size": None}, "image_size must be a positive integer, got None"),
    ({"patch_size": "16"}, "patch_size must be a positive integer, got '16'"),
    ({"hidden_size": 0}, "hidden_size must be a positive integer, got 0"),
    ({"num_frames": True}, "num_frames must be a positive integer, got True"),
    ({"num_attention_heads": 3}, "hidden_size 32 is not a multiple of num_attention_heads 3"),
    ({"image_size": ...}, "missing 'image_size'; a HF TimesformerConfig needs image_size, patch_size, num_frames, "
                          "hidden_size, num_hidden_layers, num_attention_heads, intermediate_size"),
    ([1], "expected a JSON object \\(a HF TimesformerConfig\\), got a list"),
    ("{oops", ":1: not valid JSON: Expecting property name"),
    (b"\xff\xfe", " not a UTF-8 text file"),
])
def test_a_bad_hf_config_json_is_one_error_naming_the_file_and_the_key(hf_model, tmp_path: Path, config: object,
                                                                       message: str,
                                                                       capsys: pytest.CaptureFixture) -> None:
    """A missing key was a KeyError, a list an AttributeError, strings and null TypeErrors, 0 a ZeroDivisionError,
    indivisible heads an AssertionError; malformed JSON did not name the file."""
    src = tmp_path / "hf"
    hf_model.save_pretrained(src)
    file = src / "config.json"
    if isinstance(config, dict):
        values = {**json.loads(file.read_text()), **config}
        file.write_text(json.dumps({k: v for k, v in values.items() if v is not ...}))
    elif isinstance(config, bytes):
        file.write_bytes(config)
    else:
        file.write_text(config if isinstance(config, str) else json.dumps(config))
    with pytest.raises(WeightsError, match=f"^{file}:? ?{message}"):
        ours(str(src))
    capsys.readouterr()
    code, err = _convert(capsys, src, tmp_path / "ts.pt")
    assert code == 1 and re.match(f"pcmci: error: {file}:? ?{message}", err) and len(err.splitlines()) == 1, err
    assert not (tmp_path / "ts.pt").exists()


@pytest.mark.parametrize("content, message", [
    ([torch.zeros(1)], "holds a list, not a dict of named tensors"),
    (torch.zeros(1), "holds a Tensor, not a dict of named tensors"),
    ({0: torch.zeros(1)}, "holds the key 0 \\(int\\), not a tensor name"),
    ({"blocks.0.attn.qkv.weight": [1.0]}, "holds 'blocks.0.attn.qkv.weight' holding list, not a tensor"),
    ({"model": {"cls_token": 3}}, "holds 'cls_token' holding int, not a tensor"),
    ({"format": FORMAT, "state_dict": {}}, f"is a {FORMAT} file without 'config'"),
    ({"format": FORMAT, "config": {}}, f"is a {FORMAT} file without 'state_dict'"),
    ({"format": FORMAT, "config": [1], "state_dict": {}}, f"is a {FORMAT} file whose 'config' is a list, not a dict"),
    ({"format": FORMAT, "config": {**SHAPE, "bogus": 1}, "state_dict": {}},
     f"is a {FORMAT} file whose 'config' has unknown keys \\['bogus'\\]"),
    ({"format": FORMAT, "config": {"width": 32}, "state_dict": {}},
     f"is a {FORMAT} file whose 'config' lacks \\['img_size', 'patch_size', 'frames', 'depth', 'heads', "
     "'mlp_ratio'\\] \\(it needs img_size, patch_size, frames, width, depth, heads, mlp_ratio\\)"),
    ({"format": FORMAT, "config": SHAPE, "state_dict": {"norm.weight": 3}},
     f"is a {FORMAT} file whose 'state_dict' is 'norm.weight' holding int, not a tensor"),
    ({"encoder.layer.x": torch.zeros(1)}, "tensor 'encoder.layer.x' has no counterpart in pcmci's TimeSformer"),
])
def test_a_weights_file_holding_other_than_named_tensors_is_named(tmp_path: Path, content: object,
                                                                  message: str) -> None:
    """Lists, bare tensors, int keys, non-tensor values, a HF key without a layer index, a converted file without its
    config or state dict: AttributeError, KeyError or unpacking errors before, now one error naming the file."""
    path = tmp_path / "w.pt"
    torch.save(content, path)
    with pytest.raises(WeightsError, match=f"^(HF TimeSformer )?{path}:? {message}"):
        ours(str(path))
