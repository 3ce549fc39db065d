"""open_clip weights: a local checkpoint and a tag found in the local HF cache both load to the saved model's
embeddings; a tag's QuickGELU is honoured; when neither is found the message lists every place looked."""
from __future__ import annotations

import argparse
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU
from safetensors.torch import save_file

from pcmci.config import ClipConfig, load_config
from pcmci.engine.evaluate import evaluate
from pcmci.engine.train import train
from pcmci.errors import WeightsError
from pcmci.model.clip import FrozenCLIP, locate_weights
from pcmci.model.weights import require_weights

TEXTS = ["make tea", "fry egg"]


@pytest.fixture(scope="module")
def source() -> open_clip.CLIP:
    torch.manual_seed(5)
    return open_clip.create_model("pcmci-tiny-clip").eval()


def assert_same_embeddings(clip: FrozenCLIP, source: open_clip.CLIP) -> None:
    frames = torch.rand(2, 3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        text = F.normalize(source.encode_text(clip.tokenizer([clip.prompt.format(t) for t in TEXTS])), dim=-1)
        image = F.normalize(source.encode_image((frames.flatten(0, 1) - clip.mean) / clip.std), dim=-1)
    torch.testing.assert_close(clip.encode_text(TEXTS), text, rtol=0, atol=1e-6)
    torch.testing.assert_close(clip.encode_frames(frames), image.view(2, 3, -1), rtol=0, atol=1e-6)


def cache_tag(cache: Path, repo: str, state: dict[str, torch.Tensor]) -> Path:
    """Lay out ``repo``'s ``open_clip_model.safetensors`` as huggingface_hub caches a download."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(revision)
    (folder / "snapshots" / revision).mkdir(parents=True)
    path = folder / "snapshots" / revision / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    return path


@pytest.fixture
def tiny_tag(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register open_clip tags ``cached`` / ``quick`` for the tiny model (hub repos that only a test cache holds)."""
    tags = {"cached": open_clip.pretrained._pcfg(hf_hub="pcmci-test/tiny-clip/"),
            "quick": open_clip.pretrained._pcfg(hf_hub="pcmci-test/tiny-clip/", quick_gelu=True)}
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "pcmci-tiny-clip", tags)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_local_checkpoint_loads_to_identical_embeddings(source, tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"clip{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    assert_same_embeddings(FrozenCLIP(ClipConfig(pretrained=str(path))), source)


def test_tag_in_the_local_cache_loads_to_identical_embeddings(source, tiny_tag, tmp_path: Path) -> None:
    path = cache_tag(tmp_path, "pcmci-test/tiny-clip", source.state_dict())
    found = locate_weights("pcmci-tiny-clip", "cached", str(tmp_path))
    assert found.path == str(path) and "HF cache" in found.source and not found.quick_gelu
    assert_same_embeddings(FrozenCLIP(ClipConfig(pretrained="cached", cache_dir=str(tmp_path))), source)


def test_a_quick_gelu_tag_builds_quick_gelu(source, tiny_tag, tmp_path: Path) -> None:
    cache_tag(tmp_path, "pcmci-test/tiny-clip", source.state_dict())
    quick = FrozenCLIP(ClipConfig(pretrained="quick", cache_dir=str(tmp_path)))
    plain = FrozenCLIP(ClipConfig(pretrained="cached", cache_dir=str(tmp_path)))
    assert any(isinstance(m, QuickGELU) for m in quick.model.modules())
    assert not any(isinstance(m, QuickGELU) for m in plain.model.modules())


def test_missing_weights_list_every_place_looked(tiny_tag, tmp_path: Path) -> None:
    found = locate_weights("pcmci-tiny-clip", "cached", str(tmp_path))
    assert found.path is None
    assert (f"looked in HF cache {tmp_path}: pcmci-test/tiny-clip/open_clip_model.safetensors or "
            "open_clip_pytorch_model.bin") in found.source
    with pytest.raises(WeightsError, match=f"model.clip.pretrained={tmp_path / 'none.pt'}: no such file"):
        locate_weights("pcmci-tiny-clip", str(tmp_path / "none.pt"))  # a file asked for by name: no random init
    cfg = load_config("tiny", ["model.clip.pretrained=cached", f"model.clip.cache_dir={tmp_path}",
                               "model.allow_random_init=false"]).model
    with pytest.raises(ValueError, match=f"looked in HF cache {tmp_path}: pcmci-test/tiny-clip/open_clip_model"):
        require_weights(cfg)


@pytest.mark.parametrize("content, cause", [(b"", "SafetensorError"), (bytes(range(100)), "SafetensorError")])
def test_an_unreadable_weights_file_is_named(tmp_path: Path, content: bytes, cause: str) -> None:
    path = tmp_path / "clip.safetensors"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=f"model.clip.pretrained={path}: {path} cannot be loaded .*{cause}"):
        FrozenCLIP(ClipConfig(pretrained=str(path)))


def test_a_clip_file_holding_pickled_objects_is_refused_without_torchs_unsafe_advice(tmp_path: Path) -> None:
    """The first line of torch's refusal was "This file can still be loaded ... (weights_only=False)"."""
    path = tmp_path / "clip.pt"
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(WeightsError) as refused:
        FrozenCLIP(ClipConfig(name="pcmci-tiny-clip", pretrained=str(path)))
    assert str(refused.value) == (f"model.clip.pretrained={path}: {path} cannot be loaded into pcmci-tiny-clip (it "
                                  "holds pickled Python objects (argparse.Namespace) beyond tensors and plain "
                                  "containers, refused since unpickling them could run arbitrary code)")


def test_a_checkpoint_evaluates_without_the_clip_file_it_was_trained_from(source, synthetic_set, tmp_path) -> None:
    """The checkpoint holds CLIP's tensors, so the file named at training time need not exist where it is read."""
    path = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, path)
    cfg = load_config("tiny", [f"data.manifest={synthetic_set}", f"run.out_dir={tmp_path / 'run'}", "optim.epochs=1",
                               "run.progress=false", "model.stages=[]", f"model.clip.pretrained={path}"])
    checkpoint = train(cfg)
    before = evaluate(checkpoint, ["test_ood"], tmp_path / "before", progress=False)["test_ood"]
    path.unlink()
    after = evaluate(checkpoint, ["test_ood"], tmp_path / "after", progress=False)["test_ood"]
    assert after["confusion"] == before["confusion"] and after["map"] == before["map"]
