"""README's paper-profile table against what it quotes: parameters as ``pcmci profile --preset paper`` counts them
(the paper model built here, random weights, about 12 s on 2 CPU cores), FLOPs from the committed profile
``docs/results/profile-paper/profile.json``."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pcmci.config import load_config
from pcmci.model import build_model
from pcmci.profiling.profiler import ProfileOptions, param_report, profile_labels

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "docs/results/profile-paper/profile.json"
HEADER = "| module | params | FLOPs / video at inference (2 views) |"
PAPER_PARAMS_M, PAPER_FLOPS_G = 211, 650


def _numbers(cell: str) -> list[float]:
    return [float(n.replace(",", "").replace("−", "-")) for n in re.findall(r"[−+-]?\d[\d,]*(?:\.\d+)?", cell)]


def paper_row(start: str) -> list[list[float]]:
    """The numbers in each cell after the first of README's paper-profile row whose first cell starts so."""
    text = (ROOT / "README.md").read_text()
    for line in text[text.index(HEADER):].splitlines()[2:]:
        if not line.startswith("|"):
            break
        first, *cells = (c.strip() for c in line.strip().strip("|").split("|"))
        if first.strip("*").startswith(start):
            return [_numbers(cell) for cell in cells]
    raise AssertionError(f"README's paper-profile table has no row {start!r}")


@pytest.fixture(scope="module")
def counted() -> dict:
    """The profiler's parameter report of the paper model, built as ``pcmci profile --preset paper`` builds it."""
    return param_report(build_model(load_config("paper").model, *profile_labels(ProfileOptions())))


def test_readme_paper_parameters_are_the_profilers(counted: dict) -> None:
    million = {k: round(v["params"] / 1e6, 2) for k, v in counted["by_module"].items()}
    assert paper_row("CLIP ViT-B/16 image tower")[0] == [million["clip_visual"]]
    assert paper_row("CLIP text tower")[0] == [million["clip_text"]]
    assert paper_row("TimeSformer-B")[0] == [million["timesformer"]]
    assert paper_row("ICH / ICI / IVC / head")[0] == [million[s] for s in ("ich", "ici", "ivc", "head")]
    total = counted["total"] / 1e6
    assert paper_row("total")[0] == [round(total, 2), PAPER_PARAMS_M, round(100 * (total / PAPER_PARAMS_M - 1), 1)]
    assert json.loads(PROFILE.read_text())["params"]["total"] == counted["total"], f"{PROFILE} is stale"


def test_readme_paper_flops_are_the_committed_profiles() -> None:
    flops = json.loads(PROFILE.read_text())["flops"]
    giga = {k: v / 1e9 for k, v in flops["by_module"].items()}
    assert paper_row("CLIP ViT-B/16 image tower")[1][0] == giga["clip_visual"] == 0
    assert paper_row("TimeSformer-B")[1] == [round(giga["timesformer"], 2), round(giga["timesformer"] / flops["views"], 2)]
    assert paper_row("ICH / ICI / IVC / head")[1] == [round(giga[s], 2) for s in ("ich", "ici", "ivc", "head")]
    total = flops["total"] / 1e9
    assert paper_row("total")[1][:3] == [round(total, 2), PAPER_FLOPS_G, round(100 * (total / PAPER_FLOPS_G - 1), 1)]
