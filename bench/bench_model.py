"""Model benchmarks (``make bench``): the paper preset's full profile with its budget bars, and the tiny forward.

The paper profile (random weights, nothing downloaded) takes minutes on CPU; its report is kept under
``bench/results/profile-paper-<device>/``.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from pytest_benchmark.fixture import BenchmarkFixture

from pcmci.config import preset
from pcmci.model import build_model
from pcmci.profiling import ProfileOptions, run_profile

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
RESULTS = Path(__file__).parent / "results"


def test_paper_profile(benchmark: BenchmarkFixture) -> None:
    out = RESULTS / f"profile-paper-{DEVICE}"
    options = ProfileOptions(device=DEVICE, warmup=1 if DEVICE == "cpu" else 5, repeats=3 if DEVICE == "cpu" else 20)
    paths = benchmark.pedantic(run_profile, args=(preset("paper"), options, out, "paper"), rounds=1, iterations=1)
    report = json.loads(paths["json"].read_text())
    params, flops = report["params"]["total"], report["flops"]["total"]
    benchmark.extra_info.update(params=params, flops=flops, per_module_flops=report["flops"]["by_module"],
                                latency=report["latency"])
    assert abs(params / 211e6 - 1) <= 0.05, params
    assert abs(flops / 650e9 - 1) <= 0.05, flops
    assert report["flops"]["skipped_matmul"] == []
    assert report["cross_check"]["ok"]


def test_tiny_forward(benchmark: BenchmarkFixture) -> None:
    torch.manual_seed(0)
    model = build_model(preset("tiny").model, ["a", "b", "c"], ["x", "y"]).to(DEVICE).eval()
    frames = torch.rand(8, 8, 3, 64, 64, device=DEVICE)
    model.build_dictionaries([frames])

    def forward() -> None:
        with torch.no_grad():
            model(frames)
        if DEVICE == "cuda":
            torch.cuda.synchronize()

    benchmark(forward)
