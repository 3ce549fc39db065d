"""Latency per stage, peak memory and clips/s: CUDA events on GPU (after warm-up, medians), ``perf_counter`` on CPU.

Stage times come from forward hooks on the stage modules, so they time the model's own forward; on CPU the peak
memory is the process's peak resident set (a high-water mark over the whole run), on GPU the peak allocated.
"""
from __future__ import annotations

import contextlib
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ..engine.compile import FallbackCompiled
from ..engine.optimizers import adam
from ..model import PCMCI


class _Clock:
    """Timestamps on the host (CPU) or CUDA events; ``ms(a, b)`` after ``sync()``."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def now(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def ms(self, start: Any, end: Any) -> float:
        return start.elapsed_time(end) if self.cuda else 1e3 * (end - start)


@contextlib.contextmanager
def _stage_hooks(stages: dict[str, nn.Module], clock: _Clock, marks: dict[str, list[Any]]) -> Iterator[None]:
    """Record a (start, end) timestamp pair per stage call into ``marks``."""
    handles = []
    for name, module in stages.items():
        handles.append(module.register_forward_pre_hook(
            lambda m, a, n=name: marks.setdefault(n, []).append(clock.now())))
        handles.append(module.register_forward_hook(lambda m, a, o, n=name: marks[n].append(clock.now())))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _timed(step: Callable[[], Any], clock: _Clock, warmup: int, repeats: int,
           stages: dict[str, nn.Module] | None = None) -> tuple[list[float], dict[str, list[float]], float]:
    """Run ``step`` warmup + repeats times -> (step ms per repeat, stage ms per repeat, first-call ms)."""
    totals: list[float] = []
    per_stage: dict[str, list[float]] = {}
    first = 0.0
    for i in range(warmup + repeats):
        marks: dict[str, list[Any]] = {}
        with _stage_hooks(stages or {}, clock, marks):
            start = clock.now()
            step()
            end = clock.now()
        clock.sync()
        if i == 0:
            first = clock.ms(start, end)
        if i < warmup:
            continue
        totals.append(clock.ms(start, end))
        for name, stamps in marks.items():
            per_stage.setdefault(name, []).append(sum(clock.ms(a, b) for a, b in zip(stamps[::2], stamps[1::2])))
    return totals, per_stage, first


def _autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    if device.type == "cuda" and amp:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def measure_inference(model: nn.Module, frames: Tensor, stages: dict[str, nn.Module], warmup: int, repeats: int,
                      amp: bool) -> dict[str, Any]:
    """Eval-mode forward: median ms per stage and in total, clips/s, peak memory."""
    device = frames.device
    clock = _Clock(device)
    model.eval()
    _reset_peak(device)

    def step() -> None:
        with torch.no_grad(), _autocast(device, amp):
            model(frames)

    totals, per_stage, _ = _timed(step, clock, warmup, repeats, stages)
    forward = statistics.median(totals)
    return {
        "forward_ms": forward,
        "stages_ms": {name: statistics.median(per_stage.get(name, [0.0])) for name in stages},
        "clips_per_s": frames.shape[0] / (forward / 1e3),
        "peak_memory_bytes": _peak_memory(device),
    }


def measure_train_step(model: PCMCI, frames: Tensor, warmup: int, repeats: int, amp: bool,
                       compiled: bool) -> dict[str, Any]:
    """One optimisation step (forward, loss, backward, Adam step), eager or ``torch.compile``d (with the training
    loop's fallbacks, ``FallbackCompiled``): median ms, clips/s, peak memory, and the first call (which includes
    compilation); compiled, also the compile stage that ran and the failures that led to it."""
    device = frames.device
    clock = _Clock(device)
    model.train()
    forward = FallbackCompiled(model) if compiled else model
    optimizer = adam((p for p in model.parameters() if p.requires_grad), 1e-5, 0.0, "adam")
    b = frames.shape[0]
    multilabel = model.cfg.multilabel
    target = torch.zeros((b, len(model.classes)) if multilabel else (b,), device=device,
                         dtype=torch.float32 if multilabel else torch.long)
    _reset_peak(device)

    def step() -> None:
        with _autocast(device, amp):
            loss = model.loss(forward(frames), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    totals, _, first = _timed(step, clock, warmup, repeats)
    ms = statistics.median(totals)
    out = {"step_ms": ms, "clips_per_s": frames.shape[0] / (ms / 1e3), "first_call_ms": first,
           "peak_memory_bytes": _peak_memory(device)}
    if isinstance(forward, FallbackCompiled):
        out.update(compile_stage=forward.stage, compile_failures=forward.failures)
    return out
