"""In-memory oracle check: render a synthetic set (no codec), train the tiny baseline, report ID/OOD acc."""
import sys, json, math, time, numpy as np, torch
from pcmci.config import preset
from pcmci.model import build_model
from pcmci.data.synthetic import _render, _plan, Scene, activities, split_sizes
from pcmci.data.sampling import segment_indices
from pcmci.data.datasets import preprocess
from pcmci.engine.train import cosine_with_warmup
torch.set_num_threads(1)
cam, light, dm, pairs, confound = map(float, sys.argv[1:6]); epochs = int(sys.argv[6]) if len(sys.argv) > 6 else 30; lr = float(sys.argv[7]) if len(sys.argv) > 7 else 1e-3
max_weight = float(sys.argv[8]) if len(sys.argv) > 8 else 0.0  # > 0: exact backdoor weights P(y)/P(y|bg,d), clipped
mix = float(sys.argv[9]) if len(sys.argv) > 9 else 0.0  # > 0: blend each clip with another class's clip, weight U(0, mix), label kept
scene = Scene(cam, light, dm, int(pairs))
def render(split, n):
    vids, ys, conf = [], [], []
    for i in range(n):
        label, st, ds, _p, rng = _plan(0, split, i, confound, scene.still_pairs)
        vids.append(_render(label, st, ds, 8, 64, rng, scene)); ys.append(label); conf.append((st, ds))
    render.confounders = conf
    return vids, torch.tensor(ys)
t0 = time.time()
tr, ytr = render("train", 720); train_conf = render.confounders
ti, yi = render("test_id", 120); to, yo = render("test_ood", 120)
weights = None
if max_weight > 0:
    from pcmci.engine.propensity import propensity_weights
    k = len(activities(scene.still_pairs)); own = confound + (1 - confound) / k; other = (1 - confound) / k
    lik = torch.tensor([[(own if b == y else other) * (own if d == y else other) for y in range(k)] for b, d in train_conf])
    p_label = (lik / lik.sum(1, keepdim=True))[torch.arange(720), ytr]  # P(y|bg,d) with a uniform P(y)
    weights = propensity_weights(p_label, ytr, max_weight).float()
    print("exact weights: ESS", round(float(weights.sum() ** 2 / (weights ** 2).sum())), "max", round(float(weights.max()), 2), flush=True)
print("render", round(time.time() - t0), "s", flush=True)
def clip(v, train, g):
    idx = segment_indices(len(v), 8, train, g)
    return preprocess(v[idx], 64)
torch.manual_seed(0)
cfg = preset("tiny").model; cfg.stages = []
model = build_model(cfg, list(activities(scene.still_pairs)), [])
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.05)
steps = epochs * math.ceil(720 / 8)
sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_with_warmup(steps, math.ceil(720 / 8)))
g = torch.Generator().manual_seed(0)
for e in range(epochs):
    model.train(); perm = torch.randperm(720, generator=g); correct = 0
    for b in range(0, 720, 8):
        ids = perm[b:b + 8]
        x = torch.stack([clip(tr[i], True, g) for i in ids]); y = ytr[ids]
        if mix > 0:  # the context of other classes' clips, drawn from the training population, under the same label
            partner = torch.randint(720, (len(ids),), generator=g)
            lam = torch.rand(len(ids), generator=g) * mix
            other = torch.stack([clip(tr[j], True, g) for j in partner])
            x = (1 - lam)[:, None, None, None, None] * x + lam[:, None, None, None, None] * other
        out = model(x); loss = model.loss(out, y, weights=None if weights is None else weights[ids])
        opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step(); sched.step()
        correct += int((out["logits"].argmax(-1) == y).sum())
    if e % 5 == 4 or e == epochs - 1:
        model.eval()
        with torch.no_grad():
            acc = lambda vs, ys: float((model(torch.stack([clip(v, False, None) for v in vs]))["logits"].argmax(-1) == ys).float().mean())
            print(f"epoch {e} train {correct/720:.3f} id {acc(ti, yi):.3f} ood {acc(to, yo):.3f} t={time.time()-t0:.0f}", flush=True)
