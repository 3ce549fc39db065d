"""TIE with a calibrated, cross-fitted single-frame reference: two half-split references, temperature fitted on the
held-out halves (NLL of the frame-averaged probabilities), test P(y|s) = mean of the two calibrated references."""
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
targets = [int(r.target) for r in train_ds.records]; C = len(model0.classes)
prior = np.log(np.bincount(targets, minlength=C) / len(targets))
folds = P.stratified_folds(targets, 2, 0)

@torch.no_grad()
def frame_logits(ref, ds, idx):
    ds.set_epoch(0)
    out = []
    for items in P._loader(ds, idx, 16, 0, False, 0):
        v = items["video"]; b, f = v.shape[:2]
        out.append(ref(v.reshape(b * f, 1, *v.shape[2:]))["logits"].float().view(b, f, -1))
    return torch.cat(out)

def probs(logits, T):
    return torch.softmax(logits / T, -1).mean(1)

refs, held_logits, held_y = [], [], []
for k in range(2):
    fit = [i for i, f in enumerate(folds) if f != k]; held = [i for i, f in enumerate(folds) if f == k]
    train_ds.train = True
    ref = P._train_reference(cfg, train_ds, fit, dev, 100 + k, False, torch.ones(len(targets), dtype=torch.float64),
                             cfg.optim.batch_size)
    train_ds.train = False
    held_logits.append(frame_logits(ref, train_ds, held)); held_y += [targets[i] for i in held]
    refs.append(ref)
L, Y = torch.cat(held_logits), torch.tensor(held_y)
grid = np.exp(np.linspace(np.log(0.3), np.log(30), 60))
nll = [float(-torch.log(probs(L, T)[torch.arange(len(Y)), Y] + 1e-12).mean()) for T in grid]
T = float(grid[int(np.argmin(nll))])
print(f"temperature {T:.2f}, held-out NLL {min(nll):.3f} (T=1: {nll[int(np.argmin(abs(grid-1)))]:.3f})", flush=True)
ref_lp = {}
for split in ("test_id", "test_ood"):
    ds = make_dataset(cfg, split, train=False, labels=labels)
    idx = list(range(len(ds)))
    p = sum(probs(frame_logits(r, ds, idx), T) for r in refs) / len(refs)
    ref_lp[split] = np.log(p.numpy() + 1e-9)
    sv = [v for v in vids if v["split"] == split]
    print(split, "P(y|s) at the background's class, median:",
          float(np.median(np.exp(ref_lp[split])[np.arange(len(sv)), [v["background"] for v in sv]])), flush=True)
still = [1, 4]
for run in runs:
    model, cfg_r = load_model(Path(run) / "checkpoint.pt", dev)
    out = []
    for split in ("test_id", "test_ood"):
        ds = make_dataset(cfg_r, split, train=False, labels=labels)
        pr, y = predict(model, make_loader(ds, 16, dev), dev, progress=False)
        lp = np.log(pr + 1e-9)
        row = []
        for lam in (0, 0.5, 1):
            pred = np.argmax(lp - lam * (ref_lp[split] - prior), 1)
            m = np.isin(y, still)
            row.append(f"{(pred == y).mean():.3f}/{(pred[m] == y[m]).mean():.2f}")
        out.append(f"{split} " + " ".join(row))
    print(run, " | ".join(out), flush=True)
