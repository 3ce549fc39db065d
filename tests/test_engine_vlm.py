"""``pcmci vlm pretrain``: the project's own VLM, written and loaded like real CLIP weights (issue 19)."""
import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from pcmci.config import ClipConfig, ConfigError
from pcmci.data.captions import caption_pairs
from pcmci.data.synthetic import Scene
from pcmci.engine.vlm import MODEL, VLMSettings, pretrain_vlm, zero_shot
from pcmci.model.clip import SHIPPED, FrozenCLIP, locate_weights

SMALL = VLMSettings(clips=14, frames=2, epochs=2, batch=8, eval_clips=7)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("vlm")
    return out, pretrain_vlm(out, SMALL, progress=False)


def test_the_record_names_the_file_it_describes(pretrained):
    out, record = pretrained
    weights = out / record["weights"]
    assert record["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert json.loads((out / "vlm.json").read_text()) == json.loads(json.dumps(record))
    assert record["pairs"] == SMALL.clips * SMALL.frames and len(record["loss_per_epoch"]) == SMALL.epochs


def test_pretraining_is_reproducible_from_its_seed(pretrained, tmp_path):
    out, record = pretrained
    again = pretrain_vlm(tmp_path, SMALL, progress=False)
    assert again["sha256"] == record["sha256"]


def test_weights_in_out_are_refused_before_any_work_unless_overwrite(pretrained, monkeypatch):
    out, record = pretrained
    before = (out / record["weights"]).read_bytes()
    monkeypatch.setattr("pcmci.engine.vlm.caption_pairs", lambda *_, **__: pytest.fail("work started"))
    with pytest.raises(ConfigError, match=r"pcmci-tiny-vlm.safetensors exists; pass --overwrite"):
        pretrain_vlm(out, SMALL, progress=False)
    assert (out / record["weights"]).read_bytes() == before


@pytest.mark.parametrize(("change", "message"), [({"seed": -1}, r"--seed must be >= 0, got -1"),
                                                 ({"cooccur": 1.5}, r"--cooccur must be .* \[0, 1\], got 1.5"),
                                                 ({"cooccur": float("nan")}, r"--cooccur .* got nan")])
def test_a_bad_seed_or_cooccur_is_named_before_any_work(change, message, tmp_path, monkeypatch):
    monkeypatch.setattr("pcmci.engine.vlm.caption_pairs", lambda *_, **__: pytest.fail("work started"))
    with pytest.raises(ConfigError, match=message):
        pretrain_vlm(tmp_path / "out", replace(SMALL, **change), progress=False)
    assert not (tmp_path / "out").exists()


def test_the_weights_load_through_model_clip_pretrained_and_untrained_rows_are_zero(pretrained):
    out, record = pretrained
    written = load_file(str(out / record["weights"]))
    clip = FrozenCLIP(ClipConfig(name=MODEL, pretrained=str(out / record["weights"])))
    loaded = clip.model.state_dict()
    for key, value in written.items():
        assert torch.equal(loaded[key], value.float()), key
    pairs = caption_pairs(SMALL.seed, SMALL.clips, SMALL.cooccur, SMALL.frames, Scene(still_pairs=SMALL.still_pairs))
    used = set(open_clip.get_tokenizer(MODEL)(pairs.captions).unique().tolist())
    rows = written["token_embedding.weight"].float()
    nonzero = set(torch.nonzero(rows.abs().sum(1)).flatten().tolist())
    assert nonzero == used and record["trained_embedding_rows"] == len(used)


def test_zero_shot_accuracy_matches_open_clip_computed_directly(pretrained):
    out, record = pretrained
    clip = FrozenCLIP(ClipConfig(name=MODEL, pretrained=str(out / record["weights"])))
    held = caption_pairs(SMALL.seed + 1, 14, 0.0, 1, Scene(still_pairs=1))
    accuracy, probs = zero_shot(clip, held.frames, held.labels, held.classes)
    # second path: open_clip's own encoders on the frames resized and normalised by hand
    model = clip.model
    images = torch.from_numpy(held.frames).permute(0, 3, 1, 2).double() / 255.0
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD, dtype=torch.float64).view(1, 3, 1, 1)
    with torch.no_grad():
        image = F.normalize(model.encode_image(((images - mean) / std).float()).double(), dim=-1)
        tokens = open_clip.get_tokenizer(MODEL)([f"a video of a person {c}." for c in held.classes])
        text = F.normalize(model.encode_text(tokens).double(), dim=-1)
    expected = (image @ text.T).argmax(-1).numpy()
    assert accuracy == pytest.approx(float(np.mean(expected == held.labels)), abs=1e-12)
    assert torch.allclose(probs.sum(-1), torch.ones(len(held.labels)), atol=1e-5)


def test_the_shipped_vlm_is_the_file_its_record_describes():
    model, path = SHIPPED["pcmci-synth"]
    record = json.loads((Path(path).parent / "vlm.json").read_text())
    assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == record["sha256"]
    assert locate_weights(model, "pcmci-synth").path == str(path)
    with pytest.raises(ValueError, match="pcmci-synth"):
        locate_weights("ViT-B-32", "pcmci-synth")
