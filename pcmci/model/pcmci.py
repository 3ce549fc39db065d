"""PCMCI: frozen CLIP + trainable TimeSformer + the causal stages in the configured order + the head.

State flowing through the stages (:class:`~pcmci.model.state.StageState`): texts ``t[B,L,D]`` and video tokens
``v[B,N,D]``, both entering on one scale: ``t = LN(T)`` from the frozen CLIP text embeddings ``T`` (a buffer; a
parameter with ``learn_text``) and ``v = LN(V)`` from the TimeSformer (LayerNorm without affine weights), plus the
CLIP frames VP when a stage reads them. ``ich``: t <- ICH(t, VP); ``ici``: t <- ICI(t); ``ivc``: v <- IVC(v, t).
Every stage is ``forward(state) -> state`` from one registry (``pcmci.model.stages``); any subset, any order;
``stages=[]`` is the no-intervention baseline. The head scores the C class rows of the final texts (plus the A
atomic-action rows when the auxiliary loss is on) against the final video tokens.

Training with the backdoor weights (``backdoor.reweight``): :meth:`PCMCI.loss` takes per-clip weights
``P(y)/P(y|s)`` estimated by the engine (``pcmci.engine.propensity``).
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import STAGE_NAMES, ModelConfig
from ..errors import ConfigError, WeightsError
from .clip import FrozenCLIP
from .head import CrossAttentionHead
from .stages import StageSizes, build_stage
from .state import StageState
from .timesformer import TimeSformer


class PCMCI(nn.Module):
    """``forward(frames[B,F,3,H,W] in [0,1]) -> {"logits": [B,C], "aux_logits": [B,A'], "align_loss": []}``.

    ``classes`` are the C class names, ``actions`` the A auxiliary atomic-action / step texts.
    """

    def __init__(self, cfg: ModelConfig, classes: list[str], actions: list[str] | None = None) -> None:
        super().__init__()
        if not classes:
            raise ValueError("PCMCI needs at least one class name")
        self.cfg = cfg  # the config it was built from, for readers outside (profiler, diagnose); never read below
        self.multilabel, self.static_input = cfg.multilabel, cfg.ivc.static_input
        self.aux_weight, self.align_weight = cfg.head.aux_weight, cfg.ivc.align_weight
        self.classes, self.actions = list(classes), list(actions or [])
        self.order = list(cfg.stages)
        self.clip = FrozenCLIP(cfg.clip)
        dim = self.clip.embed_dim
        self.video = TimeSformer(cfg.timesformer, dim)
        text = self.clip.encode_text(self.classes + self.actions).clone()
        if cfg.learn_text:
            self.text = nn.Parameter(text)
        else:
            self.register_buffer("text", text)
        sizes = StageSizes(dim, cfg.timesformer.frames)
        for name in STAGE_NAMES:  # model.ich / .ici / .ivc: the stage, or None when not configured
            setattr(self, name, build_stage(name, cfg, sizes) if name in self.order else None)
        self.num_queries = len(self.classes) + (len(self.actions) if cfg.head.aux_weight > 0 else 0)
        self.head = CrossAttentionHead(cfg.head, dim, self.num_queries)

    def stages(self) -> list[nn.Module]:
        """The configured stages in order."""
        return [getattr(self, name) for name in self.order]

    @property
    def reads_frames(self) -> bool:
        """Whether a stage's ``forward`` reads the CLIP frames VP."""
        return any(stage.reads_frames for stage in self.stages())

    def initial_state(self, frames: Tensor, with_frames: bool | None = None) -> StageState:
        """The stage inputs of ``frames[B,F,3,H,W]`` on one scale: ``LN(T) [B,L,D]``, ``LN(V) [B,N,D]`` and VP
        ``[B,F,D]`` when a stage reads it (``with_frames`` overrides)."""
        with_frames = self.reads_frames if with_frames is None else with_frames
        video = self.encode_video(frames)
        dim, batch = video.shape[-1], frames.shape[0]
        return StageState(F.layer_norm(self.text, (dim,)).expand(batch, -1, -1), F.layer_norm(video, (dim,)),
                          self.clip.encode_frames(frames) if with_frames else None, {})

    def run_stages(self, state: StageState) -> StageState:
        """The configured stages in order, each ``forward(state) -> state``."""
        for stage in self.stages():
            state = stage(state)
        return state

    def encode_video(self, frames: Tensor) -> Tensor:
        """TimeSformer tokens of ``frames[B,F,3,H,W]``. Only under the ablation switch ``model.ivc.static_input``
        does the encoder see ``X_f - mean_f X_f`` (the clip's mean frame removed: still causes go with it)."""
        if self.ivc is not None and self.static_input:
            frames = frames - frames.mean(1, keepdim=True)
        return self.video(frames)

    def forward(self, frames: Tensor) -> dict[str, Tensor]:
        """``frames[B,F,3,H,W]`` -> ``logits[B,C]``, ``aux_logits[B,A']``, ``align_loss``."""
        if frames.dim() != 5 or frames.shape[2] != 3:
            raise ValueError(f"PCMCI expects frames [B,F,3,H,W], got {list(frames.shape)}")
        frames = frames.to(self.text.dtype)  # float32, or float64 under run.dtype=float64
        state = self.run_stages(self.initial_state(frames))
        scores = self.head(state.texts[:, : self.num_queries], state.video)
        c = len(self.classes)
        return {"logits": scores[:, :c], "aux_logits": scores[:, c:],
                "align_loss": state.losses.get("align", state.video.new_zeros(()))}

    def probabilities(self, logits: Tensor) -> Tensor:
        """Class scores ``[B,C]``: softmax for single-label, per-class sigmoid for multi-label."""
        return torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=-1)

    def loss(self, out: dict[str, Tensor], target: Tensor, steps: Tensor | None = None,
             weights: Tensor | None = None) -> Tensor:
        """Classification loss (CE, or BCE when multi-label) + optional atomic-action BCE and alignment terms.

        ``target`` is ``[B]`` class indices, or ``[B,C]`` multi-hot when ``multilabel``; ``steps[B,A]``;
        ``weights[B]`` per-clip weights of the single-label CE (the backdoor; mean 1 over the training split).
        """
        logits = out["logits"].float()
        if self.multilabel:
            loss = F.binary_cross_entropy_with_logits(logits, target.float())
        elif weights is not None:  # the backdoor: the clip's weight P(y)/P(y|s) (pcmci.engine.propensity)
            loss = (weights.to(logits.dtype) * F.cross_entropy(logits, target, reduction="none")).mean()
        else:
            loss = F.cross_entropy(logits, target)
        if self.aux_weight > 0 and steps is not None and steps.shape[-1] > 0:
            loss = loss + self.aux_weight * F.binary_cross_entropy_with_logits(
                out["aux_logits"].float(), steps.float()
            )
        if self.align_weight > 0:
            loss = loss + self.align_weight * out["align_loss"]
        return loss

    def dictionaries(self) -> dict[str, nn.Module]:
        """The k-means dictionaries of the configured stages, by stage name."""
        found = {"ich": self.ich, "ivc": self.ivc}
        return {name: stage.dictionary for name, stage in found.items() if stage is not None}

    @property
    def dictionaries_ready(self) -> bool:
        return all(d.ready for d in self.dictionaries().values())

    @torch.no_grad()
    def build_dictionaries(self, batches: Iterable[Tensor], seed: int = 0) -> dict[str, int]:
        """Fit the k-means strata from training clips ``frames[B,F,3,H,W]`` (a random sample of the split).

        Each stage with a dictionary is fitted on its ``dictionary_features`` of the states the earlier stages
        produce (ICH: the proxy ``H`` of every label in every clip; IVC: the relation-encoded tokens ``V'``).
        Returns the number of feature vectors each dictionary was fitted on.
        """
        was_training = self.training
        self.eval()
        needs_frames = self.ich is not None  # ICH's proxy reads VP, even when its forward does not
        states = [self.initial_state(f.to(self.text.dtype), needs_frames) for f in batches]
        if not states:
            raise ValueError("build_dictionaries needs at least one batch of frames")
        used: dict[str, int] = {}
        for name, stage in zip(self.order, self.stages()):
            feats = [stage.dictionary_features(s) for s in states]
            if feats[0] is not None:
                stage.dictionary.fit(torch.cat(feats), seed)
                used[name] = sum(f.shape[0] for f in feats)
            states = [stage(s) for s in states]
        self.train(was_training)
        return used

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> PCMCI:
        """The eval-mode model that ``pcmci export`` wrote to ``folder``: ``config.json`` (the run's config),
        ``labels.json`` (classes, actions), ``model.safetensors`` (every weight, dictionaries included, and the
        label names it was exported with). An export that does not fit together (labels.json edited, weights of
        another config) is one error naming the file and the first difference."""
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_model

        from ..config import from_dict
        from ..data.records import LabelSet, read_json
        from .clip import names_a_file

        folder = Path(folder)
        missing = [n for n in ("config.json", "labels.json", "model.safetensors") if not (folder / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder} is not an exported PCMCI model: missing {', '.join(missing)}")
        weights = folder / "model.safetensors"
        values = read_json(folder / "config.json")
        if not isinstance(values, dict):
            raise ConfigError(f"{folder / 'config.json'}: expected a JSON object (the run's config), got a "
                              f"{type(values).__name__}")
        cfg = from_dict(values)
        clip = cfg.model.clip
        if clip.pretrained and names_a_file(clip.pretrained) and not Path(clip.pretrained).expanduser().is_file():
            clip.pretrained = None  # the export holds CLIP's tensors: the file trained from need not be on this machine
        labels = LabelSet.load(folder / "labels.json")
        try:
            with safe_open(str(weights), framework="pt") as f:
                recorded = f.metadata() or {}
            for key in ("classes", "actions"):
                if key in recorded:  # exports written before the names were recorded are taken as they are
                    _check_exported_names(folder, key, recorded[key], getattr(labels, key))
            model = cls(cfg.model, labels.classes, labels.actions)
            absent, unexpected = load_model(model, weights, strict=False)
        except SafetensorError as exc:
            raise WeightsError(f"{weights} is not a readable .safetensors file: {exc}") from exc
        except RuntimeError as exc:  # load_state_dict's multi-line report of tensors of another shape
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            detail = next((line for line in lines if line.startswith("size mismatch for")), lines[-1] if lines else "")
            raise WeightsError(f"{weights} does not fit the model {folder / 'config.json'} and labels.json build: "
                               f"{detail.rstrip('.')}") from exc
        if absent or unexpected:
            first = (f"it lacks {sorted(absent)[0]!r}" if absent
                     else f"it holds {sorted(unexpected)[0]!r}, which that model has not")
            raise WeightsError(f"{weights} does not fit the model {folder / 'config.json'} and labels.json build: "
                               f"{first} ({len(absent)} tensors missing, {len(unexpected)} unexpected)")
        return model.eval()


def _check_exported_names(folder: Path, key: str, recorded: str, given: list[str]) -> None:
    """``WeightsError`` naming the first entry of ``labels.json``'s ``key`` list that differs from the names
    ``pcmci export`` recorded (as JSON) in ``model.safetensors``: edited labels would name every prediction wrongly."""
    try:
        names = json.loads(recorded)
    except json.JSONDecodeError:
        names = None
    if not isinstance(names, list):
        raise WeightsError(f"{folder / 'model.safetensors'}: its {key!r} metadata is not a JSON list of names")
    if names == given:
        return
    i = next((i for i, (a, b) in enumerate(zip(names, given)) if a != b), min(len(names), len(given)))
    now = repr(given[i]) if i < len(given) else "absent"
    was = repr(names[i]) if i < len(names) else "absent"
    raise WeightsError(f"{folder / 'labels.json'} does not list the {key} {folder / 'model.safetensors'} was exported "
                       f"with: {key}[{i}] is {now}, exported {was} ({len(given)} {key} against {len(names)}); "
                       "restore the exported labels.json")


def build_model(cfg: ModelConfig, classes: list[str], actions: list[str] | None = None) -> PCMCI:
    """The one entry point for models: ``build_model(preset('tiny').model, classes, actions)``."""
    return PCMCI(cfg, classes, actions)
