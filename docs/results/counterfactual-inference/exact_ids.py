"""Test-time subtraction of a context-only expert (CF-VQA's TIE / logit adjustment), with the EXACT context ids."""
import json, sys
from pathlib import Path
import numpy as np, torch
from pcmci.engine.evaluate import load_model, predict
from pcmci.engine.runtime import make_dataset
from pcmci.data.loader import make_loader
from pcmci.data.datasets import LabelSet

root = Path(sys.argv[1]); runs = sys.argv[2:]
meta = json.loads((root / "meta.json").read_text())
C = len(meta["activities"])
vids = meta["videos"]
train = [v for v in vids if v["split"] == "train"]
def table(key):
    t = np.full((C, C), 1.0)  # add-one
    for v in train: t[v[key], v["label"]] += 1
    return np.log(t / t.sum(1, keepdims=True))
prior = np.log(np.bincount([v["label"] for v in train], minlength=C) / len(train))
bg, dist = table("background"), table("distractor")
dev = torch.device("cpu")
for run in runs:
    model, cfg = load_model(Path(run) / "checkpoint.pt", dev)
    out = []
    for split in ("test_id", "test_ood"):
        ds = make_dataset(cfg, split, train=False, labels=LabelSet(model.classes, model.actions))
        probs, labels = predict(model, make_loader(ds, 16, dev), dev, progress=False)
        sv = [v for v in vids if v["split"] == split]
        assert [v["label"] for v in sv] == labels.tolist()
        lp = np.log(probs + 1e-9)
        b = np.stack([bg[v["background"]] for v in sv]) - prior
        d = np.stack([dist[v["distractor"]] for v in sv]) - prior
        row = []
        for lam_b, lam_d in ((0, 0), (1, 0), (1.5, 0), (2, 0), (3, 0), (1, 0.5)):
            row.append(f"{(np.argmax(lp - lam_b * b - lam_d * d, 1) == labels).mean():.3f}")
        out.append(f"{split} " + " ".join(row))
    print(run, " | ".join(out), flush=True)
