"""The dispatch tables, compiled ahead of time for sm_80 / sm_89 / sm_90 without a GPU: every launch the
dispatchers pick at the paper, COIN and benchmark shapes is spill-free and within the arch's shared memory."""
from __future__ import annotations

import importlib
import json
import shutil

import pytest
import torch

from pcmci.cli import main
from pcmci.config import preset
from pcmci.data.formats import BREAKFAST_ACTIONS, BREAKFAST_ACTIVITIES
from pcmci.kernels import aot, report
from pcmci.kernels._common import ARCHS, triton_type

sk = importlib.import_module("pcmci.kernels.sinkhorn")
rel = importlib.import_module("pcmci.kernels.relation")
try:
    from triton.backends.nvidia.compiler import get_ptxas

    HAS_PTXAS = shutil.which(get_ptxas(90).path) is not None
except (ImportError, RuntimeError):
    HAS_PTXAS = False
needs_ptxas = pytest.mark.skipif(not HAS_PTXAS, reason="triton's bundled ptxas not found")


@pytest.fixture(scope="module")
def table() -> dict:
    """The whole table at the paper + benchmark shapes, fp32 and bf16 (fp16 shares bf16's tiles), three archs;
    each distinct launch compiled once, in two processes."""
    return report.build(ARCHS, ["fp32", "bf16"], "all", workers=2)


@needs_ptxas
def test_every_dispatched_launch_is_spill_free_and_fits(table: dict) -> None:
    bad = [f"sm_{r['arch']} {r['case']} {r['shape']} {r['dtype']} {r['kernel']} {r['config']}: {r['problems']}"
           for r in table["kernels"] if r["problems"] or not r["fits"]]
    assert not bad, "\n".join(bad)
    assert table["ok"]
    for r in table["kernels"]:  # independent of aot.check: ptxas numbers against the arch limits
        lim = aot.ARCH_LIMITS[r["arch"]]
        assert r["spill_stores"] == r["spill_loads"] == 0 and r["shared"] <= lim.smem_per_block
        assert 0 < r["registers"] <= 255 and r["blocks_per_sm"] >= 1
    seen = {(r["op"], r["case"], r["dtype"], r["arch"]) for r in table["kernels"]}
    for case in ("Breakfast ICH", "COIN ICH", "Charades ICH"):
        assert {("sinkhorn", case, d, a) for d in ("fp32", "bf16") for a in ARCHS} <= seen
    assert {("relation", c, "fp32", 89) for c in ("Breakfast ICI", "COIN ICI", "IVC", "bench")} <= seen


@needs_ptxas
def test_cli_report_json_and_markdown(table: dict, capsys: pytest.CaptureFixture) -> None:
    assert main(["kernels", "report", "--arch", "89", "--dtype", "bf16", "--shapes", "paper", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and out["archs"] == [89] and {r["dtype"] for r in out["kernels"]} == {"bf16"}
    assert {"registers", "spills", "shared", "blocks_per_sm", "warps_per_sm", "occupancy"} <= set(out["kernels"][0])
    coin = next(r for r in out["roofline"] if r["case"] == "COIN ICH")  # exp-bound: 16 MUFU/clk/SM
    assert coin["RTX 4090"]["fwd_us"] == pytest.approx(1e6 * 8 * 958 * 8 * 101 / (128 * 16 * 2.52e9))
    h100 = coin["H100"]
    assert h100["fwdbwd_us"] > h100["fwd_us"] == pytest.approx(1e6 * 8 * 958 * 8 * 101 / (132 * 16 * 1.98e9))
    assert main(["kernels", "report", "--arch", "90", "--dtype", "bf16"]) == 0
    md = capsys.readouterr().out
    assert "## sm_90 (H100)" in md and "| sinkhorn | COIN ICH | 8x958x8 | bf16 | _fwd" in md


def test_occupancy_from_arch_limits() -> None:
    """128 registers x 4 warps: 16 KB of registers per warp -> 16 warps (4 blocks) fit the 64 K register file."""
    stats = aot.KernelStats("k", 89, num_warps=4, registers=128, spill_stores=0, spill_loads=0, stack=0, shared=8192)
    occ = aot.occupancy(stats, 89)
    assert occ == {"fits": True, "blocks_per_sm": 4, "warps_per_sm": 16, "occupancy": 16 / 48,
                   "limited_by": "registers"}
    big = aot.KernelStats("k", 89, num_warps=4, registers=32, spill_stores=0, spill_loads=0, stack=0, shared=40_000)
    assert aot.occupancy(big, 89)["blocks_per_sm"] == 2 and aot.occupancy(big, 89)["limited_by"] == "shared"
    over = aot.KernelStats("k", 89, num_warps=4, registers=32, spill_stores=8, spill_loads=8, stack=0, shared=110_000)
    assert not aot.occupancy(over, 89)["fits"] and aot.occupancy(over, 90)["fits"]
    assert aot.check(over) == ["spills 8 B stores / 8 B loads", "shared memory 110000 B > 101376 B (RTX 4090)"]


def test_report_shapes_are_the_paper_presets() -> None:
    cfg = preset("paper").model
    assert report.PAPER_TOKENS == cfg.timesformer.frames and report.PAPER_ITERS == cfg.ich.iters
    assert report.PAPER_BASES == cfg.ici.bases == cfg.ivc.bases
    assert report.PAPER_BATCH == preset("paper").optim.batch_size
    assert report.LABEL_TEXTS["Breakfast"] == len(BREAKFAST_ACTIVITIES) + len(BREAKFAST_ACTIONS)
    assert {c.shape for c in report.cases("paper") if c.op == "sinkhorn"} == {(8, 58, 8), (8, 958, 8), (8, 157, 8)}
    with pytest.raises(ValueError, match="shapes must be"):
        report.cases("huge")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_launch_configs_cover_every_launch(dtype: torch.dtype) -> None:
    """Regime 1 is one forward and one backward launch, regime 2 one forward and two backward; the signature
    names every kernel argument, and the tile covers an on-chip problem."""
    onchip = sk.launch_configs(8, 58, 8, dtype, 89)
    assert [x.fn for x in onchip] == [sk._fwd_onchip, sk._bwd_onchip]
    assert onchip[0].constexprs["BR"] >= 58 and onchip[0].constexprs["BS"] >= 8
    streamed = sk.launch_configs(8, 200, 2048, dtype, 89, masked=True)
    assert [x.fn for x in streamed] == [sk._fwd_stream, sk._bwd_stream_adjoints, sk._bwd_stream_cost]
    assert streamed[0].signature["M"] == "*u8" and streamed[0].signature["C"] == "*" + triton_type(dtype)
    for launch in [*onchip, *streamed, *rel.launch_configs(8, 8, 958, 64, 64, dtype, 90)]:
        assert list(launch.signature) == launch.fn.arg_names
        assert {k for k, v in launch.signature.items() if v == "constexpr"} == set(launch.constexprs)
    with pytest.raises(ValueError, match="no Triton kernel"):
        sk.launch_configs(1, 4, 4, torch.int32, 89)
