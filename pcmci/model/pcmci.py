"""PCMCI: frozen CLIP + trainable TimeSformer + the causal stages in the configured order + the head.

State flowing through the stages: texts ``t[B,L,D]`` and video tokens ``v[B,N,D]``, both entering on one scale:
``t = LN(T)`` from the frozen CLIP text embeddings ``T`` (a buffer; a parameter with ``learn_text``) and
``v = LN(V)`` from the TimeSformer (LayerNorm without affine weights). ``ich``: t <- ICH(t, VP);
``ici``: t <- ICI(t); ``ivc``: v <- IVC(v, t). Any subset, any order; ``stages=[]`` is the no-intervention
baseline. The head scores the C class rows of the final texts (plus the A atomic-action rows when the auxiliary
loss is on) against the final video tokens.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from .clip import FrozenCLIP
from .head import CrossAttentionHead
from .ich import ICH
from .ici import ICI
from .ivc import IVC
from .timesformer import TimeSformer


class PCMCI(nn.Module):
    """``forward(frames[B,F,3,H,W] in [0,1]) -> {"logits": [B,C], "aux_logits": [B,A'], "align_loss": []}``.

    ``classes`` are the C class names, ``actions`` the A auxiliary atomic-action / step texts.
    """

    def __init__(self, cfg: ModelConfig, classes: list[str], actions: list[str] | None = None) -> None:
        super().__init__()
        if not classes:
            raise ValueError("PCMCI needs at least one class name")
        self.cfg = cfg
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
        self.ich = ICH(cfg.ich, dim) if "ich" in self.order else None
        self.ici = ICI(cfg.ici, dim) if "ici" in self.order else None
        tokens = cfg.timesformer.frames
        self.ivc = IVC(cfg.ivc, dim, tokens, cfg.ici.mlp_ratio) if "ivc" in self.order else None
        self.num_queries = len(self.classes) + (len(self.actions) if cfg.head.aux_weight > 0 else 0)
        self.head = CrossAttentionHead(cfg.head, dim, self.num_queries)

    def inputs(self, video: Tensor, batch: int) -> tuple[Tensor, Tensor]:
        """Stage inputs on one scale: ``(LN(T) [B,L,D], LN(V) [B,N,D])``."""
        dim = video.shape[-1]
        return F.layer_norm(self.text, (dim,)).expand(batch, -1, -1), F.layer_norm(video, (dim,))

    def stage_forward(self, t: Tensor, v: Tensor, vp: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """Run the stages in order: -> (texts ``[B,L,D]``, video ``[B,N,D]``, alignment loss). ``vp`` (the CLIP
        frame embeddings ``[B,F,D]``) is only read by ICH."""
        align = v.new_zeros(())
        for name in self.order:
            if name == "ich":
                t = self.ich(t, vp)
            elif name == "ici":
                t = self.ici(t)
            else:
                v, align = self.ivc(v, t)
        return t, v, align

    def encode_video(self, frames: Tensor) -> Tensor:
        """TimeSformer tokens of ``frames[B,F,3,H,W]``. With IVC's ``static_input`` the encoder sees
        ``X_f - mean_f X_f``: what persists over the whole clip (background, lighting, a still object, the carrier
        of C) is taken out before the encoder, so it cannot enter V through interactions with the motion."""
        if self.ivc is not None and self.cfg.ivc.static_input:
            frames = frames - frames.mean(1, keepdim=True)
        return self.video(frames)

    def forward(self, frames: Tensor) -> dict[str, Tensor]:
        if frames.dim() != 5 or frames.shape[2] != 3:
            raise ValueError(f"PCMCI expects frames [B,F,3,H,W], got {list(frames.shape)}")
        frames = frames.to(self.text.dtype)  # float32, or float64 under run.dtype=float64
        vp = self.clip.encode_frames(frames) if self.ich is not None and self.ich.reads_frames else None
        t, v = self.inputs(self.encode_video(frames), frames.shape[0])
        t, v, align = self.stage_forward(t, v, vp)
        scores = self.head(t[:, : self.num_queries], v)
        c = len(self.classes)
        return {"logits": scores[:, :c], "aux_logits": scores[:, c:], "align_loss": align}

    def probabilities(self, logits: Tensor) -> Tensor:
        """Class scores ``[B,C]``: softmax for single-label, per-class sigmoid for multi-label."""
        return torch.sigmoid(logits) if self.cfg.multilabel else torch.softmax(logits, dim=-1)

    def loss(self, out: dict[str, Tensor], target: Tensor, steps: Tensor | None = None) -> Tensor:
        """Classification loss (CE, or BCE when multi-label) + optional atomic-action BCE and alignment terms.

        ``target`` is ``[B]`` class indices, or ``[B,C]`` multi-hot when ``cfg.multilabel``; ``steps[B,A]``.
        """
        logits = out["logits"].float()
        if self.cfg.multilabel:
            loss = F.binary_cross_entropy_with_logits(logits, target.float())
        else:
            loss = F.cross_entropy(logits, target)
        if self.cfg.head.aux_weight > 0 and steps is not None and steps.shape[-1] > 0:
            loss = loss + self.cfg.head.aux_weight * F.binary_cross_entropy_with_logits(
                out["aux_logits"].float(), steps.float()
            )
        if self.cfg.ivc.align_weight > 0:
            loss = loss + self.cfg.ivc.align_weight * out["align_loss"]
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

        ICH's strata cluster the proxy ``H`` of every label in every clip; IVC's cluster the relation-encoded
        video tokens ``V'``. Stages are fitted in order, each on the texts the earlier stages produce.
        Returns the number of feature vectors each dictionary was fitted on.
        """
        was_training = self.training
        self.eval()
        batches = [f.to(self.text.dtype) for f in batches]
        cached = [(self.clip.encode_frames(f) if self.ich is not None else None,  # VP is read by ICH alone
                   *self.inputs(self.encode_video(f), f.shape[0])) for f in batches]
        if not cached:
            raise ValueError("build_dictionaries needs at least one batch of frames")
        texts = [t for _, t, _ in cached]
        videos = [v for _, _, v in cached]
        used: dict[str, int] = {}
        for name in self.order:
            if name == "ich":
                feats = torch.cat([self.ich.proxy(t, vp).flatten(0, 1) for t, (vp, _, _) in zip(texts, cached)])
                self.ich.dictionary.fit(feats, seed)
                used[name] = feats.shape[0]
                texts = [self.ich(t, vp) for t, (vp, _, _) in zip(texts, cached)]
            elif name == "ici":
                texts = [self.ici(t) for t in texts]
            else:
                feats = torch.cat([self.ivc.encode(v, t)[0].flatten(0, 1) for v, t in zip(videos, texts)])
                self.ivc.dictionary.fit(feats, seed)
                used[name] = feats.shape[0]
                videos = [self.ivc(v, t)[0] for v, t in zip(videos, texts)]
        self.train(was_training)
        return used

    @classmethod
    def from_pretrained(cls, folder: str) -> PCMCI:
        """The eval-mode model that ``pcmci export`` wrote to ``folder`` (str or Path): ``config.json`` (the run's
        config), ``labels.json`` (classes, actions), ``model.safetensors`` (every weight, dictionaries included)."""
        from pathlib import Path

        from safetensors import SafetensorError
        from safetensors.torch import load_model

        from ..config import from_dict
        from ..data.records import LabelSet, read_json

        folder = Path(folder)
        missing = [n for n in ("config.json", "labels.json", "model.safetensors") if not (folder / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder} is not an exported PCMCI model: missing {', '.join(missing)}")
        cfg = from_dict(read_json(folder / "config.json"))
        labels = LabelSet.load(folder / "labels.json")
        model = cls(cfg.model, labels.classes, labels.actions)
        try:
            load_model(model, folder / "model.safetensors", strict=True)
        except SafetensorError as exc:
            raise ValueError(f"{folder / 'model.safetensors'} is not a readable .safetensors file: {exc}") from exc
        return model.eval()


def build_model(cfg: ModelConfig, classes: list[str], actions: list[str] | None = None) -> PCMCI:
    """The one entry point for models: ``build_model(preset('tiny').model, classes, actions)``."""
    return PCMCI(cfg, classes, actions)
