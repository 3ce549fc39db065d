"""Configs as dataclasses, named presets, YAML files and dotted ``key=value`` overrides.

``load_config(path_or_preset, overrides)`` is the one entry point; unknown keys, unknown stages and
ill-typed values raise ``ConfigError`` naming the offending key. A field with a fixed set of values is typed
``Literal[...]``: the type is the one list of its choices, read by the coercion here and by the command line.
"""
from __future__ import annotations

import dataclasses
import logging
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError

log = logging.getLogger(__name__)

StageName = Literal["ich", "ici", "ivc"]
STAGE_NAMES: tuple[str, ...] = typing.get_args(StageName)
DatasetName = Literal["manifest", "breakfast", "coin", "charades"]
DictionaryKind = Literal["kmeans", "learned"]


@dataclass
class ClipConfig:
    """Frozen open_clip tower: ``name`` is an open_clip model config, ``pretrained`` a tag or a local path."""

    name: str = "pcmci-tiny-clip"
    pretrained: str | None = None
    cache_dir: str | None = None
    prompt: str = "a video of a person {}."


@dataclass
class TimeSformerConfig:
    """Divided space-time ViT (timm blocks); ``pretrained`` is a HF TimeSformer directory / ``model.safetensors`` /
    ``pytorch_model.bin``, a ``pcmci convert timesformer`` file, or a timm ViT checkpoint (inflated)."""

    img_size: int = 64
    patch_size: int = 16
    frames: int = 8
    width: int = 64
    depth: int = 2
    heads: int = 2
    mlp_ratio: float = 4.0
    drop_path: float = 0.0
    motion_embed: bool = False  # add a zero-init patch embedding of each frame's forward difference (not in the paper)
    style_mix: float = 0.0  # training: share of clips whose token statistics are mixed with another clip's (MixStyle)
    style_mix_alpha: float = 0.1  # lam ~ Beta(alpha, alpha), the mixing weight of a clip's own statistics
    pretrained: str | None = None


@dataclass
class ICHConfig:
    """OT-augmented backdoor on the texts. ``eps`` is both the Sinkhorn regularisation and the softmax temperature
    of the over-alignment proxy. ``adjust="population"`` (default) adds the prior expectation over the strata (the
    clips' proxies shape the strata, never their own texts: no clip-to-logit path outside the adjustment);
    ``"prior"`` also projects the clip's hallucinated direction out of the texts (a path from the clip's scene to
    the logits, kept for ablations), ``"posterior"`` is the pre-fix variant that feeds the clip's proxy forward.
    ``proxy="plan"`` (default): the transport plan weighs the frames of each label's hallucination proxy — on the
    shipped VLM it is the one of the three proxies that puts more than half its mass on the frames showing a
    planted co-occurring object (``docs/results/vlm/``)."""

    eps: float = 0.1
    iters: int = 50  # Sinkhorn iterations, a fixed count (compile- and CUDA-graph-friendly)
    ot_grad: bool = True  # backpropagate through the transport plan (false: the plan is a constant)
    proxy: Literal["overalign", "plan", "similarity"] = "plan"  # what weighs the frames of H; others for ablations
    adjust: Literal["population", "prior", "posterior"] = "population"
    dictionary: DictionaryKind = "kmeans"  # strata of H: k-means over the training population, or learned atoms
    dict_size: int = 256  # strata (atoms); fewer when the fit has under 4 features per atom


@dataclass
class ICIConfig:
    """Relation-aware backdoor on the texts: ``layers`` relation layers over K = ``bases`` relation bases."""

    bases: int = 8
    layers: int = 1
    mlp_ratio: float = 2.0


@dataclass
class IVCConfig:
    """Front-door on the video (its training-time backdoor weights are the ``backdoor`` section).

    ``mediator_only=true`` lets the clip reach the head only through P(m|V) (``V* = W_m M^ + V^ + E_pos``), an
    ablation variant: through a softmax over L label rows per token the encoder cannot learn a motion cause (trained
    on unconfounded clips it stays at chance, 0.23 vs the baseline's 0.83; ``docs/results/intervention-ceiling/``);
    the default ``false`` is ``V* = V' + W_f[M^; V^]`` on a residual stream that starts as the identity. ``static``
    (remove the clip's temporal-mean token before the relation encoder) and ``static_input`` (remove its mean frame
    before the video encoder) are a hand-written "what stands still is the confounder" model, kept only as ablation
    variants: they delete still causes and keep moving confounders.
    """

    bases: int = 8
    static: bool = False
    static_input: bool = False
    mediator_only: bool = False
    dictionary: DictionaryKind = "kmeans"  # population visual tokens: k-means over V' of the training split, or learned
    dict_size: int = 512
    align_weight: float = 0.0  # lambda of the alignment loss between video and transported text bases (0 = off)


@dataclass
class BackdoorConfig:
    """The training-time backdoor over what single frames show (``pcmci.engine.propensity``).

    Each training clip's loss is weighted by ``P(y) / P(y|s)``, ``s`` its frames one at a time, which estimates the
    risk of ``sum_c P(c) P(Y|X, c)``. ``reweight``: ``None`` (default) = with the IVC stage, the project's reading
    of IVC's backdoor (the variants without IVC train unweighted); ``true`` / ``false`` = on / off whatever the
    stages (``model.stages=[] backdoor.reweight=true`` is the weighted baseline, the ``reweight`` ablation variant).
    ``weighting="sample"`` resamples each epoch's clips in proportion to the weights instead (unit loss weights: the
    same risk in expectation, but every batch is drawn from the weighted population rather than a few heavy clips
    dominating the batch they fall in, where gradient clipping cuts them back). ``P(y|s)`` is cross-fitted:
    ``reference_folds`` single-frame reference models (the baseline architecture, one frame per clip), each trained
    ``reference_epochs`` epochs on the other folds; ``max_weight`` clips each round's factor. ``reference_rounds``
    > 1 refits the references on the weighted data, which finds the next static cue once the first (a background)
    no longer predicts the label (a badge): one weight factor per round. ``reference="clip"`` trains the references on
    whole clips instead of single frames (``P(y|x)`` of an early-stopped, cross-fitted baseline, the "learned first
    is the shortcut" premise of Just Train Twice / Learning from Failure): it reads cues one frame hides or one frame's
    reference misses (a small moving badge), at the price of also down-weighting clips whose cause it learned.
    """

    reweight: bool | None = None
    weighting: Literal["loss", "sample"] = "loss"  # how the weights enter training: each clip's CE, or the epoch order
    reference: Literal["frame", "clip"] = "frame"  # what the references see: one frame at a time, or the whole clip
    reference_folds: int = 2
    reference_epochs: int = 6
    reference_rounds: int = 1
    max_weight: float = 10.0


@dataclass
class HeadConfig:
    """Cross-attention decoder: the class rows of the texts query the video tokens; group-wise linear logits."""

    layers: int = 1
    heads: int = 4
    mlp_ratio: float = 2.0
    aux_weight: float = 0.0  # weight of the auxiliary BCE on atomic-action presence (needs action texts)


@dataclass
class DictionaryConfig:
    """k-means confounder dictionaries: fitted on ``clips`` training clips drawn at random (seeded, class-stratified)
    from the whole training split, refitted after the warm-up and then every ``refit_every`` epochs (0 = never refit)."""

    clips: int = 256
    refit_every: int = 10


@dataclass
class ModelConfig:
    """The towers, the causal stages in ``stages`` order (any subset; ``[]`` is the no-intervention baseline),
    the head and the confounder dictionaries."""

    clip: ClipConfig = field(default_factory=ClipConfig)
    timesformer: TimeSformerConfig = field(default_factory=TimeSformerConfig)
    stages: list[StageName] = field(default_factory=lambda: list(STAGE_NAMES))
    ich: ICHConfig = field(default_factory=ICHConfig)
    ici: ICIConfig = field(default_factory=ICIConfig)
    ivc: IVCConfig = field(default_factory=IVCConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    dictionaries: DictionaryConfig = field(default_factory=DictionaryConfig)
    learn_text: bool = False  # train the label texts T (frozen CLIP embeddings by default)
    multilabel: bool = False  # BCE over classes (Charades) instead of softmax cross-entropy
    allow_random_init: bool = True  # false: `pcmci train` stops when a tower's pretrained weights are missing


@dataclass
class DataConfig:
    """``dataset`` picks the adapter: ``manifest`` reads ``manifest``; breakfast/coin/charades read ``root`` in
    their public layout (``video_template`` / ``annotations`` override the default paths, "" = default)."""

    dataset: DatasetName = "manifest"
    root: str = ""
    video_template: str = ""
    annotations: str = ""
    manifest: str = ""
    labels: str | None = None  # labels.json fixing the class order (default: beside the manifest, else the rows)
    train_split: str = "train"
    eval_splits: list[str] = field(default_factory=lambda: ["test_id", "test_ood"])
    frames: int = 8
    image_size: int = 64
    backend: Literal["auto", "pyav", "dali"] = "pyav"  # auto: DALI's GPU loader on CUDA when installed, else PyAV
    num_workers: int = 0
    test_views: int = 1  # clips per test video (temporal clips x spatial crops), scores averaged
    test_crops: int = 1  # spatial crops per temporal clip; temporal clips = test_views // test_crops
    skip_bad_videos: bool = False  # skip (count, list at epoch end) videos that fail to decode, instead of stopping
    decode_timeout: float = 60.0  # seconds per video before a decode counts as failed; 0 = no watchdog
    cache_frames: bool = False  # keep decoded videos in memory (small sets of short clips, e.g. the synthetic set)
    pad_short_videos: bool = False  # a video with fewer than `frames` frames: repeat frames in order (else an error)
    train_crop_scale: float = 1.0  # training clips: a random square crop of >= this share of the frame (1 = none)


@dataclass
class OptimConfig:
    """Optimiser and schedule: linear warm-up for ``warmup_epochs``, then cosine decay to the end of ``epochs``."""

    name: Literal["adamw", "adam"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    epochs: int = 10
    warmup_epochs: float = 1.0
    batch_size: int = 8  # clips per process per forward; global batch = batch_size x processes x accum_steps
    grad_clip: float = 1.0
    amp: bool = True  # bf16 autocast on CUDA; no effect on CPU
    accum_steps: int = 1  # gradient accumulation: one optimiser step per accum_steps batches
    flood: float = 0.0  # flooding level b: descend on |loss - b| + b, so the training loss hovers at b (0 = off)


@dataclass
class RunConfig:
    """Where and how a run executes. On ``--resume`` these may change, except ``seed`` and ``dtype``, which
    fix the numbers the checkpoint holds."""

    out_dir: str = "runs/default"
    seed: int = 0
    device: str = "auto"  # auto (CUDA when available), cpu, cuda, cuda:N
    progress: bool = True
    compile: bool | None = None  # torch.compile the model for training and evaluation; None = on CUDA only
    tensorboard: bool = True  # TensorBoard scalars under out_dir/tensorboard, beside metrics.jsonl
    dtype: Literal["float32", "float64"] = "float32"  # weights and inputs; float64 (CPU only, slow) for bit-level reproducibility checks


@dataclass
class Config:
    """A whole run: model, data, optimiser and run settings; ``load_config`` builds one."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    backdoor: BackdoorConfig = field(default_factory=BackdoorConfig)
    run: RunConfig = field(default_factory=RunConfig)


def _tiny() -> Config:
    """CPU preset: tiny custom CLIP, 2-layer TimeSformer on 8x64x64 clips, 30 epochs; tests and the demo."""
    cfg = Config()
    cfg.optim.epochs = 30
    cfg.model.ich = ICHConfig(dict_size=32)
    cfg.model.ivc = IVCConfig(dict_size=32)
    cfg.model.dictionaries.clips = 64
    return cfg


def _paper() -> Config:
    """The paper's budget: CLIP ViT-B/16 frozen, TimeSformer-B/16 on 8x224x224, D=512, K=8, 2 test views.

    211M params = TimeSformer-B (121.7M) + CLIP ViT-B/16 image tower (86.2M) + the stages and head (10.4M with
    one ICI layer, one head layer, MLP ratio 2); the CLIP text tower is precomputed and not counted.
    650 GFLOPs per video = 2 views x (TimeSformer 196.1G + 8 CLIP frames x 17.6G + stages 1.0G), 1 FLOP = 1 MAC.
    """
    cfg = Config()
    cfg.model.clip = ClipConfig(name="ViT-B-16", pretrained="openai")
    cfg.model.allow_random_init = False
    cfg.model.timesformer = TimeSformerConfig(img_size=224, patch_size=16, frames=8, width=768, depth=12, heads=12)
    cfg.model.ici = ICIConfig(layers=1, mlp_ratio=2.0)
    cfg.model.head = HeadConfig(layers=1, heads=8, mlp_ratio=2.0)
    cfg.model.dictionaries.clips = 1024  # class-stratified: COIN's 180 tasks x 5; IVC 8192 tokens / 512 atoms
    cfg.data.image_size = 224
    cfg.data.test_views = 2
    cfg.optim = OptimConfig(name="adam", lr=1e-5, weight_decay=0.0, epochs=100, warmup_epochs=0.0, batch_size=8)
    return cfg


def _breakfast() -> Config:
    cfg = _paper()
    cfg.data.dataset = "breakfast"
    cfg.data.eval_splits = ["test"]
    return cfg


def _coin() -> Config:
    cfg = _breakfast()
    cfg.data.dataset = "coin"
    return cfg


def _charades() -> Config:
    cfg = _paper()
    cfg.model.multilabel = True
    cfg.backdoor.reweight = False  # the propensity P(c, y) is defined for one label per clip
    cfg.data.dataset = "charades"
    cfg.data.eval_splits = ["test"]
    return cfg


PRESETS = {"tiny": _tiny, "paper": _paper, "breakfast": _breakfast, "coin": _coin, "charades": _charades}


def preset(name: str) -> Config:
    """A fresh copy of the named preset."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return PRESETS[name]()


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert one value against a dataclass field type."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r} expects a list, got {value!r}")
        # A list of choices (model.stages) is checked as a whole by validate(), which names every unknown item.
        item = str if typing.get_origin(args[0]) is Literal else args[0]
        return [_coerce(v, item, key) for v in value]
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"config key {key!r} = {value!r}; valid values: {list(args)}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key!r} expects true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {key!r} expects an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"config key {key!r} expects a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {key!r} expects a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"config key {key!r} expects a string, got {value!r}")
        return str(value)
    return value


def reweights(cfg: Config) -> bool:
    """Whether the run trains on the backdoor weights: ``backdoor.reweight``, or with the IVC stage when unset."""
    return "ivc" in cfg.model.stages if cfg.backdoor.reweight is None else cfg.backdoor.reweight


# Keys that moved, so that configs, YAML files and checkpoints written before still load: former -> current.
MOVED_KEYS = {f"model.ivc.{name}": f"backdoor.{name}" for name in
              ("reweight", "weighting", "reference_folds", "reference_epochs", "reference_rounds", "max_weight")}
_warned: set[str] = set()


def _moved(dotted: str, value: Any) -> tuple[str, Any]:
    """A former key and its value as the current key reads them (``model.ivc.reweight=true`` only ever took effect
    with the IVC stage: it is ``backdoor.reweight=None``)."""
    current = MOVED_KEYS[dotted]
    if dotted == "model.ivc.reweight" and value is True:
        value = None
    if dotted not in _warned:
        _warned.add(dotted)
        log.warning("config key %r is now %r (read as %s=%r)", dotted, current, current, value)
    return current, value


def _set(obj: Any, dotted: str, value: Any) -> None:
    """Set ``obj.a.b.c = value`` for ``dotted='a.b.c'``, validating names and types."""
    if dotted in MOVED_KEYS and isinstance(obj, Config):
        dotted, value = _moved(dotted, value)
    parts = dotted.split(".")
    node = obj
    for i, name in enumerate(parts):
        if not dataclasses.is_dataclass(node):
            raise ConfigError(f"unknown config key {dotted!r}: {'.'.join(parts[:i])} is a value, not a section")
        names = {f.name: f for f in dataclasses.fields(node)}
        if name not in names:
            where = ".".join(parts[:i]) or "top level"
            raise ConfigError(f"unknown config key {dotted!r}: no {name!r} in {where} (valid: {', '.join(names)})")
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(getattr(node, name)):
                if not isinstance(value, dict):
                    raise ConfigError(f"config key {dotted!r} is a section; give a mapping or set its fields")
                for k, v in value.items():
                    _set(obj, f"{dotted}.{k}", v)
                return
            hints = typing.get_type_hints(type(node))
            setattr(node, name, _coerce(value, hints[name], dotted))
        else:
            node = getattr(node, name)


def _check_choices(node: Any, prefix: str = "") -> None:
    """Every ``Literal`` field of a config built in code (not through ``_set``) holds one of its choices."""
    hints = typing.get_type_hints(type(node))
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            _check_choices(value, f"{prefix}{f.name}.")
        elif typing.get_origin(hints[f.name]) is Literal:
            _coerce(value, hints[f.name], f"{prefix}{f.name}")


def validate(cfg: Config) -> Config:
    """The choices of fields set in code, and cross-field checks that a type alone cannot express."""
    _check_choices(cfg)
    unknown = [s for s in cfg.model.stages if s not in STAGE_NAMES]
    if unknown:
        raise ConfigError(f"unknown stage name(s) {unknown} in model.stages; valid stages: {list(STAGE_NAMES)}")
    if len(set(cfg.model.stages)) != len(cfg.model.stages):
        raise ConfigError(f"model.stages lists a stage twice: {cfg.model.stages}")
    if cfg.data.frames != cfg.model.timesformer.frames:
        raise ConfigError(
            f"data.frames={cfg.data.frames} must equal model.timesformer.frames={cfg.model.timesformer.frames}"
        )
    if cfg.data.image_size != cfg.model.timesformer.img_size:
        raise ConfigError(
            f"data.image_size={cfg.data.image_size} must equal model.timesformer.img_size={cfg.model.timesformer.img_size}"
        )
    if cfg.data.test_crops < 1 or cfg.data.test_views < 1 or cfg.data.test_views % cfg.data.test_crops:
        raise ConfigError(f"data.test_views={cfg.data.test_views} must be a positive multiple of "
                          f"data.test_crops={cfg.data.test_crops} (views = temporal clips x spatial crops)")
    t = cfg.model.timesformer
    if not 0.0 <= t.style_mix <= 1.0 or t.style_mix_alpha <= 0:
        raise ConfigError(f"model.timesformer.style_mix={t.style_mix} must be in [0, 1] and "
                          f"model.timesformer.style_mix_alpha={t.style_mix_alpha} positive")
    if not 0.0 < cfg.data.train_crop_scale <= 1.0:
        raise ConfigError(f"data.train_crop_scale={cfg.data.train_crop_scale} must be in (0, 1] (1 = no crop jitter)")
    if cfg.model.timesformer.img_size % cfg.model.timesformer.patch_size:
        raise ConfigError("model.timesformer.img_size must be a multiple of model.timesformer.patch_size")
    for key, value in (("optim.batch_size", cfg.optim.batch_size), ("optim.accum_steps", cfg.optim.accum_steps),
                       ("optim.epochs", cfg.optim.epochs), ("model.dictionaries.clips", cfg.model.dictionaries.clips)):
        if value < 1:
            raise ConfigError(f"config key {key!r} = {value}; it must be at least 1")
    o = cfg.optim
    for key, value in (("data.num_workers", cfg.data.num_workers), ("data.decode_timeout", cfg.data.decode_timeout),
                       ("optim.weight_decay", o.weight_decay), ("optim.warmup_epochs", o.warmup_epochs),
                       ("optim.grad_clip", o.grad_clip), ("optim.flood", o.flood)):
        if not value >= 0:  # NaN fails too
            raise ConfigError(f"config key {key!r} = {value}; it must be at least 0")
    if not 0 < cfg.model.ich.eps < float("inf"):  # the Sinkhorn kernel divides by it; NaN fails too
        raise ConfigError(f"config key 'model.ich.eps' = {cfg.model.ich.eps}; it must be a positive number")
    if cfg.model.ich.iters < 1:
        raise ConfigError(f"config key 'model.ich.iters' = {cfg.model.ich.iters}; it must be at least 1")
    if not 0 < o.lr < float("inf"):
        raise ConfigError(f"config key 'optim.lr' = {o.lr}; it must be a positive number")
    b = cfg.backdoor
    if b.reference_rounds < 1:
        raise ConfigError(f"backdoor.reference_rounds={b.reference_rounds} must be at least 1")
    if b.reference_folds < 2 or b.reference_epochs < 1 or b.max_weight < 1:
        raise ConfigError(f"backdoor.reference_folds={b.reference_folds} must be at least 2 (cross-fitting), "
                          f"backdoor.reference_epochs={b.reference_epochs} and backdoor.max_weight={b.max_weight} "
                          "at least 1")
    if cfg.model.ivc.align_weight > 0 and "ivc" not in cfg.model.stages:
        raise ConfigError(f"model.ivc.align_weight={cfg.model.ivc.align_weight} asks for IVC's alignment loss but "
                          f"model.stages={cfg.model.stages} has no 'ivc'")
    return cfg


def check_dataset(cfg: Config, classes: int, actions: int, multilabel: bool) -> None:
    """Checks between the config and the training data: target kind, and the label texts the stages need."""
    if multilabel != cfg.model.multilabel:
        kind = "multi-label" if multilabel else "single-label"
        raise ConfigError(f"data.dataset={cfg.data.dataset!r} has {kind} targets but model.multilabel="
                          f"{str(cfg.model.multilabel).lower()}; set model.multilabel={str(multilabel).lower()}")
    if cfg.model.head.aux_weight > 0 and actions == 0:
        raise ConfigError(f"model.head.aux_weight={cfg.model.head.aux_weight} asks for the atomic-action loss but "
                          f"the label set (data.labels / data.dataset={cfg.data.dataset!r}) has no action texts")
    if "ivc" in cfg.model.stages and classes + actions < 2:
        raise ConfigError(f"model.stages={cfg.model.stages} asks for IVC, whose mediator is the label texts, but the "
                          f"label set (data.labels / data.dataset={cfg.data.dataset!r}) has {classes + actions} text; "
                          "IVC needs at least 2")


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's complaint in one line, with its line and column (1-based) when it has them."""
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + " ".join(str(getattr(exc, "problem", None) or exc).split())


def parse_override(item: str) -> tuple[str, Any]:
    """``'optim.lr=1e-4'`` -> ``('optim.lr', 1e-4)``; values are parsed as YAML scalars or lists."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value")
    key, raw = item.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({_yaml_problem(exc)})") from None


def apply(cfg: Config, values: dict[str, Any], prefix: str = "") -> Config:
    """Apply a nested mapping (e.g. parsed YAML) onto ``cfg``."""
    for key, value in values.items():
        _set(cfg, f"{prefix}{key}", value)
    return cfg


def load_config(source: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Build a config from a preset name or a YAML file, then apply ``key=value`` overrides.

    A YAML file may name ``preset: tiny`` as its base; everything else overrides that preset.
    """
    if source is None:
        cfg = preset("tiny")
    elif str(source) in PRESETS:
        cfg = preset(str(source))
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config {str(source)!r} is neither a preset ({', '.join(PRESETS)}) nor a file")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {path}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path}: not valid YAML ({_yaml_problem(exc)})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        base = data.pop("preset", "tiny")
        if not isinstance(base, str):
            raise ConfigError(f"config file {path}: 'preset' must be a preset name ({', '.join(PRESETS)}), "
                              f"got {base!r}")
        cfg = preset(base)
        apply(cfg, data)
    for item in overrides or []:
        key, value = parse_override(item)
        _set(cfg, key, value)
    return validate(cfg)


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(values: dict[str, Any]) -> Config:
    """Rebuild a config saved with ``to_dict`` (e.g. from a checkpoint)."""
    return validate(apply(Config(), values))
