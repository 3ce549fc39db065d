"""Helpers for the engine tests that start real ``pcmci train`` processes and compare finished runs."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pcmci.engine.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run in-process training with one intra-op thread, as the ``pcmci`` subprocesses here do
    (``OMP_NUM_THREADS=1``): CPU kernels then round identically and runs can be compared bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def pcmci_command(*args: str, nproc: int = 1) -> list[str]:
    """``python -m pcmci --quiet ARGS``, or the same under ``torchrun --standalone`` with ``nproc`` processes."""
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else []
    return [sys.executable, *launcher, "-m", "pcmci", "--quiet", *args]


def run_pcmci(*args: str, nproc: int = 1, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(pcmci_command(*args, nproc=nproc), cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def kill_at_first_step_of_epoch(command: list[str], metrics: Path, epoch: int, timeout: float = 300) -> int:
    """Start ``command`` in its own process group and SIGKILL the whole group as soon as ``metrics`` shows a
    training step of ``epoch`` (mid-epoch); returns the leader's exit status (``-SIGKILL``)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            lines = metrics.read_text().splitlines() if metrics.is_file() else []
            if any('"step"' in line and f'"epoch": {epoch},' in line for line in lines):
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.002)
        return proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def step_losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "step" in r]


def assert_same_run(a: Path, b: Path, atol: float = 1e-5, weight_atol: float | None = None) -> None:
    """Per-step losses agree within ``atol``, final weights within ``weight_atol`` (default ``atol``)."""
    np.testing.assert_allclose(step_losses(a), step_losses(b), rtol=0, atol=atol)
    atol = atol if weight_atol is None else weight_atol
    ma, mb = load_checkpoint(a / "checkpoint.pt")["model"], load_checkpoint(b / "checkpoint.pt")["model"]
    assert ma.keys() == mb.keys()
    for name, x in ma.items():
        y = mb[name]
        torch.testing.assert_close(x, y, rtol=0, atol=atol, msg=name)
