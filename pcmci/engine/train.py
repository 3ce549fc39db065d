"""Training loop, readable top to bottom: data -> model -> dictionaries -> optimiser -> epochs -> checkpoints.

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
import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..config import Config, ConfigError, check_dataset, to_dict
from ..data.datasets import VideoDataset, build_dataset
from ..data.records import LabelSet
from ..data.loader import make_loader
from ..model import PCMCI, build_model
from ..model.weights import require_weights
from . import distributed
from .checkpoint import CheckpointWriteError, load_checkpoint, save_checkpoint
from .compile import FallbackCompiled
from .dictionaries import fit_dictionaries, refit_epochs
from .propensity import clip_weights
from .run_state import config_changes, restore_rng, rng_state, use_compile

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"run.device={name!r} but CUDA is not available on this machine")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_labels(cfg: Config) -> LabelSet | None:
    """The label file named by ``data.labels``; None lets the dataset find ``labels.json`` by the manifest."""
    return LabelSet.load(cfg.data.labels) if cfg.data.labels else None


def make_dataset(cfg: Config, split: str, train: bool, labels: LabelSet | None) -> VideoDataset:
    """The ``data.dataset`` adapter's ``split`` (manifest, breakfast, coin or charades)."""
    return build_dataset(cfg.data, split, train, seed=cfg.run.seed, labels=labels)


def cosine_with_warmup(total_steps: int, warmup_steps: int) -> Any:
    """LR multiplier: linear warm-up to 1, then cosine decay to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def make_optimizer(cfg: Config, model: PCMCI) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    kind = torch.optim.AdamW if cfg.optim.name == "adamw" else torch.optim.Adam
    return kind(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)


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
    out, device = Path(cfg.run.out_dir), ctx.device
    ckpt_path, metrics_path = out / "checkpoint.pt", out / "metrics.jsonl"
    state = None
    if resume:
        state = load_checkpoint(ckpt_path)
        changed = config_changes(state["config"], to_dict(cfg))
        if changed:
            raise ConfigError(f"--resume: the config differs from the one saved in {ckpt_path} in {', '.join(changed)}")
        if state.get("world", 1) != ctx.world:
            raise ConfigError(f"--resume: {ckpt_path} was trained by {state.get('world', 1)} process(es), this run has "
                              f"{ctx.world}; resume with the same number, since shards and steps per epoch depend on it")
    elif ctx.main:
        prepare_out_dir(out, resume=False)
    seed_everything(cfg.run.seed)

    dataset = make_dataset(cfg, cfg.data.train_split, train=True, labels=load_labels(cfg))
    check_dataset(cfg, len(dataset.labels.classes), len(dataset.labels.actions), dataset.multilabel)
    if cfg.run.dtype == "float64" and device.type != "cpu":
        raise ConfigError("run.dtype=float64 runs on CPU only (the CUDA kernels take fp32/bf16/fp16); set run.device=cpu")
    model = build_model(cfg.model, dataset.labels.classes, dataset.labels.actions).to(device, getattr(torch, cfg.run.dtype))
    optimizer = make_optimizer(cfg, model)
    micro_sizes = _micro_batch_sizes(len(dataset), cfg.optim.batch_size, ctx.world)
    accum = cfg.optim.accum_steps
    steps_per_epoch = math.ceil(len(micro_sizes) / accum)
    total_steps = cfg.optim.epochs * steps_per_epoch
    warmup = max(1, int(cfg.optim.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(total_steps, warmup))
    use_amp = cfg.optim.amp and device.type == "cuda"
    start_epoch = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        restore_rng(state["rng"], device)
        start_epoch = state["epoch"] + 1
        if ctx.main:
            kept = [line for line in _records(metrics_path) if json.loads(line)["epoch"] < start_epoch]
            metrics_path.write_text("".join(line + "\n" for line in kept))
        log.info("resuming %s from epoch %d", ckpt_path, start_epoch)
    elif ctx.main:
        metrics_path.write_text("")

    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if ctx.world > 1 else None
    net = ddp or model
    compiled = use_compile(cfg.run.compile, device)
    if compiled:
        net = FallbackCompiled(net)
    board = _tensorboard(out, start_epoch * steps_per_epoch) if cfg.run.tensorboard and ctx.main else None
    show = cfg.run.progress and ctx.main
    weights = None  # IVC's backdoor: per-clip loss weights P(y)/P(y|s), fitted once per run
    if model.ivc is not None and cfg.model.ivc.reweight:
        saved = state.get("clip_weights") if state is not None else None
        try:
            weights = saved if saved is not None else clip_weights(cfg, dataset, device, show,
                                                                   cfg.optim.batch_size * ctx.world * accum)
        except torch.cuda.OutOfMemoryError as exc:
            raise RuntimeError(out_of_memory_advice(cfg, ctx.world)) from exc
        weights = distributed.broadcast_tensor(weights, device)
    if ctx.world > 1:
        log.info("DDP: %d processes (%s), %d clips per process per step x %d accumulated = global batch %d",
                 ctx.world, torch.distributed.get_backend(), cfg.optim.batch_size, accum,
                 cfg.optim.batch_size * ctx.world * accum)

    step = start_epoch * steps_per_epoch
    refits = refit_epochs(cfg)
    for epoch in range(start_epoch, cfg.optim.epochs):
        if epoch in refits:
            fit_dictionaries(cfg, model, dataset, device, epoch, ctx.world)
            distributed.broadcast_buffers(model)
        loader = make_loader(dataset, cfg.optim.batch_size, device, shuffle=True, epoch=epoch,
                             num_workers=cfg.data.num_workers)
        model.train()
        tic, wait, seen, loss_sum, correct, bad = time.perf_counter(), 0.0, 0, 0.0, 0, []
        group_loss, group_correct, group_seen = 0.0, 0, 0
        bar = tqdm(total=len(micro_sizes), desc=f"epoch {epoch + 1}/{cfg.optim.epochs}", disable=not show)
        batches = iter(loader)
        with (metrics_path.open("a", buffering=1) if ctx.main else contextlib.nullcontext()) as metrics_file:
            for i, size in enumerate(micro_sizes):
                fetched = time.perf_counter()
                batch = next(batches)
                wait += time.perf_counter() - fetched
                bar.update()
                bad += batch["bad"]
                group = micro_sizes[i - i % accum : i - i % accum + accum]
                last = i % accum == len(group) - 1
                if "video" in batch:
                    frames, target = batch["video"].to(device), batch["label"].to(device)
                    sync = contextlib.nullcontext() if ddp is None or last else ddp.no_sync()
                    try:
                        with sync:
                            first = compiled and step == start_epoch * steps_per_epoch and i == 0
                            started = time.perf_counter()
                            clip_w = None if weights is None else weights[batch["index"]].to(device)
                            out, loss = forward_backward(net, model, frames, target, batch["steps"].to(device),
                                                         size / sum(group), use_amp, clip_w)
                            if first:
                                _log_compile(time.perf_counter() - started)
                    except torch.cuda.OutOfMemoryError as exc:
                        raise RuntimeError(out_of_memory_advice(cfg, ctx.world)) from exc
                    n = frames.shape[0]
                    group_loss += loss.item() * size / sum(group)
                    group_seen += n
                    if not cfg.model.multilabel:
                        group_correct += int((out["logits"].argmax(-1) == target).sum())
                if not last:
                    continue
                loss_value, = distributed.mean_over_ranks([group_loss], device)
                if not math.isfinite(loss_value):
                    raise FloatingPointError(f"non-finite loss {loss_value} at epoch {epoch} step {step}")
                grad_norm = optimizer_step(model, optimizer, scheduler, cfg.optim.grad_clip)
                step += 1
                seen, loss_sum, correct = seen + group_seen, loss_sum + loss_value * group_seen, correct + group_correct
                group_loss, group_correct, group_seen = 0.0, 0, 0
                record = {"step": step, "epoch": epoch, "loss": loss_value, "lr": scheduler.get_last_lr()[0],
                          "grad_norm": float(grad_norm)}
                if metrics_file is not None:
                    metrics_file.write(json.dumps(record) + "\n")
                if board is not None:
                    for key in ("loss", "lr", "grad_norm"):
                        board.add_scalar(f"train/{key}", record[key], step)
                bar.set_postfix(loss=f"{loss_value:.3f}")
            bar.close()
            seconds = time.perf_counter() - tic
            seen, loss_sum, correct, wait = distributed.sum_over_ranks([seen, loss_sum, correct, wait], device)
            bad = distributed.gather_lists(bad)
            summary = {"epoch": epoch, "train_loss": loss_sum / max(1, seen), "train_acc": correct / max(1, seen),
                       "seconds": seconds, "clips_per_s": seen / seconds, "data_wait": wait / ctx.world / seconds,
                       "skipped_videos": len(bad)}
            if metrics_file is not None:
                metrics_file.write(json.dumps(summary) + "\n")
        if board is not None:
            for key in ("train_loss", "train_acc", "clips_per_s", "data_wait"):
                board.add_scalar(f"epoch/{key}", summary[key], step)
            board.flush()
        if bad and ctx.main:
            log.warning("epoch %d: skipped %d undecodable video(s):\n  %s", epoch, len(bad), "\n  ".join(sorted(bad)))
        if ctx.main:
            log.info("epoch %d: loss %.4f acc %.3f | %.1f clips/s, %.0f%% of the time waiting for data", epoch,
                     summary["train_loss"], summary["train_acc"], summary["clips_per_s"], 100 * summary["data_wait"])
            save_checkpoint(ckpt_path, {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng_state(device),
                "epoch": epoch,
                "world": ctx.world,
                "config": to_dict(cfg),
                "labels": {"classes": dataset.labels.classes, "actions": dataset.labels.actions},
                "clip_weights": weights,
            })
    if board is not None:
        board.close()
    return ckpt_path


def forward_backward(net: Any, model: PCMCI, frames: torch.Tensor, target: torch.Tensor, steps: torch.Tensor,
                     weight: float, amp: bool, clip_weights: torch.Tensor | None = None,
                     ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One micro-batch: forward ``frames[B,F,3,H,W]`` through ``net`` (the model, DDP-wrapped and/or compiled)
    under bf16 autocast when ``amp``, the loss against ``target`` and ``steps[B,A]`` (each clip weighted by
    ``clip_weights[B]``, IVC's backdoor, when given), and the backward of ``weight x loss`` (the micro-batch's share
    of its accumulation group). Returns (outputs, unweighted loss)."""
    with torch.autocast(frames.device.type, dtype=torch.bfloat16, enabled=amp):
        out = net(frames)
        loss = model.loss(out, target, steps, clip_weights)
    (loss * weight).backward()
    return out, loss


def optimizer_step(model: PCMCI, optimizer: torch.optim.Optimizer, scheduler: Any, grad_clip: float) -> torch.Tensor:
    """Clip the gradient norm to ``grad_clip``, step the optimiser and the LR schedule, clear the gradients;
    returns the norm before clipping."""
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return grad_norm


def _records(metrics_path: Path) -> list[str]:
    """The complete JSON lines of ``metrics.jsonl`` (a line torn by a kill mid-write is dropped)."""
    lines = metrics_path.read_text().splitlines() if metrics_path.is_file() else []
    complete = []
    for line in lines:
        try:
            json.loads(line)
        except json.JSONDecodeError:
            continue
        complete.append(line)
    return complete


def _micro_batch_sizes(n: int, batch_size: int, world: int) -> list[int]:
    """Clips per rank in each batch of an epoch: the shard of ``ceil(n / world)`` items cut into batches."""
    shard = math.ceil(n / world)
    return [min(batch_size, shard - start) for start in range(0, shard, batch_size)]


def _log_compile(seconds: float) -> None:
    breaks = torch._dynamo.utils.counters["graph_break"]
    log.info("torch.compile: first training step took %.1f s (compilation included), %d graph break(s)%s",
             seconds, sum(breaks.values()), "".join(f"\n  {reason}" for reason in breaks))


def _tensorboard(out: Path, purge_step: int) -> Any:
    """A ``SummaryWriter`` under ``out/tensorboard``; events after ``purge_step`` (a resumed run's) are dropped."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(out / "tensorboard"), purge_step=purge_step or None)
