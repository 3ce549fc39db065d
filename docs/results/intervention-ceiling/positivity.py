"""How much of the OOD population the training split supports (no rendering; the generator's own draws): per scene,
the share of clips whose background and distractor are both another class's, in train and in test_ood, and what
exact backdoor weights P(y)/P(y|bg,d) make of the background's association with the label; last, what
``pcmci.data.synthetic.support`` reports for the demo set at confound 0.9 and 0.5.

    .venv/bin/python docs/results/intervention-ceiling/positivity.py > docs/results/intervention-ceiling/logs/positivity.log
"""
import torch

import pcmci.data.synthetic as synthetic
from pcmci.data.synthetic import _plan, activities
from pcmci.engine.propensity import propensity_weights

full = dict(synthetic.ACTIVITIES)
for label_set, drop in (("all (the demo scene, 7 classes)", ()), ("easy (5 classes)", ("make tea", "make coffee"))):
    synthetic.ACTIVITIES.clear()
    synthetic.ACTIVITIES.update({name: steps for name, steps in full.items() if name not in drop})
    k, confound = len(activities(1)), 0.9
    print(f"== {label_set}: chance {1 / k:.3f}")
    for split, n in (("train", 720), ("test_ood", 120)):
        rows = [_plan(0, split, i, confound, 1)[:3] for i in range(n)]
        both_off = sum(bg != y and d != y for y, bg, d in rows)
        print(f"{split}: {both_off} of {n} clips ({both_off / n:.1%}) have neither confounder of their own class")
    rows = [_plan(0, "train", i, confound, 1)[:3] for i in range(720)]
    y, bg, d = (torch.tensor(column) for column in zip(*rows))
    own, other = confound + (1 - confound) / k, (1 - confound) / k
    lik = torch.tensor([[(own if b == c else other) * (own if dd == c else other) for c in range(k)] for _, b, dd in rows])
    p_label = (lik / lik.sum(1, keepdim=True))[torch.arange(720), y]
    print(f"unweighted: P(bg = own class) {float((bg == y).double().mean()):.3f}")
    for cap in (10.0, 1e9):
        w = propensity_weights(p_label, y, cap)
        print(f"exact weights clipped at {cap:g}: effective size {float(w.sum() ** 2 / (w ** 2).sum()):.0f} of 720, "
              f"weighted P(bg = own class) {float((w * (bg == y)).sum() / w.sum()):.3f}, "
              f"P(distractor = own class) {float((w * (d == y)).sum() / w.sum()):.3f} (independence: {1 / k:.3f})")

synthetic.ACTIVITIES.clear()
synthetic.ACTIVITIES.update(full)
for confound in (0.9, 0.5):
    shares = synthetic.support(synthetic.confounder_table(0, 720, 240, confound, still_pairs=1))
    print(f"demo set at confound {confound}: support() " + ", ".join(f"{s} {v:.1%}" for s, v in shares.items()))
