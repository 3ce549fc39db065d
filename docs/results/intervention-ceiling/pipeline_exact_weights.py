"""The backdoor weights in the real pipeline with the generator's TRUE context ids: ``P(y)/P(y|c)`` counted from
``runs/easy/meta.json`` (``c`` = background, or background + distractor), clipped at ``MAX_WEIGHT`` and normalised
to mean 1 within each class as ``pcmci.engine.propensity`` does, in place of the cross-fitted single-frame
references; everything else is ``pcmci.engine.train`` on the ``tiny`` baseline (``model.stages=[]``), one thread.
``KEY`` = ``background`` | ``background+distractor`` | ``none`` (no weights: the baseline) | ``inferred`` (the
pipeline's own reference weights on the baseline, ``backdoor.max_weight=MAX_WEIGHT``).

    .venv/bin/python -P docs/results/intervention-ceiling/pipeline_exact_weights.py KEY SEED MAX_WEIGHT
"""
import json, sys
from collections import Counter
from pathlib import Path
import torch
import pcmci.engine.train as T
from pcmci.config import preset
from pcmci.engine.evaluate import evaluate

key, seed, maxw = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
meta = json.loads(Path("runs/easy/meta.json").read_text())
vids = {Path(v["path"]).name: v for v in meta["videos"]}

def true_weights(cfg, dataset, device, progress=True, batch=None):
    rows = [vids[Path(r.path).name] for r in dataset.records]
    y = [v["label"] for v in rows]
    ctx = [tuple(v[k] for k in key.split("+")) for v in rows]
    n_y, n_c, n_yc = Counter(y), Counter(ctx), Counter(zip(y, ctx))
    w = torch.tensor([(n_y[a] / len(y)) / (n_yc[(a, c)] / n_c[c]) for a, c in zip(y, ctx)], dtype=torch.float64)
    w = w.clamp(max=maxw)
    t = torch.tensor(y)
    sums = torch.zeros(5, dtype=torch.float64).index_add_(0, t, w)
    counts = torch.bincount(t).double()
    return w * counts[t] / sums[t]

if key not in ("inferred", "none"):
    T.clip_weights = true_weights
cfg = preset("tiny")
cfg.data.manifest = "runs/easy/manifest.csv"; cfg.data.cache_frames = True
cfg.model.stages = []; cfg.backdoor.reweight = key != "none"; cfg.backdoor.max_weight = maxw
cfg.run.seed = seed; cfg.run.progress = False
cfg.run.out_dir = f"/tmp/truegrp/{key}-w{maxw:g}-seed{seed}"
torch.set_num_threads(1)
ckpt = T.train(cfg)
r = evaluate(ckpt, ["test_id", "test_ood"], progress=False)
print(key, maxw, seed, "ID", r["test_id"]["acc"], "OOD", r["test_ood"]["acc"], flush=True)
