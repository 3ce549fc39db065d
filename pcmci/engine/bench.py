"""``pcmci bench train``: end-to-end training throughput, per variant, through ``pcmci train``'s own step.

Each variant builds the model, optimiser and LR schedule as ``pcmci train`` does (``build_model``,
``make_optimizer``, ``cosine_with_warmup``), wraps it as ``run.compile`` does (``FallbackCompiled``), and runs
``warmup + steps`` optimisation steps of ``train.forward_backward`` + ``train.optimizer_step`` on batches of
``optim.batch_size`` clips. Variants: ``eager`` / ``compiled`` (``torch.compile`` with the training loop's
fallbacks), optionally ``+triton``: the fused ops run their Triton kernels (``PCMCI_KERNELS=triton``), else the
reference math (``PCMCI_KERNELS=reference``, which Inductor compiles in ``compiled``).

Input: ``synthetic`` = random frames made on the device once (model-bound), ``loader`` = the config's real data
loader (``make_loader``, as in training): the gap between the two is the data's cost. A step's time runs from
asking for the batch to the end of the optimiser step (the device synchronised); data wait = the time to get
the batch onto the device. clips/s = clips / summed step time of the timed steps.

FLOPs per training clip come from the project's profiler: fvcore's forward count per module group of one clip
(``profiling.flops.fvcore_count``, 1 MAC = 1 FLOP there), the groups whose parameters are all frozen (the CLIP
image tower) once, every other group three times (forward + backward, the backward being twice the forward).
Reported as MACs and as FLOPs = 2 x MACs; MFU = FLOPs per clip x clips/s / the device's dense peak for the
dtype (``kernels.roofline.PEAKS``, or ``--peak-tflops``).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import triton

from ..config import Config, ConfigError
from ..data.loader import make_loader
from ..kernels.roofline import PEAKS
from ..model import PCMCI, build_model
from ..profiling.flops import fvcore_count
from ..profiling.profiler import MODULES, param_report
from ..profiling.timing import _peak_memory, _reset_peak
from .compile import FallbackCompiled
from .runtime import load_labels, make_dataset, resolve_device, seed_everything
from .train import cosine_with_warmup, forward_backward, make_optimizer, optimizer_step

INPUTS = ("synthetic", "loader")
DTYPES = ("bf16", "fp32")  # bf16 = pcmci train's optim.amp (bf16 autocast, CUDA only); fp32 = no autocast
SYNTHETIC_CLASSES, SYNTHETIC_ACTIONS = 10, 48  # Breakfast's 10 activities and 48 atomic actions, as the profiler


@dataclass
class BenchOptions:
    """What to run: ``steps`` timed steps after ``warmup`` untimed ones per variant, the input, the variants
    (``eager``, ``compiled``, each optionally ``+triton``), the dtype (``bf16`` or ``fp32``; default bf16 on
    CUDA, fp32 on CPU) and the dense peak in TFLOP/s when the device is not in the table."""

    steps: int = 20
    warmup: int = 3
    input: str = "synthetic"
    variants: list[str] = field(default_factory=list)
    dtype: str | None = None
    peak_tflops: float | None = None

    def __post_init__(self) -> None:
        if self.steps < 1 or self.warmup < 0:
            raise ConfigError(f"bench train: --steps must be >= 1 and --warmup >= 0, got {self.steps}, {self.warmup}")
        if self.input not in INPUTS:
            raise ConfigError(f"bench train: --input must be one of {', '.join(INPUTS)}, got {self.input!r}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ConfigError(f"bench train: --dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.peak_tflops is not None and not (self.peak_tflops > 0 and math.isfinite(self.peak_tflops)):
            raise ConfigError(f"bench train: --peak-tflops must be a positive finite number, got {self.peak_tflops}")
        if "" in self.variants:  # "--variants ''" or "eager,": never read as the default set
            raise ConfigError(f"bench train: --variants has an empty name in {','.join(self.variants)!r}; give e.g. "
                              "eager,compiled (leave --variants out for the default set)")
        for name in self.variants:
            parse_variant(name)
        if len(set(self.variants)) != len(self.variants):  # a repeat is timed again and tabled twice
            raise ConfigError(f"bench train: --variants lists a variant twice: {','.join(self.variants)}")


def parse_variant(name: str) -> tuple[bool, str]:
    """``eager|compiled[+triton]`` -> (compiled?, ``PCMCI_KERNELS`` value)."""
    base, _, kernels = name.partition("+")
    if base not in ("eager", "compiled") or kernels not in ("", "triton"):
        raise ConfigError(f"bench train: unknown variant {name!r}; valid: eager, compiled, eager+triton, "
                          "compiled+triton")
    return base == "compiled", "triton" if kernels else "reference"


def default_variants(device: torch.device) -> list[str]:
    """All three on CUDA; on CPU the Triton kernels need a GPU (or the slow interpreter), so eager and compiled."""
    return ["eager", "compiled", "compiled+triton"] if device.type == "cuda" else ["eager", "compiled"]


@contextlib.contextmanager
def _kernels(mode: str) -> Iterator[None]:
    """``PCMCI_KERNELS=mode`` for the duration (the ops read it at every call, and at trace time when compiled)."""
    saved = os.environ.get("PCMCI_KERNELS")
    os.environ["PCMCI_KERNELS"] = mode
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PCMCI_KERNELS", None)
        else:
            os.environ["PCMCI_KERNELS"] = saved


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def peak_flops(device: torch.device, dtype: str, peak_tflops: float | None) -> tuple[float | None, str]:
    """(dense peak FLOP/s, its source): ``--peak-tflops``, else the ``PEAKS`` entry named in the CUDA device's
    name (bf16 tensor cores with fp32 accumulate, or fp32 CUDA cores), else none (no MFU: CPU, unknown GPU)."""
    if peak_tflops is not None:
        return peak_tflops * 1e12, "--peak-tflops"
    if device.type != "cuda":
        return None, "none (CPU: pass --peak-tflops)"
    name = torch.cuda.get_device_name(device)
    gpu = next((g for g in PEAKS if g in name), None)
    if gpu is None:
        return None, f"none ({name} not in the table: pass --peak-tflops)"
    return PEAKS[gpu].matmul[dtype], f"{gpu} dense {dtype} peak"


def training_macs(model: PCMCI, clip: torch.Tensor) -> dict[str, Any]:
    """MACs of one training clip ``clip[1,F,3,H,W]``: forward MACs per module group (fvcore, the profiler's
    count), frozen groups (every parameter frozen) counted once, the others three times."""
    was_training = model.training
    model.eval()
    count = fvcore_count(model, (clip,))
    model.train(was_training)
    by_group = {g: count.by_module.get(path, 0) for g, path in MODULES.items()}
    by_group["clip_text"] = count.by_module.get("clip.model", 0) - by_group["clip_visual"]  # 0: not run
    by_group["other"] = count.total - sum(by_group.values())
    groups = param_report(model)["by_module"]
    frozen = sorted(g for g, info in groups.items() if info["params"] > 0 and info["trainable"] == 0)
    forward = count.total
    frozen_macs = sum(by_group[g] for g in frozen)
    return {"forward": forward, "frozen_groups": frozen, "frozen_forward": frozen_macs,
            "training": frozen_macs + 3 * (forward - frozen_macs), "by_group": by_group}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _synthetic_batches(cfg: Config, model: PCMCI, device: torch.device) -> Iterator[dict[str, torch.Tensor]]:
    """One device-resident batch of random frames, labels and atomic-action targets, served every step."""
    b, t = cfg.optim.batch_size, cfg.model.timesformer
    g = torch.Generator().manual_seed(cfg.run.seed)
    frames = torch.rand(b, t.frames, 3, t.img_size, t.img_size, generator=g)
    classes, actions = len(model.classes), len(model.actions)
    label = (torch.rand(b, classes, generator=g) > 0.5).float() if cfg.model.multilabel \
        else torch.randint(classes, (b,), generator=g)
    batch = {"video": frames.to(device), "label": label.to(device),
             "steps": (torch.rand(b, actions, generator=g) > 0.5).float().to(device)}
    while True:
        yield batch


def _loader_batches(cfg: Config, dataset: Any, device: torch.device) -> Iterator[dict[str, Any]]:
    """The training loader's batches, epoch after epoch; batches whose videos were all skipped are passed over."""
    epoch = 0
    while True:
        for batch in make_loader(dataset, cfg.optim.batch_size, device, shuffle=True, epoch=epoch,
                                 num_workers=cfg.data.num_workers):
            if "video" in batch:
                yield batch
        epoch += 1


def _model(cfg: Config, device: torch.device, dataset: Any | None) -> PCMCI:
    """The model of ``cfg`` as ``pcmci train`` builds it, dictionaries fitted (k-means) on one random batch."""
    seed_everything(cfg.run.seed)
    if dataset is not None:
        classes, actions = dataset.labels.classes, dataset.labels.actions
    else:
        classes = [f"activity {i}" for i in range(SYNTHETIC_CLASSES)]
        actions = [f"action {i}" for i in range(SYNTHETIC_ACTIONS)]
    model = build_model(cfg.model, classes, actions).to(device, getattr(torch, cfg.run.dtype))
    t = cfg.model.timesformer
    g = torch.Generator().manual_seed(cfg.run.seed)
    model.build_dictionaries([torch.rand(cfg.optim.batch_size, t.frames, 3, t.img_size, t.img_size, generator=g)
                              .to(device)], seed=cfg.run.seed)
    return model


def run_variant(cfg: Config, name: str, options: BenchOptions, device: torch.device, amp: bool,
                dataset: Any | None) -> dict[str, Any]:
    """``warmup + steps`` training steps of one variant; its timings, data wait, peak memory and compile stage."""
    compiled, kernels = parse_variant(name)
    torch._dynamo.reset()
    with _kernels(kernels):
        model = _model(cfg, device, dataset)
        model.train()
        optimizer = make_optimizer(cfg, model)
        total = options.warmup + options.steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(total, max(1, total // 10)))
        net = FallbackCompiled(model) if compiled else model
        batches = _synthetic_batches(cfg, model, device) if dataset is None else _loader_batches(cfg, dataset, device)
        _sync(device)
        _reset_peak(device)
        step_s, wait_s, clips, first_s = [], [], 0, 0.0
        for i in range(total):
            start = time.perf_counter()
            batch = next(batches)
            frames, target = batch["video"].to(device), batch["label"].to(device)
            steps = batch["steps"].to(device)
            _sync(device)
            fetched = time.perf_counter()
            _, loss = forward_backward(net, model, frames, target, steps, 1.0, amp)
            optimizer_step(model, optimizer, scheduler, cfg.optim.grad_clip)
            _sync(device)
            end = time.perf_counter()
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"bench train {name}: non-finite loss at step {i}")
            if i == 0:
                first_s = end - start
            if i >= options.warmup:
                step_s.append(end - start)
                wait_s.append(fetched - start)
                clips += frames.shape[0]
    seconds = sum(step_s)
    p50, p90 = (statistics.quantiles(step_s, n=10, method="inclusive")[i] for i in (4, 8)) if len(step_s) > 1 \
        else (step_s[0], step_s[0])
    row = {"variant": name, "compiled": compiled, "kernels": kernels, "steps": len(step_s), "clips": clips,
           "seconds": seconds, "clips_per_s": clips / seconds, "step_ms_p50": 1e3 * p50, "step_ms_p90": 1e3 * p90,
           "step_ms": [1e3 * s for s in step_s], "data_wait_share": sum(wait_s) / seconds,
           "first_step_s": first_s, "peak_memory_bytes": _peak_memory(device)}
    if isinstance(net, FallbackCompiled):
        row.update(compile_stage=net.stage, compile_failures=net.failures)
    return row


def bench_train(cfg: Config, options: BenchOptions, name: str = "") -> dict[str, Any]:
    """Run every variant of ``options`` on ``cfg`` in this process; the report dict (``write`` renders it)."""
    device = resolve_device(cfg.run.device)
    dtype = options.dtype or ("bf16" if device.type == "cuda" else "fp32")
    if dtype == "bf16" and device.type != "cuda":
        raise ConfigError("bench train: --dtype bf16 is pcmci train's bf16 autocast (optim.amp), which runs on CUDA "
                          "only; use --dtype fp32 on CPU")
    if cfg.run.dtype != "float32":
        raise ConfigError(f"bench train: run.dtype={cfg.run.dtype} is for exact CPU checks, not throughput")
    variants = options.variants or default_variants(device)
    if device.type != "cuda" and any(parse_variant(v)[1] == "triton" for v in variants):
        raise ConfigError("bench train: the +triton variants need a CUDA device (the Triton kernels)")
    dataset = None
    if options.input == "loader":
        dataset = make_dataset(cfg, cfg.data.train_split, train=True, labels=load_labels(cfg))
    amp = dtype == "bf16"
    counter = _model(cfg, torch.device("cpu"), dataset)  # FLOPs do not depend on the device: counted on CPU
    t = cfg.model.timesformer
    macs = training_macs(counter, torch.rand(1, t.frames, 3, t.img_size, t.img_size))
    del counter
    peak, peak_source = peak_flops(device, dtype, options.peak_tflops)
    rows = [run_variant(cfg, v, options, device, amp, dataset) for v in variants]
    flops = 2 * macs["training"]
    for row in rows:
        row["achieved_tflops"] = flops * row["clips_per_s"] / 1e12
        row["mfu"] = flops * row["clips_per_s"] / peak if peak else None
    return {"name": name, "device": device_name(device), "device_type": device.type, "torch": torch.__version__,
            "triton": triton.__version__, "dtype": dtype, "input": options.input,
            "batch_size": cfg.optim.batch_size, "options": asdict(options), "macs_per_clip": macs,
            "flops_per_clip": flops, "peak_flops": peak, "peak_source": peak_source, "variants": rows}


def markdown(report: dict[str, Any], command: str) -> str:
    """One table row per variant, with the device, versions, FLOPs per clip and the command that made it."""
    macs = report["macs_per_clip"]
    lines = [f"# Training throughput: {report['name'] or 'config'} on {report['device']}", "",
             f"`{command}`", "",
             f"torch {report['torch']}, triton {report['triton']}; dtype {report['dtype']}, input {report['input']}, "
             f"batch {report['batch_size']} clips, {report['options']['steps']} timed steps after "
             f"{report['options']['warmup']} warm-up steps per variant.", "",
             f"FLOPs per training clip (fvcore forward per module group; frozen {', '.join(macs['frozen_groups'])} "
             f"x1, the rest x3): {macs['training'] / 1e9:.3f} GMAC = {report['flops_per_clip'] / 1e9:.3f} GFLOP "
             f"(forward {macs['forward'] / 1e9:.3f} GMAC). Peak: {report['peak_source']}"
             + (f" = {report['peak_flops'] / 1e12:.1f} TFLOP/s." if report["peak_flops"] else "."), "",
             "| variant | clips/s | step ms p50 | step ms p90 | data wait | peak MiB | TFLOP/s | MFU | compile |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in report["variants"]:
        stage = r.get("compile_stage", "-")
        if r.get("compile_failures"):
            stage += " (fell back: " + "; ".join(r["compile_failures"]) + ")"
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        lines.append(f"| {r['variant']} | {r['clips_per_s']:.2f} | {r['step_ms_p50']:.1f} | {r['step_ms_p90']:.1f} | "
                     f"{r['data_wait_share']:.1%} | {r['peak_memory_bytes'] / 2**20:,.0f} | "
                     f"{r['achieved_tflops']:.4f} | {mfu} | {stage} |")
    return "\n".join(lines) + "\n"


def report_paths(out: Path, name: str) -> dict[str, Path]:
    """Where the report of config ``name`` goes: ``out/bench-train-NAME.md`` and ``.json``."""
    stem = f"bench-train-{name or 'config'}"
    return {"markdown": out / f"{stem}.md", "json": out / f"{stem}.json"}


def write(report: dict[str, Any], out: Path, command: str) -> dict[str, Path]:
    """``out/bench-train-NAME.md`` and ``.json``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = report_paths(out, report["name"])
    paths["markdown"].write_text(markdown(report, command))
    paths["json"].write_text(json.dumps({**report, "command": command}, indent=1) + "\n")
    return paths
