"""How much of the OOD population the training split supports (no rendering; the generator's own draws): per scene,
the share of clips whose background and distractor are both another class's, in train and in test_ood, and what
exact backdoor weights P(y)/P(y|bg,d) make of the background's association with the label; last, what
``pcmci.data.synthetic.support`` reports for the demo set at confound 0.9 and 0.5.

    .venv/bin/python docs/results/intervention-ceiling/positivity.py > docs/results/intervention-ceiling/logs/positivity.log
"""
import torch

import pcmci.data.synthetic as synthetic
from exact import label_probability  # this folder (on sys.path when run as a script)
from pcmci.data.synthetic import activities
from pcmci.engine.propensity import propensity_weights

full = dict(synthetic.ACTIVITIES)
for label_set, drop in (("all (the demo scene, 7 classes)", ()), ("easy (5 classes)", ("make tea", "make coffee"))):
    synthetic.ACTIVITIES.clear()
    synthetic.ACTIVITIES.update({name: steps for name, steps in full.items() if name not in drop})
    k, confound = len(activities(1)), 0.9
    print(f"== {label_set}: chance {1 / k:.3f}")
    rows = synthetic.confounder_table(0, 720, 240, confound, still_pairs=1)
    shares = synthetic.support(rows)
    for split, n in (("train", 720), ("test_ood", 120)):
        print(f"{split}: {round(shares[split] * n)} of {n} clips ({shares[split]:.1%}) have neither confounder of "
              "their own class")
    train = [r for r in rows if r["split"] == "train"]
    y, bg, d = (torch.tensor([r[key] for r in train]) for key in ("label", "background", "distractor"))
    p_label = label_probability(list(zip(bg.tolist(), d.tolist())), y, confound, k)
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
