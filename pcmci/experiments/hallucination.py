"""The VLM's co-occurrence hallucination, measured: the paper's stove/apron test and ICH's view of it.

Masking test (paper, Fig. 1: "frying eggs" matches better when the stove is masked and the apron left). Frames of
held-out synthetic clips are rendered four ways with the same random draws (:func:`pcmci.data.captions.
render_pair`): as they are; with the activity's visible cause — hand and tool — left out ("cause masked"); with the
prop left out; with both left out. For a prop that belongs to the frame's own activity and for one that belongs to
another activity, the zero-shot probability of the prop's *co-occurring label* (the activity the prop goes with in
pretraining) under each rendering says whether the VLM reads the label off the prop: it hallucinates when masking
the cause leaves that probability as high or higher.

ICH's proxy: the weights ICH puts on each frame for each label (:meth:`pcmci.model.ich.ICH.overalignment`, no trained
weights involved) on diagnostic clips whose frames show the same room with the prop in half of them and without it
in the other half (the cause masked in all: only the prop differs). The mass of the prop's label row on the prop
frames is the share of its hallucination proxy that comes from the planted object; 0.5 means the proxy cannot tell
the prop from the background. Every proxy ICH offers is measured: ``plan`` (the transport plan ``L Q``: each frame's
mass shared among the labels by relative alignment), ``overalign`` (row softmax minus the plan), ``similarity``
(the row softmax alone: raw cosines compared across frames).
"""
from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import matplotlib
import numpy as np
import torch

from ..config import ClipConfig, ICHConfig
from ..data.captions import render_pair
from ..data.synthetic import PROPS, Scene, activities
from ..engine.vlm import MODEL, label_probabilities, to_clip_input
from ..errors import WeightsError
from ..model.clip import FrozenCLIP, locate_weights
from ..model.ich import ICH

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RENDERINGS = {"as is": frozenset(), "cause masked": frozenset({"actor"}), "prop masked": frozenset({"prop"}),
              "both masked": frozenset({"actor", "prop"})}


def masking_test(clip: FrozenCLIP, classes: list[str], scene: Scene, seed: int, clips: int,
                 frames: int = 2) -> dict:
    """Mean zero-shot P(co-occurring label) and accuracy per rendering, for own and foreign props (module doc)."""
    k = len(classes)

    @functools.cache
    def probabilities(index: int, shown: int | None, hide: frozenset[str]) -> torch.Tensor:
        # with the prop hidden the frames do not depend on which prop it was (tested), so both cases share them
        shots, _, _ = render_pair(seed, index, 0.0, scene, prop=0 if shown is None else shown, hide=hide,
                                  frames=frames)
        return label_probabilities(clip, shots, classes)

    result = {}
    for kind in ("own prop", "foreign prop"):
        rows: dict[str, list[torch.Tensor]] = {name: [] for name in RENDERINGS}
        labels, props = [], []
        for i in range(clips):
            label = i % k
            prop = label if kind == "own prop" else (label + 1 + (i // k) % (k - 1)) % k
            for name, hide in RENDERINGS.items():
                rows[name].append(probabilities(i, None if "prop" in hide else prop, hide))
            labels += [label] * frames
            props += [prop] * frames
        labels_t, props_t = torch.tensor(labels), torch.tensor(props)
        probs = {name: torch.cat(r) for name, r in rows.items()}
        at = torch.arange(len(props_t))
        result[kind] = {
            "p_cooccurring_label": {name: float(p[at, props_t].mean()) for name, p in probs.items()},
            "accuracy": {name: float((p.argmax(-1) == labels_t).float().mean()) for name, p in probs.items()},
            "share_rising_when_cause_masked": float((probs["cause masked"][at, props_t]
                                                     > probs["as is"][at, props_t]).float().mean()),
            "frames": len(labels),
        }
    return result


@torch.no_grad()
def ich_prop_mass(clip: FrozenCLIP, classes: list[str], scene: Scene, seed: int, clips: int,
                  ich_cfg: ICHConfig = ICHConfig(), frames: int = 8) -> dict:
    """ICH's proxy weights on the prop frames for the prop's label (module doc), for each proxy ICH offers (the
    configured one first); 0.5 = blind to the prop. ``"similarity"`` is read as ``softmax_F(S / eps)``."""
    texts = clip.encode_text(classes)
    proxies = [ich_cfg.proxy] + [p for p in ("plan", "overalign", "similarity") if p != ich_cfg.proxy]
    modules = {p: ICH(dataclasses.replace(ich_cfg, proxy=p), texts.shape[-1]) for p in proxies}
    k, half = len(classes), frames // 2
    mass: dict[str, list[float]] = {p: [] for p in proxies}
    example = None
    for i in range(clips):
        prop = i % k
        with_prop, _, _ = render_pair(seed, i, 0.0, scene, prop=prop, hide=frozenset({"actor"}), frames=half)
        without, _, _ = render_pair(seed, i, 0.0, scene, prop=prop, hide=frozenset({"actor", "prop"}), frames=half)
        shots = np.concatenate([with_prop, without])
        vp = clip.encode_frames(to_clip_input(shots)[None])
        for name, ich in modules.items():
            weights = ich.overalignment(texts[None], vp)[1]
            if name == "similarity":
                weights = torch.softmax(weights / ich_cfg.eps, dim=-1)
            mass[name].append(float(weights[0, prop, :half].sum()))
            if example is None:
                example = (shots, weights[0].numpy(), prop, name)
    return {"proxy": ich_cfg.proxy, "eps": ich_cfg.eps, "clips": clips, "example": example,
            "mass_on_prop_frames": {p: {"mean": float(np.mean(m)), "std": float(np.std(m))} for p, m in mass.items()}}


def _plot(report: dict, example: tuple, classes: list[str], out: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, kind in zip(axes, ("own prop", "foreign prop")):
        values = report["masking"][kind]["p_cooccurring_label"]
        bars = ax.bar(list(values), list(values.values()), color=["#4c72b0", "#c44e52", "#8c8c8c", "#55a868"])
        ax.bar_label(bars, fmt="%.3f", fontsize=8)
        ax.axhline(1 / len(classes), color="k", ls=":", lw=1, label="chance")
        ax.set(title=f"{kind}: zero-shot P(the prop's label)", ylim=(0, 1))
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "masking_test.png", dpi=120)
    plt.close(fig)
    shots, over, prop, proxy = example
    fig, axes = plt.subplots(2, 1, figsize=(8, 6), gridspec_kw={"height_ratios": [1, 2.2]})
    axes[0].imshow(np.concatenate(list(shots), axis=1))
    axes[0].set(title=f"diagnostic clip: {list(PROPS)[prop]} in the first half, the same room without it after")
    axes[0].axis("off")
    im = axes[1].imshow(over, cmap="viridis", aspect="auto")
    axes[1].set_yticks(range(len(classes)), classes, fontsize=7)
    axes[1].set(xlabel="frame", title=f"ICH proxy weights, proxy={proxy!r} (labels x frames)")
    fig.colorbar(im, ax=axes[1], fraction=0.03)
    fig.tight_layout()
    fig.savefig(out / "ich_overalignment.png", dpi=120)
    plt.close(fig)


def hallucination_report(weights: str | Path, out: str | Path, seed: int = 1000, clips: int = 70,
                         still_pairs: int = 1) -> dict:
    """Run both probes on the VLM at ``weights`` (loaded through ``model.clip.pretrained``); write
    ``hallucination.json``, ``hallucination.md`` and two PNGs under ``out``. Weights that resolve to no file (an
    empty name) are refused: the probes would measure a randomly initialised VLM."""
    found = locate_weights(MODEL, str(weights))
    if found.path is None:
        raise WeightsError(f"--hallucination {str(weights)!r} names no weights ({found.source}); give a weights file "
                           "or a tag such as pcmci-synth")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clip = FrozenCLIP(ClipConfig(name=MODEL, pretrained=str(weights)))
    scene = Scene(still_pairs=still_pairs)
    classes = list(activities(still_pairs))
    ich = ich_prop_mass(clip, classes, scene, seed, clips)
    example = ich.pop("example")
    report = {"weights": str(weights), "seed": seed, "clips": clips, "classes": classes,
              "props": {c: p for c, p in zip(classes, PROPS)},
              "masking": masking_test(clip, classes, scene, seed, clips), "ich_proxy": ich}
    _plot(report, example, classes, out)
    (out / "hallucination.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "hallucination.md").write_text(markdown(report))
    return report


def markdown(report: dict) -> str:
    lines = ["# The VLM's co-occurrence hallucination", "",
             f"Weights `{report['weights']}`; {report['clips']} held-out clips (seed {report['seed']}) per case.", "",
             "| prop | rendering | P(prop's label) | accuracy |", "|---|---|---:|---:|"]
    for kind, r in report["masking"].items():
        for name in RENDERINGS:
            lines.append(f"| {kind} | {name} | {r['p_cooccurring_label'][name]:.3f} | {r['accuracy'][name]:.3f} |")
    for kind, r in report["masking"].items():
        lines.append(f"\n{kind}: P(prop's label) rises when the cause is masked on "
                     f"{r['share_rising_when_cause_masked']:.1%} of {r['frames']} frames.")
    ich = report["ich_proxy"]
    lines += ["", f"ICH's proxy weights on the prop frames for the prop's label (half the frames show the prop, the "
              f"cause masked in all; 0.5 = blind to the prop; eps {ich['eps']}, {ich['clips']} clips):", "",
              "| proxy | mass on prop frames |", "|---|---:|"]
    for name, m in ich["mass_on_prop_frames"].items():
        mark = " (configured)" if name == ich["proxy"] else ""
        lines.append(f"| `{name}`{mark} | {m['mean']:.3f} ± {m['std']:.3f} |")
    lines += ["", "![masking](masking_test.png)", "![ICH](ich_overalignment.png)", ""]
    return "\n".join(lines)
