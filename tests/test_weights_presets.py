"""Presets that need published weights refuse random ones: one line naming what is missing and how to provide
it, unless ``model.allow_random_init=true``; ``tiny`` keeps random weights; ``pcmci weights check`` reports."""
from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import timm
import torch

from pcmci.cli import main
from pcmci.config import load_config
from pcmci.errors import WeightsError
from pcmci.model.weights import check_weights, require_weights


@pytest.mark.parametrize("name", ["paper", "breakfast", "coin", "charades"])
def test_paper_presets_refuse_random_weights(name: str, tmp_path: Path) -> None:
    cfg = load_config(name, [f"model.clip.cache_dir={tmp_path}"])
    with pytest.raises(WeightsError) as err:  # a PcmciError: the CLI prints it as one line
        require_weights(cfg.model)
    message = str(err.value)
    assert "\n" not in message
    for needed in ("CLIP ViT-B-16", "open_clip tag ViT-B-16/openai is not cached", "model.clip.pretrained=",
                   "TimeSformer", "model.timesformer.pretrained is unset", "pcmci convert timesformer",
                   "model.allow_random_init=true", "pcmci weights check"):
        assert needed in message
    require_weights(load_config(name, ["model.allow_random_init=true"]).model)


def test_tiny_keeps_random_weights() -> None:
    cfg = load_config("tiny")
    assert cfg.model.allow_random_init and cfg.model.clip.pretrained is None
    require_weights(cfg.model)


def test_train_paper_without_weights_exits_with_one_line(tmp_path: Path, capsys) -> None:
    code = main(["--quiet", "train", "paper", f"model.clip.cache_dir={tmp_path}", f"run.out_dir={tmp_path / 'run'}",
                 f"data.manifest={tmp_path / 'manifest.csv'}"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert err.startswith("pcmci: error: missing pretrained weights") and "model.timesformer.pretrained" in err


def test_weights_check_reports_source_shapes_and_parameters(tmp_path: Path, capsys) -> None:
    clip = open_clip.create_model("pcmci-tiny-clip")
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    vit = timm.models.vision_transformer.VisionTransformer(img_size=64, patch_size=16, embed_dim=64, depth=2,
                                                           num_heads=2)
    torch.save(vit.state_dict(), tmp_path / "vit.pt")
    overrides = [f"model.clip.pretrained={tmp_path / 'clip.pt'}", f"model.timesformer.pretrained={tmp_path / 'vit.pt'}",
                 "model.allow_random_init=false"]
    rows = check_weights(load_config("tiny", overrides).model)
    assert [r["path"] for r in rows] == [str(tmp_path / "clip.pt"), str(tmp_path / "vit.pt")]
    assert rows[0]["params"] == sum(p.numel() for p in clip.parameters())
    vit_params = sum(p.numel() for n, p in vit.named_parameters() if not n.startswith("head"))
    temporal = sum(p.numel() for n, p in vit.named_parameters() if ".attn." in n or ".norm1." in n)
    fc, new = 2 * (64 * 64 + 64), 64 * 64 + 64 + 8 * 64  # temporal_fc x2 blocks; proj + temporal_pos
    assert rows[1]["params"] == vit_params + temporal + fc + 8 * 64 + new  # + time_embed
    assert all(r["shape_check"].startswith("ok") for r in rows)
    assert rows[1]["source"] == f"timm ViT {tmp_path / 'vit.pt'}, inflated"
    assert main(["--quiet", "weights", "check", "tiny", *overrides]) == 0
    out = capsys.readouterr().out
    assert f"source: local file {tmp_path / 'clip.pt'}" in out and "params:" in out

    bad = timm.models.vision_transformer.VisionTransformer(img_size=64, patch_size=16, embed_dim=48, depth=2,
                                                           num_heads=2)
    torch.save(bad.state_dict(), tmp_path / "vit.pt")
    assert main(["--quiet", "weights", "check", "tiny", *overrides]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "TimeSformer" in err and "48), model needs" in err
    assert main(["--quiet", "weights", "check", "tiny", "model.allow_random_init=false"]) == 1
    assert "missing pretrained weights" in capsys.readouterr().err
