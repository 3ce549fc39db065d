"""Training loop, readable top to bottom: data -> model -> dictionaries -> optimiser -> epochs -> checkpoints.

:func:`build_run` sets a run up once (a :class:`Run`: dataset, model, optimiser and schedule, restored when
resuming); :func:`train_one_epoch` takes its optimiser steps, each over ``optim.accum_steps`` micro-batches, and
returns the epoch's :class:`EpochStats`; a :class:`~pcmci.engine.sink.MetricsSink` records steps and epochs.

One process, or one per device under ``torchrun`` (DDP; ``optim.batch_size`` is per process, so the global batch
is ``batch_size x world x optim.accum_steps``). Every epoch ends with an atomic checkpoint written by rank 0
(model incl. dictionaries, optimiser, scheduler, CPU/CUDA/NumPy/Python RNG, epoch, world size, config, labels,
all as tensors and plain data); ``resume=True`` continues from it and reproduces the uninterrupted run, since the
data order and the sampling offsets are functions of (seed, epoch, index) only. AMP is bf16 autocast on CUDA
(no loss scaler); ``run.compile`` wraps the model in ``torch.compile`` (default: on CUDA only), falling back to
Inductor without its tiling analysis, then to eager, when the compile fails (``compile.FallbackCompiled``).
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..config import Config, ConfigError, check_dataset, from_dict, reweights, to_dict
from ..data.datasets import VideoDataset
from ..data.loader import make_loader
from ..errors import CheckpointError
from ..model import PCMCI, build_model
from ..model.weights import require_weights
from . import distributed
from .checkpoint import CheckpointWriteError, load_checkpoint, save_checkpoint
from .compile import FallbackCompiled
from .dictionaries import all_skipped, fit_dictionaries, refit_epochs
from .optimizers import adam
from .propensity import clip_weights
from .run_state import config_changes, restore_rng, rng_state, use_compile
from .runtime import load_labels, make_dataset, resolve_device, seed_everything
from .sink import MetricsSink

log = logging.getLogger(__name__)


@dataclass
class Run:
    """Everything a training run holds from one epoch to the next, built once by :func:`build_run`."""

    cfg: Config
    ctx: distributed.Dist
    dataset: VideoDataset
    model: PCMCI
    net: Any  # what a forward goes through: the model, DDP-wrapped and/or compiled
    ddp: DistributedDataParallel | None  # kept apart from ``net`` for ``no_sync`` while accumulating
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    micro_sizes: list[int]  # clips of each micro-batch of an epoch on this rank
    start_epoch: int
    step: int  # optimiser steps taken since the run began, resumed epochs included
    amp: bool  # bf16 autocast: optim.amp, on CUDA only
    clip_weights: Tensor | None  # the backdoor: per-clip weights P(y)/P(y|s) [n], fitted once per run
    sink: MetricsSink
    compile_pending: bool  # the first forward of a compiled model compiles it: its time is logged once

    @property
    def device(self) -> torch.device:
        return self.ctx.device

    def backdoor_weights(self, use: Literal["loss", "sample"]) -> Tensor | None:
        """``clip_weights`` where ``backdoor.weighting`` is ``use`` (``"loss"``: each clip's CE; ``"sample"``: the
        epoch order), else None."""
        return self.clip_weights if self.cfg.backdoor.weighting == use else None

    @property
    def checkpoint_path(self) -> Path:
        return Path(self.cfg.run.out_dir) / "checkpoint.pt"


@dataclass
class EpochStats:
    """One epoch's totals on this rank (or, after :meth:`over_ranks`, on all): clips trained on, their summed loss
    and correct predictions, seconds the epoch took and spent waiting for the loader, undecodable videos skipped."""

    seen: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seconds: float = 0.0
    wait: float = 0.0
    skipped: list[str] = field(default_factory=list)

    def add(self, loss: float, seen: int, correct: int) -> None:
        """One optimiser step: its loss (mean over ranks) over ``seen`` clips, ``correct`` of them right."""
        self.seen, self.loss_sum, self.correct = self.seen + seen, self.loss_sum + loss * seen, self.correct + correct

    def over_ranks(self, device: torch.device) -> EpochStats:
        """The totals summed over every rank (a collective: every rank calls it); ``seconds`` stays this rank's."""
        seen, loss_sum, correct, wait = distributed.sum_over_ranks([self.seen, self.loss_sum, self.correct, self.wait],
                                                                   device)
        return EpochStats(seen, loss_sum, correct, self.seconds, wait, distributed.gather_lists(self.skipped))

    def summary(self, epoch: int, world: int) -> dict[str, Any]:
        """The epoch's ``metrics.jsonl`` record; ``data_wait`` is the share of the epoch a rank waited on average."""
        seen = max(1, self.seen)
        return {"epoch": epoch, "train_loss": self.loss_sum / seen, "train_acc": self.correct / seen,
                "seconds": self.seconds, "clips_per_s": self.seen / self.seconds,
                "data_wait": self.wait / world / self.seconds, "skipped_videos": len(self.skipped)}


def train(cfg: Config, resume: bool = False) -> Path:
    """Train ``cfg``; returns the checkpoint path (``run.out_dir/checkpoint.pt``)."""
    if not resume:
        require_weights(cfg.model)  # model.allow_random_init=false: missing pretrained weights stop here
    ctx = distributed.setup(resolve_device(cfg.run.device))
    try:
        return _train(cfg, ctx, resume)
    finally:
        distributed.teardown()


def _train(cfg: Config, ctx: distributed.Dist, resume: bool) -> Path:
    run = build_run(cfg, ctx, resume)
    refits = refit_epochs(cfg)
    with run.sink:
        for epoch in range(run.start_epoch, cfg.optim.epochs):
            if epoch in refits:
                fit_dictionaries(cfg, run.model, run.dataset, run.device, epoch, ctx.world)
                distributed.broadcast_buffers(run.model)
            stats = train_one_epoch(run, epoch)
            run.sink.epoch(stats.summary(epoch, ctx.world), run.step, stats.skipped)
            if not stats.seen:  # no step taken: a checkpoint now would be an untrained model that looks trained
                raise all_skipped(f"epoch {epoch}: all {len(stats.skipped)} training videos were", stats.skipped)
            if ctx.main:
                save_checkpoint(run.checkpoint_path, checkpoint_state(run, epoch))
    return run.checkpoint_path


def build_run(cfg: Config, ctx: distributed.Dist, resume: bool) -> Run:
    """Dataset, model, optimiser and schedule, restored from ``run.out_dir/checkpoint.pt`` when ``resume``; the
    model wrapped for DDP and compilation; IVC's clip weights; the metrics sink."""
    out, device = Path(cfg.run.out_dir), ctx.device
    state = resume_state(cfg, ctx) if resume else None
    if state is None and ctx.main:
        prepare_out_dir(out, resume=False)
    seed_everything(cfg.run.seed)
    dataset = make_dataset(cfg, cfg.data.train_split, train=True, labels=load_labels(cfg))
    check_dataset(cfg, len(dataset.labels.classes), len(dataset.labels.actions), dataset.multilabel)
    if cfg.run.dtype == "float64" and device.type != "cpu":
        raise ConfigError("run.dtype=float64 runs on CPU only (the CUDA kernels take fp32/bf16/fp16); "
                          "set run.device=cpu")
    model = build_model(cfg.model, dataset.labels.classes, dataset.labels.actions)
    model = model.to(device, getattr(torch, cfg.run.dtype))
    optimizer = make_optimizer(cfg, model)
    micro_sizes = _micro_batch_sizes(len(dataset), cfg.optim.batch_size, ctx.world)
    steps_per_epoch = math.ceil(len(micro_sizes) / cfg.optim.accum_steps)
    warmup = max(1, int(cfg.optim.warmup_epochs * steps_per_epoch))
    schedule = cosine_with_warmup(cfg.optim.epochs * steps_per_epoch, warmup)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    start_epoch = 0
    if state is not None:
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            restore_rng(state["rng"], device)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # a checkpoint that is not this run's
            cause = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
            raise CheckpointError(f"--resume: {out / 'checkpoint.pt'} cannot restore this run ({cause})") from exc
        start_epoch = state["epoch"] + 1
        log.info("resuming %s from epoch %d", out / "checkpoint.pt", start_epoch)
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if ctx.world > 1 else None
    compiled = use_compile(cfg.run.compile, device)
    net = FallbackCompiled(ddp or model) if compiled else ddp or model
    weights = run_clip_weights(cfg, ctx, dataset, state)
    if ctx.world > 1:
        log.info("DDP: %d processes (%s), %d clips per process per step x %d accumulated = global batch %d",
                 ctx.world, torch.distributed.get_backend(), cfg.optim.batch_size, cfg.optim.accum_steps,
                 cfg.optim.batch_size * ctx.world * cfg.optim.accum_steps)
    sink = MetricsSink(out, ctx.main, cfg.run.tensorboard, start_epoch, start_epoch * steps_per_epoch, log)
    return Run(cfg=cfg, ctx=ctx, dataset=dataset, model=model, net=net, ddp=ddp, optimizer=optimizer,
               scheduler=scheduler, micro_sizes=micro_sizes, start_epoch=start_epoch,
               step=start_epoch * steps_per_epoch, amp=cfg.optim.amp and device.type == "cuda", clip_weights=weights,
               sink=sink, compile_pending=compiled)


def resume_state(cfg: Config, ctx: distributed.Dist) -> dict[str, Any]:
    """The checkpoint in ``run.out_dir``, refused when its config or its number of processes differs from this run's
    (shards and steps per epoch depend on the latter)."""
    ckpt_path = Path(cfg.run.out_dir) / "checkpoint.pt"
    state = load_checkpoint(ckpt_path)
    changed = config_changes(to_dict(from_dict(state["config"])), to_dict(cfg))  # saved under former keys too
    if changed:
        raise ConfigError(f"--resume: the config differs from the one saved in {ckpt_path} in {', '.join(changed)}")
    if state.get("world", 1) != ctx.world:
        raise ConfigError(f"--resume: {ckpt_path} was trained by {state.get('world', 1)} process(es), this run has "
                          f"{ctx.world}; resume with the same number, since shards and steps per epoch depend on it")
    return state


def run_clip_weights(cfg: Config, ctx: distributed.Dist, dataset: VideoDataset,
                     state: dict[str, Any] | None) -> Tensor | None:
    """The backdoor weights ``[n]`` (``backdoor.reweight``, see :func:`~pcmci.config.reweights`): the checkpoint's
    when resuming, else fitted on the run's global batch; rank 0's, on every rank. None when the run trains
    unweighted."""
    if not reweights(cfg):
        return None
    saved = state.get("clip_weights") if state is not None else None
    try:
        weights = saved if saved is not None else clip_weights(cfg, dataset, ctx.device, cfg.run.progress and ctx.main,
                                                               cfg.optim.batch_size * ctx.world * cfg.optim.accum_steps)
    except torch.cuda.OutOfMemoryError as exc:
        raise RuntimeError(out_of_memory_advice(cfg, ctx.world)) from exc
    return distributed.broadcast_tensor(weights, ctx.device)


def train_one_epoch(run: Run, epoch: int) -> EpochStats:
    """One pass over this rank's shard: ``optim.accum_steps`` micro-batches per optimiser step, each step's record
    to the sink. Returns the epoch's totals over all ranks."""
    cfg = run.cfg
    loader = make_loader(run.dataset, cfg.optim.batch_size, run.device, shuffle=True, epoch=epoch,
                         num_workers=cfg.data.num_workers, weights=run.backdoor_weights("sample"))
    run.model.train()
    tic, stats = time.perf_counter(), EpochStats()
    bar = tqdm(total=len(run.micro_sizes), desc=f"epoch {epoch + 1}/{cfg.optim.epochs}",
               disable=not (cfg.run.progress and run.ctx.main))
    batches = iter(loader)
    for sizes in _accumulation_groups(run.micro_sizes, cfg.optim.accum_steps):
        loss, seen, correct = accumulate(run, sizes, batches, stats, bar)
        loss, = distributed.mean_over_ranks([loss], run.device)
        if not math.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss} at epoch {epoch} step {run.step}")
        grad_norm = optimizer_step(run.model, run.optimizer, run.scheduler, cfg.optim.grad_clip)
        run.step += 1
        stats.add(loss, seen, correct)
        run.sink.step({"step": run.step, "epoch": epoch, "loss": loss, "lr": run.scheduler.get_last_lr()[0],
                       "grad_norm": float(grad_norm)})
        bar.set_postfix(loss=f"{loss:.3f}")
    bar.close()
    stats.seconds = time.perf_counter() - tic
    return stats.over_ranks(run.device)


def accumulate(run: Run, sizes: list[int], batches: Iterator[dict[str, Any]], stats: EpochStats,
               bar: tqdm) -> tuple[float, int, int]:
    """The gradients of one optimiser step: the next ``len(sizes)`` micro-batches of ``batches``, each loss weighted
    by its share of the group's clips (so the sum is the loss of one batch of ``sum(sizes)`` clips). Counts the
    loader wait and skipped videos into ``stats``. Returns (the group's loss on this rank, clips, correct)."""
    loss, seen, correct = 0.0, 0, 0
    for i, size in enumerate(sizes):
        fetched = time.perf_counter()
        batch = next(batches)
        stats.wait += time.perf_counter() - fetched
        stats.skipped += batch["bad"]
        bar.update()
        if "video" in batch:  # else every video of it was undecodable: the others keep their shares
            micro_loss, micro_seen, micro_correct = micro_step(run, batch, size / sum(sizes), sync=i == len(sizes) - 1)
            loss += micro_loss * size / sum(sizes)
            seen, correct = seen + micro_seen, correct + micro_correct
    return loss, seen, correct


def micro_step(run: Run, batch: dict[str, Any], share: float, sync: bool) -> tuple[float, int, int]:
    """Forward and backward of one micro-batch whose loss is ``share`` of its accumulation group's; DDP reduces
    the gradients only when ``sync`` (the group's last). Returns (its unweighted loss, clips, correct predictions)."""
    frames, target = batch["video"].to(run.device), batch["label"].to(run.device)
    weights = run.backdoor_weights("loss")
    weights = None if weights is None else weights[batch["index"]].to(run.device)
    started = time.perf_counter()
    try:
        with contextlib.nullcontext() if run.ddp is None or sync else run.ddp.no_sync():
            out, loss = forward_backward(run.net, run.model, frames, target, batch["steps"].to(run.device), share,
                                         run.amp, weights, run.cfg.optim.flood)
    except torch.cuda.OutOfMemoryError as exc:
        raise RuntimeError(out_of_memory_advice(run.cfg, run.ctx.world)) from exc
    if run.compile_pending:
        _log_compile(time.perf_counter() - started)
        run.compile_pending = False
    correct = 0 if run.cfg.model.multilabel else int((out["logits"].argmax(-1) == target).sum())
    return loss.item(), frames.shape[0], correct


def checkpoint_state(run: Run, epoch: int) -> dict[str, Any]:
    """What ``checkpoint.pt`` holds after ``epoch``, as tensors and plain data (loadable with ``weights_only``)."""
    labels = run.dataset.labels
    return {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "rng": rng_state(run.device),
        "epoch": epoch,
        "world": run.ctx.world,
        "config": to_dict(run.cfg),
        "labels": {"classes": labels.classes, "actions": labels.actions},
        "clip_weights": run.clip_weights,
    }


def cosine_with_warmup(total_steps: int, warmup_steps: int) -> Any:
    """LR multiplier: linear warm-up to 1, then cosine decay to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def make_optimizer(cfg: Config, model: PCMCI) -> torch.optim.Optimizer:
    return adam((p for p in model.parameters() if p.requires_grad), cfg.optim.lr, cfg.optim.weight_decay,
                cfg.optim.name)


def refuse_existing_run(cfg: Config, resume: bool, overwrite: bool) -> None:
    """``run.out_dir`` holding a checkpoint is reused only with ``--resume`` or ``--overwrite``."""
    ckpt = Path(cfg.run.out_dir) / "checkpoint.pt"
    if resume and overwrite:
        raise ConfigError("give either --resume or --overwrite, not both")
    if ckpt.is_file() and not (resume or overwrite):
        raise ConfigError(f"run.out_dir={cfg.run.out_dir} already holds a checkpoint ({ckpt}); pass --resume to "
                          "continue it, --overwrite to start over, or choose another run.out_dir")


def prepare_out_dir(out: Path, resume: bool) -> None:
    """Create ``out`` and prove it writable (one clear error for a read-only or full folder); a fresh run
    drops a checkpoint left there, so a later ``--resume`` can never continue a different run."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with (out / ".write-test").open("w") as probe:
            probe.write("ok")
        (out / ".write-test").unlink()
        if not resume:
            (out / "checkpoint.pt").unlink(missing_ok=True)
    except OSError as exc:
        raise CheckpointWriteError(f"run.out_dir={out} is not writable: {exc.strerror or exc}") from exc


def out_of_memory_advice(cfg: Config, world: int) -> str:
    b, k = cfg.optim.batch_size, cfg.optim.accum_steps
    return (f"CUDA out of memory at optim.batch_size={b} clips per process: lower optim.batch_size and raise "
            f"optim.accum_steps so that batch_size x accum_steps stays {b * k} (global batch {b * k * world})")


def forward_backward(net: Any, model: PCMCI, frames: torch.Tensor, target: torch.Tensor, steps: torch.Tensor,
                     weight: float, amp: bool, clip_weights: torch.Tensor | None = None, flood: float = 0.0,
                     ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One micro-batch: forward ``frames[B,F,3,H,W]`` through ``net`` (the model, DDP-wrapped and/or compiled)
    under bf16 autocast when ``amp``, the loss against ``target`` and ``steps[B,A]`` (each clip weighted by
    ``clip_weights[B]``, the backdoor weights, when given), and the backward of ``weight x loss`` (the micro-batch's
    share of its accumulation group). ``flood`` > 0 descends on ``|loss - flood| + flood`` (flooding, Ishida et al.
    2020): below the level the step climbs back, so a model cannot drive its (weighted) training loss to zero, where
    loss weights stop mattering. Returns (outputs, loss before flooding)."""
    with torch.autocast(frames.device.type, dtype=torch.bfloat16, enabled=amp):
        out = net(frames)
        loss = model.loss(out, target, steps, clip_weights)
    flooded = (loss - flood).abs() + flood if flood > 0 else loss
    (flooded * weight).backward()
    return out, loss


def optimizer_step(model: PCMCI, optimizer: torch.optim.Optimizer, scheduler: Any, grad_clip: float) -> torch.Tensor:
    """Clip the gradient norm to ``grad_clip``, step the optimiser and the LR schedule, clear the gradients;
    returns the norm before clipping."""
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return grad_norm


def _micro_batch_sizes(n: int, batch_size: int, world: int) -> list[int]:
    """Clips per rank in each batch of an epoch: the shard of ``ceil(n / world)`` items cut into batches."""
    shard = math.ceil(n / world)
    return [min(batch_size, shard - start) for start in range(0, shard, batch_size)]


def _accumulation_groups(micro_sizes: list[int], accum: int) -> list[list[int]]:
    """The micro-batch sizes of each optimiser step: runs of ``accum``, the last one shorter when they do not
    divide the epoch."""
    return [micro_sizes[start : start + accum] for start in range(0, len(micro_sizes), accum)]


def _log_compile(seconds: float) -> None:
    breaks = torch._dynamo.utils.counters["graph_break"]
    log.info("torch.compile: first training step took %.1f s (compilation included), %d graph break(s)%s",
             seconds, sum(breaks.values()), "".join(f"\n  {reason}" for reason in breaks))
