"""TIE with the single-frame reference (trained on every training clip) instead of exact ids."""
import json, sys
from pathlib import Path
import numpy as np, torch
from pcmci.engine.evaluate import load_model, predict
from pcmci.engine.runtime import make_dataset
from pcmci.data.loader import make_loader
from pcmci.data.datasets import LabelSet
from pcmci.engine import propensity as P

root = Path(sys.argv[1]); runs = sys.argv[2:]
meta = json.loads((root / "meta.json").read_text())
vids = meta["videos"]
dev = torch.device("cpu")
model0, cfg = load_model(Path(runs[0]) / "checkpoint.pt", dev)
labels = LabelSet(model0.classes, model0.actions)
train_ds = make_dataset(cfg, "train", train=True, labels=labels)
ref = P._train_reference(cfg, train_ds, list(range(len(train_ds))), dev, 12345, False,
                         torch.ones(len(train_ds), dtype=torch.float64), cfg.optim.batch_size)
targets = np.array([r.target for r in train_ds.records]); C = len(model0.classes)
prior = np.log(np.bincount(targets, minlength=C) / len(targets))

@torch.no_grad()
def ref_logp(ds):
    out = []
    for items in make_loader(ds, 16, dev):
        v = items["video"]; b, f = v.shape[:2]
        p = torch.softmax(ref(v.reshape(b * f, 1, *v.shape[2:]))["logits"].float(), -1).view(b, f, -1).mean(1)
        out.append(p.numpy())
    return np.log(np.concatenate(out) + 1e-6)

refs = {}
for split in ("test_id", "test_ood"):
    ds = make_dataset(cfg, split, train=False, labels=labels)
    refs[split] = ref_logp(ds)
    sv = [v for v in vids if v["split"] == split]
    print(split, "reference argmax = background:", np.mean(refs[split].argmax(1) == np.array([v["background"] for v in sv])),
          "= label:", np.mean(refs[split].argmax(1) == np.array([v["label"] for v in sv])), flush=True)
still = [1, 4]
for run in runs:
    model, cfg_r = load_model(Path(run) / "checkpoint.pt", dev)
    out = []
    for split in ("test_id", "test_ood"):
        ds = make_dataset(cfg_r, split, train=False, labels=labels)
        probs, y = predict(model, make_loader(ds, 16, dev), dev, progress=False)
        lp = np.log(probs + 1e-9)
        row = []
        for lam in (0, 0.5, 1, 1.5):
            pred = np.argmax(lp - lam * (refs[split] - prior), 1)
            m = np.isin(y, still)
            row.append(f"{(pred == y).mean():.3f}/{(pred[m] == y[m]).mean():.2f}")
        out.append(f"{split} " + " ".join(row))
    print(run, " | ".join(out), flush=True)
