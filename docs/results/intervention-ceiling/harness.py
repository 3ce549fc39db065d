"""In-memory intervention harness: render a synthetic scene (no codec), train the ``tiny`` baseline with one
training-time intervention, report train / ID / OOD accuracy, the OOD confusion matrix and (``--probe``) a
last-layer refit on the frozen encoder.

Every intervention is given the generator's *exact* confounder ids and confounding rule, so what it reaches is
the ceiling of the mechanism on this data, not of an estimate of it (IVC estimates the same weights with
single-frame references). Run from the repository root, one thread per run:

    python docs/results/intervention-ceiling/harness.py --activities easy --confound 0.9 --weights 10
"""
import argparse
import ast
import math
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from exact import label_distribution, label_probability  # this folder (on sys.path when run as a script)

import pcmci.data.synthetic as synthetic
from pcmci.config import preset
from pcmci.data.datasets import preprocess
from pcmci.data.sampling import segment_indices
from pcmci.data.synthetic import Scene, _plan, _render, activities
from pcmci.engine.dictionaries import refit_epochs, sample_indices
from pcmci.engine.propensity import propensity_weights
from pcmci.engine.train import cosine_with_warmup
from pcmci.model import build_model

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--camera", type=float, default=0.3)
p.add_argument("--lighting", type=float, default=0.3)
p.add_argument("--distractor-motion", type=float, default=0.5)
p.add_argument("--still-pairs", type=int, default=1)
p.add_argument("--activities", choices=("all", "easy"), default="all",
               help="easy: drop 'make tea' and 'make coffee', so no two classes differ only in the order of actions")
p.add_argument("--confound", type=float, default=0.9)
p.add_argument("--joint", action="store_true",
               help="one context per clip: the distractor's id is the background's (a kitchen comes with its own "
                    "objects), so the two confounders are one and the training split holds off-class contexts")
p.add_argument("--epochs", type=int, default=30)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--n-train", type=int, default=720)
p.add_argument("--seed", type=int, default=0, help="the model's initialisation and the batch order (the data stay)")
p.add_argument("--weights", type=float, default=0.0,
               help="> 0: exact backdoor weights P(y)/P(y|bg,d) clipped at this value (1e9: unclipped)")
p.add_argument("--mix", choices=("none", "any-clip", "still-frame", "same-class"), default="none",
               help="any-clip: blend another training clip in; still-frame: a frame of another clip, tiled over "
                    "time (StillMix-like); same-class: a clip of the same class drawn by its backdoor weight")
p.add_argument("--mix-range", type=float, nargs=2, default=(0.0, 0.5), metavar=("LO", "HI"),
               help="the partner's blend weight ~ U(LO, HI); the label is always the clip's own")
p.add_argument("--reverse", action="store_true",
               help="also train on each clip played backwards as its own class (same context, another motion)")
p.add_argument("--adversary", type=float, default=0.0,
               help="> 0: an adversary reads the encoder's tokens and the label and predicts the exact background and "
                    "distractor ids; the encoder gets its gradient reversed at this weight (Z independent of C given Y)")
p.add_argument("--pretrain", type=int, default=0,
               help="> 0: first train the video encoder this many epochs on single atomic actions (another draw of the "
                    "same scene, backgrounds and distractors independent of the action: external data without the "
                    "target's confounding, as Kinetics is for Breakfast), then fine-tune on the activities")
p.add_argument("--pretrain-clips", type=int, default=720)
p.add_argument("--freeze-video", action="store_true", help="train only the head on the (pretrained) video encoder")
p.add_argument("--stages", nargs="*", default=[], help="causal stages of the model (default none: the baseline)")
p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
               help="model config overrides, e.g. ivc.mediator_only=false (the value is read as a Python literal)")
p.add_argument("--ivc-drop", choices=("relation", "fusion", "relation-residual", "mediator", "population"),
               default=None,
               help="split IVC's cost to learning: 'relation' skips its relation encoder (V' = V), 'fusion' skips the "
                    "V* step (V* = V'), 'relation-residual' adds the encoder's output to its input (V' = V + F(V, M); "
                    "written for the post-norm IVC before the pre-norm change, where V' was LN(...)), 'mediator' / "
                    "'population' feed zeros for M^ / V^ into the fusion")
p.add_argument("--poe", action="store_true",
               help="product of experts: train on logits + log P(y|bg,d) (the exact confounder-only expert), "
                    "predict from the model's logits alone (the context's additive effect left out)")
p.add_argument("--probe", action="store_true",
               help="refit a logistic last layer on the frozen encoder's tokens, unweighted and with exact weights")
args = p.parse_args()
torch.set_num_threads(1)
if args.activities == "easy":
    for name in ("make tea", "make coffee"):
        synthetic.ACTIVITIES.pop(name)
scene = Scene(args.camera, args.lighting, args.distractor_motion, args.still_pairs)
names = list(activities(scene.still_pairs))
k = len(names)
print("classes", names, "| args", vars(args), flush=True)


def render(split: str, n: int) -> tuple[list[np.ndarray], torch.Tensor, list[tuple[int, int]]]:
    videos, labels, confounders = [], [], []
    for i in range(n):
        label, style, distractor, _, rng = _plan(0, split, i, args.confound, scene.still_pairs, joint=args.joint)
        videos.append(_render(label, style, distractor, 8, 64, rng, scene))
        labels.append(label)
        confounders.append((style, distractor))
    return videos, torch.tensor(labels), confounders


def clip(video: np.ndarray, train: bool, g: torch.Generator | None) -> torch.Tensor:
    return preprocess(video[segment_indices(len(video), 8, train, g)], 64)


t0 = time.time()
n = args.n_train
tr, ytr, conf = render("train", n)
ti, yi, _ = render("test_id", 120)
to, yo, _ = render("test_ood", 120)
p_label = label_probability(conf, ytr, args.confound, k, args.joint)
exact = propensity_weights(p_label, ytr, args.weights if args.weights > 0 else 10.0)
log_bias = label_distribution(conf, args.confound, k, args.joint).float().log()
if args.weights > 0:
    print(f"exact weights: ESS {float(exact.sum() ** 2 / (exact ** 2).sum()):.0f} of {n}, max {float(exact.max()):.1f}")
print(f"render {time.time() - t0:.0f} s", flush=True)

torch.manual_seed(args.seed)
cfg = preset("tiny").model
cfg.stages = list(args.stages)
for item in args.set:
    key, value = item.split("=", 1)
    *path, leaf = key.split(".")
    node = cfg
    for part in path:
        node = getattr(node, part)
    setattr(node, leaf, ast.literal_eval(value))
if args.ivc_drop == "relation":
    from pcmci.model.ivc import IVC
    IVC.relate = lambda self, v, m: (v, v.new_zeros(()))
elif args.ivc_drop == "fusion":
    from pcmci.model.ivc import IVC
    IVC.intervene = lambda self, v_prime, m: v_prime
elif args.ivc_drop in ("mediator", "population"):
    from pcmci.model.dictionary import nwgm_attention
    from pcmci.model.ivc import IVC

    def intervene_without(self, v_prime, m):
        """The default fusion with one of its two inputs (``M^`` or ``V^``) replaced by zeros."""
        h = self.norm(v_prime)
        m_hat = self.mediator_weights(h, m) @ m
        z, prior = self.dictionary()
        v_hat = nwgm_attention(self.query_proj(h), self.key_proj(z), self.value_proj(z), prior)
        if args.ivc_drop == "mediator":
            m_hat = torch.zeros_like(m_hat)
        else:
            v_hat = torch.zeros_like(v_hat)
        return v_prime + self.fuse_proj(torch.cat([m_hat, v_hat], dim=-1))
    IVC.intervene = intervene_without
elif args.ivc_drop == "relation-residual":
    from pcmci.model.ivc import IVC
    relate = IVC.relate
    IVC.relate = lambda self, v, m: (lambda out: (v + out[0], out[1]))(relate(self, v, m))
model = build_model(cfg, names + ([f"{c} reversed" for c in names] if args.reverse else []), [])


def pretrain_video_encoder() -> None:
    """Single-action clips (seed 1), 8 classes, confound 0; the trained encoder's weights go into ``model.video``."""
    saved = dict(synthetic.ACTIVITIES)
    synthetic.ACTIVITIES.clear()
    synthetic.ACTIVITIES.update({a: [a] for a in synthetic.ACTIONS})
    pre_scene = Scene(args.camera, args.lighting, args.distractor_motion, 0)
    clips, labels = [], []
    for i in range(args.pretrain_clips):
        label, style, distractor, _, rng = _plan(1, "train", i, 0.0, 0)
        clips.append(_render(label, style, distractor, 8, 64, rng, pre_scene))
        labels.append(label)
    synthetic.ACTIVITIES.clear()
    synthetic.ACTIVITIES.update(saved)
    labels_t = torch.tensor(labels)
    pre = build_model(cfg, list(synthetic.ACTIONS), [])
    pre_opt = torch.optim.AdamW([q for q in pre.parameters() if q.requires_grad], lr=args.lr, weight_decay=0.05)
    m = len(clips)
    pre_sched = torch.optim.lr_scheduler.LambdaLR(
        pre_opt, cosine_with_warmup(args.pretrain * math.ceil(m / 8), math.ceil(m / 8)))
    pg = torch.Generator().manual_seed(args.seed + 1000)
    for epoch in range(args.pretrain):
        pre.train()
        correct = 0
        order = torch.randperm(m, generator=pg)
        for b in range(0, m, 8):
            ids = order[b:b + 8]
            out = pre(torch.stack([clip(clips[i], True, pg) for i in ids]))
            loss = pre.loss(out, labels_t[ids])
            pre_opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(pre.parameters(), 1.0)
            pre_opt.step()
            pre_sched.step()
            correct += int((out["logits"].argmax(-1) == labels_t[ids]).sum())
        print(f"pretrain epoch {epoch} train {correct / m:.3f} t={time.time() - t0:.0f}", flush=True)
    model.video.load_state_dict(pre.video.state_dict())


if args.pretrain > 0:
    pretrain_video_encoder()
if args.freeze_video:
    model.video.requires_grad_(False)
opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=args.lr, weight_decay=0.05)
steps = args.epochs * math.ceil(n / 8)
sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_with_warmup(steps, math.ceil(n / 8)))
g = torch.Generator().manual_seed(args.seed)
conf_ids = torch.tensor(conf)


class Reverse(torch.autograd.Function):
    """Identity forward; the gradient times ``-scale`` backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None


tokens: list[torch.Tensor] = []
if args.adversary > 0:
    model.video.register_forward_hook(lambda module, inputs, output: tokens.append(output))
    dim = cfg.timesformer.width
    adversary = torch.nn.Sequential(torch.nn.LazyLinear(128), torch.nn.GELU(), torch.nn.Linear(128, 2 * k))
    adversary(torch.zeros(1, 8 * dim + k))
    adversary_opt = torch.optim.AdamW(adversary.parameters(), lr=args.lr, weight_decay=0.0)
loss_weights = exact.float() if args.weights > 0 and args.mix != "same-class" else None


def blend(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    if args.mix == "any-clip":
        other_ = torch.stack([clip(tr[j], True, g) for j in torch.randint(n, (len(ids),), generator=g)])
    elif args.mix == "still-frame":
        other_ = torch.stack([clip(tr[j], True, g)[torch.randint(8, (1,), generator=g)].expand(8, -1, -1, -1)
                              for j in torch.randint(n, (len(ids),), generator=g)])
    else:
        partners = [int(torch.multinomial(exact * (ytr == ytr[i]).double(), 1, generator=g)) for i in ids]
        other_ = torch.stack([clip(tr[j], True, g) for j in partners])
    lo, hi = args.mix_range
    lam = (lo + torch.rand(len(ids), generator=g) * (hi - lo))[:, None, None, None, None]
    return (1 - lam) * x + lam * other_


@torch.no_grad()
def predict(videos: list[np.ndarray]) -> torch.Tensor:
    model.eval()
    return torch.cat([model(torch.stack([clip(v, False, None) for v in videos[b:b + 60]]))["logits"][:, :k]
                      .argmax(-1) for b in range(0, len(videos), 60)])


schedule = preset("tiny")
schedule.optim.epochs = args.epochs


def fit_dictionaries(epoch: int) -> None:
    """The stages' k-means dictionaries on class-stratified training clips, at the epochs training refits them."""
    if not model.dictionaries() or epoch not in refit_epochs(schedule):
        return
    chosen = sample_indices(n, schedule.model.dictionaries.clips, args.seed, epoch, ytr.tolist())
    model.build_dictionaries([torch.stack([clip(tr[i], True, g) for i in chosen[b:b + 8]])
                              for b in range(0, len(chosen), 8)], seed=args.seed + epoch)


for epoch in range(args.epochs):
    fit_dictionaries(epoch)
    model.train()
    perm = torch.randperm(n, generator=g)
    correct = 0
    for b in range(0, n, 8):
        ids = perm[b:b + 8]
        x, y = torch.stack([clip(tr[i], True, g) for i in ids]), ytr[ids]
        if args.mix != "none":
            x = blend(x, ids)
        w = None if loss_weights is None else loss_weights[ids]
        if args.reverse:
            x, y = torch.cat([x, x.flip(1)]), torch.cat([y, y + k])
            w = None if w is None else torch.cat([w, w])
        tokens.clear()
        out = model(x)
        if args.poe:
            loss = torch.nn.functional.cross_entropy(out["logits"][:, :k] + log_bias[ids], y)
        else:
            loss = model.loss(out, y, weights=w)
        if args.adversary > 0:
            z = Reverse.apply(tokens[0][: len(ids)].flatten(1), args.adversary)
            guess = adversary(torch.cat([z, torch.nn.functional.one_hot(y[: len(ids)], k).float()], -1))
            c = conf_ids[ids]
            loss = loss + torch.nn.functional.cross_entropy(guess[:, :k], c[:, 0]) \
                + torch.nn.functional.cross_entropy(guess[:, k:], c[:, 1])
        opt.zero_grad()
        if args.adversary > 0:
            adversary_opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if args.adversary > 0:
            adversary_opt.step()
        sched.step()
        correct += int((out["logits"][: len(ids), :k].argmax(-1) == y[: len(ids)]).sum())
    if epoch % 5 == 4 or epoch == args.epochs - 1:
        id_acc = float((predict(ti) == yi).float().mean())
        ood_acc = float((predict(to) == yo).float().mean())
        print(f"epoch {epoch} train {correct / n:.3f} id {id_acc:.3f} ood {ood_acc:.3f} t={time.time() - t0:.0f}",
              flush=True)
confusion = torch.zeros(k, k, dtype=torch.long)
for a, b in zip(yo.tolist(), predict(to).tolist()):
    confusion[a, b] += 1
print("OOD confusion (rows: true)\n", confusion)
print(f"final: train {correct / n:.3f} id {id_acc:.3f} ood {ood_acc:.3f}")

if args.probe:
    @torch.no_grad()
    def features(videos: list[np.ndarray]) -> np.ndarray:
        model.eval()
        chunks = []
        for b in range(0, len(videos), 60):
            v = model.encode_video(torch.stack([clip(x, False, None) for x in videos[b:b + 60]]))
            chunks.append(torch.cat([v.mean(1), v.flatten(1)], -1))
        return torch.cat(chunks).numpy()
    f_tr, f_id, f_ood = features(tr), features(ti), features(to)
    for name, cap in (("none", None), ("exact clip 10", 10.0), ("exact unclipped", 1e9)):
        w = None if cap is None else propensity_weights(p_label, ytr, cap).numpy()
        for c in (0.01, 0.1, 1.0):
            fit = LogisticRegression(C=c, max_iter=3000).fit(f_tr, ytr.numpy(), sample_weight=w)
            print(f"probe {name} C={c}: id {fit.score(f_id, yi.numpy()):.3f} ood {fit.score(f_ood, yo.numpy()):.3f}")
