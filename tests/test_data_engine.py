"""The data path inside `pcmci train` / `pcmci eval`: bad videos skipped and listed, multi-view score averaging."""
import json
import logging
import shutil

import numpy as np
import pytest
import torch

from pcmci.config import load_config
from pcmci.errors import DataError
from pcmci.data.loader import make_loader
from pcmci.engine.evaluate import evaluate, load_model, predict
from pcmci.engine.runtime import make_dataset
from pcmci.engine.train import train


@pytest.mark.parametrize("stages, where", [("[]", "epoch 0: all 4 training videos were skipped"),
                                           ("[ich]", "all 4 training clips drawn for the confounder dictionaries")])
def test_a_training_split_of_only_bad_videos_stops_with_the_cause(tmp_path, synthetic_set, stages, where):
    """With ``skip_bad_videos`` every training clip skipped left an untrained checkpoint that looked trained (the
    baseline) or an error from inside the model (dictionary fitting); both now stop naming the skipped videos."""
    rows = synthetic_set.read_text().splitlines()
    for k in range(4):  # one file per row: a manifest lists each video once
        (tmp_path / f"empty{k}.webm").write_bytes(b"")
    bad = [f"{tmp_path / f'empty{k}.webm'},{row.split(',', 2)[1]},train," for k, row in enumerate(rows[1:5])]
    (tmp_path / "manifest.csv").write_text("\n".join([rows[0], *bad]) + "\n")
    cfg = load_config("tiny", [f"data.manifest={tmp_path / 'manifest.csv'}", f"run.out_dir={tmp_path / 'run'}",
                               "optim.epochs=1", "run.progress=false", "data.skip_bad_videos=true",
                               f"model.stages={stages}"])
    with pytest.raises(DataError, match=f"{where} .*empty0.webm: empty file"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.slow
def test_train_skips_and_lists_bad_videos_then_eval_averages_views(tmp_path, synthetic_set, caplog):
    root = tmp_path / "data"
    shutil.copytree(synthetic_set.parent, root)
    rows = (root / "manifest.csv").read_text().splitlines()
    train_rows = [r for r in rows[1:] if ",train," in r][:10]
    test_rows = [r for r in rows[1:] if ",test_id," in r][:4]
    (root / train_rows[1].split(",")[0]).write_bytes(b"garbage" * 100)
    rows = [rows[0], *train_rows, train_rows[2].replace(train_rows[2].split(",")[0], "videos/gone.webm"), *test_rows]
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    cfg = load_config("tiny", [f"data.manifest={root / 'manifest.csv'}", f"run.out_dir={tmp_path / 'run'}",
                               "optim.epochs=1", "optim.batch_size=4", "run.progress=false",
                               "model.dictionaries.clips=6", "data.skip_bad_videos=true", "data.eval_splits=[test_id]"])
    caplog.set_level(logging.WARNING)
    checkpoint = train(cfg)
    summary = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()][-1]
    assert summary["skipped_videos"] == 2
    warning = next(r.getMessage() for r in caplog.records if "undecodable" in r.getMessage())
    assert "skipped 2 undecodable video(s)" in warning and "gone.webm: file not found" in warning
    assert train_rows[1].split(",")[0] in warning
    single = evaluate(checkpoint, progress=False, out_dir=tmp_path / "eval")["test_id"]
    assert single["views"] == 1 and single["videos"] == 4 and single["skipped"] == []

    cpu = torch.device("cpu")
    model, saved = load_model(checkpoint, cpu)
    saved.data.test_views, saved.data.test_crops = 4, 2
    dataset = make_dataset(saved, "test_id", train=False, labels=None)
    scores, labels = predict(model, make_loader(dataset, 2, cpu), cpu, progress=False)
    assert dataset.views == 4 and scores.shape == (4, 6) and labels.tolist() == [dataset[i]["label"] for i in range(4)]
    with torch.no_grad():
        per_view = torch.softmax(model(dataset[3]["video"])["logits"].float(), -1)  # [V, C]
    np.testing.assert_allclose(scores[3], per_view.mean(0).numpy(), atol=1e-5)
