"""Do the models fit the training clips whose background is another class's by their appearance? Train-split
accuracy per confounder group vs. what they follow out of distribution (runs/easy = the demo set)."""
import json, sys, numpy as np, torch
from pathlib import Path
from pcmci.engine.evaluate import load_model
from pcmci.experiments.diagnose import counterfactual_pairs, predict_labels, follows
torch.set_num_threads(2)
train = counterfactual_pairs(Path("runs/easy/manifest.csv"), "train", 8, 64, 720)
ood = counterfactual_pairs(Path("runs/easy/manifest.csv"), "test_ood", 8, 64, 240)
lab, bg, d = train.labels.numpy(), train.confounders[:, 0].numpy(), train.confounders[:, 1].numpy()
groups = {"both own": (bg == lab) & (d == lab), "bg off": (bg != lab) & (d == lab), "d off": (bg == lab) & (d != lab),
          "none own": (bg != lab) & (d != lab)}
print("train clips per group:", {k: int(m.sum()) for k, m in groups.items()})
for ck in sys.argv[1:]:
    model, _ = load_model(ck, torch.device("cpu"))
    p = predict_labels(model, train.original).numpy()
    acc = {k: round(float((p[m] == lab[m]).mean()), 3) for k, m in groups.items()}
    f = follows(predict_labels(model, ood.original), ood)
    print(ck.split("/")[-2], "train acc by group", acc, "| OOD follows", {k: round(v, 2) for k, v in f.items()})
