"""The dispatch tables, compiled ahead of time for sm_80 / sm_89 / sm_90 without a GPU, with the specialisation a
real launch gets: every launch the dispatchers pick at the paper shapes and at head dims up to 128 is spill-free
and within the arch's shared memory (checked from ptxas' log, and again from the cubin by cuobjdump), the AOT
specialisation is the one triton's binder computes for the launchers' real arguments, and the compile reproduces
the shared memory the H200 measured. The whole grid (``--shapes all``, fp16 too) is ``pcmci kernels report``."""
from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

from pcmci.cli import main
from pcmci.config import preset
from pcmci.data.formats import BREAKFAST_ACTIONS, BREAKFAST_ACTIVITIES
from pcmci.kernels import aot, report
from pcmci.kernels import relation as rel
from pcmci.kernels import sinkhorn as sk
from pcmci.kernels._common import ARCHS, triton_type

try:
    from triton.backends.nvidia.compiler import get_ptxas

    PTXAS = Path(get_ptxas(90).path)
    HAS_PTXAS = shutil.which(str(PTXAS)) is not None
except (ImportError, RuntimeError):
    HAS_PTXAS = False
needs_ptxas = pytest.mark.skipif(not HAS_PTXAS, reason="triton's bundled ptxas not found")
H200_LOG = Path(__file__).resolve().parents[1] / "bench/results/h200-2026-11-26.md"
# The representative subset of `make test`: the paper's stage shapes in all three dtypes, and the widest head
# (d = 128, every N bucket, masked too) in fp32 and bf16; `pcmci kernels report --shapes all` compiles the rest.
WIDE = [c for c in report.cases("heads") if c.shape[3] == 128 and c.masked == (c.shape[2] == 58)]


@pytest.fixture(scope="module")
def table() -> dict:
    """The paper shapes in fp32/bf16/fp16 and the d = 128 heads in fp32/bf16, three archs; each distinct
    specialisation compiled once, in two processes."""
    paper = report.build(ARCHS, list(report.DTYPES), "paper", workers=2)
    wide = report.build(ARCHS, ["fp32", "bf16"], WIDE, workers=2)
    return {"ok": paper["ok"] and wide["ok"], "kernels": paper["kernels"] + wide["kernels"]}


@needs_ptxas
def test_every_dispatched_launch_is_spill_free_and_fits(table: dict) -> None:
    bad = [f"sm_{r['arch']} {r['case']} {r['shape']} {r['dtype']} {r['kernel']} {r['config']}: {r['problems']}"
           for r in table["kernels"] if r["problems"] or not r["fits"]]
    assert not bad, "\n".join(bad)
    assert table["ok"]
    seen = {(r["op"], r["case"], r["dtype"], r["arch"]) for r in table["kernels"]}
    for case in ("Breakfast ICH", "COIN ICH", "Charades ICH"):
        assert {("sinkhorn", case, d, a) for d in report.DTYPES for a in ARCHS} <= seen
    assert {("relation", c, "fp32", 89) for c in ("Breakfast ICI", "COIN ICI", "IVC", "d=128", "d=128 masked")} <= seen
    ici = [r for r in table["kernels"] if r["case"] == "Breakfast ICI" and r["dtype"] == "bf16"]
    assert {r["div16"] for r in ici} == {"d,e"}  # N = 58 is not divisible by 16, d = e = 64 are


def _cuobjdump(cubin: bytes) -> dict[str, int]:
    """``cuobjdump -res-usage`` of one kernel's cubin: REG, STACK, SHARED (static), LOCAL (bytes per thread)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([str(PTXAS.with_name("cuobjdump")), "-res-usage", f.name], capture_output=True,
                             text=True, check=True).stdout
    return {k: int(v) for k, v in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", out)}


def _compiled(fn: Any, jobs: list) -> list:
    """``fn`` over ``jobs`` in fresh processes without ``TRITON_INTERPRET`` (the interpreter's kernels do not
    compile), as the report compiles."""
    with report._compiling_env(), ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(fn, jobs))


def _cubin_usage(job: tuple[int, str]) -> list[tuple[str, dict[str, int], int]]:
    """(kernel, cuobjdump usage, dynamic shared bytes) of the d = 128, N = 64 relation launches on one arch."""
    arch, dname = job
    out = []
    for launch in rel.launch_configs(8, 8, 64, 128, 128, report.DTYPES[dname], arch):
        kernel, _ = aot.compile_launch(launch, arch)
        out.append((launch.fn.__name__, _cuobjdump(kernel.asm["cubin"]), kernel.metadata.shared))
    return out


@needs_ptxas
def test_widest_tiles_checked_again_from_the_cubin(table: dict) -> None:
    """Independent of the report's ptxas log: the cubin's own resource table (cuobjdump) shows no local memory
    (no spills) and no stack, the same registers, and its static shared memory plus the kernel's dynamic shared
    memory fits the arch's per-block limit (the CUDA programming guide's opt-in maximum, not ``aot.ARCH_LIMITS``)."""
    opt_in = {80: 163 * 1024, 89: 99 * 1024, 90: 227 * 1024}
    jobs = [(arch, dname) for arch in ARCHS for dname in ("fp32", "bf16")]
    for (arch, dname), kernels in zip(jobs, _compiled(_cubin_usage, jobs)):
        for name, usage, shared in kernels:
            row = next(r for r in table["kernels"] if r["case"] == "d=128" and r["shape"][2] == 64
                       and r["arch"] == arch and r["dtype"] == dname and r["kernel"] == name)
            assert usage["LOCAL"] == usage["STACK"] == 0, (arch, dname, name, usage)
            assert usage["REG"] == row["registers"] <= 255
            assert usage["SHARED"] + shared <= opt_in[arch]


def _h200_rows() -> list[dict[str, Any]]:
    """The rows of the H200 run's real-compile table (``bench/results/h200-2026-11-26.md``)."""
    head = "| case | shape | dtype | kernel | config |"
    lines = H200_LOG.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(head))
    names = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(names, (c.strip() for c in line.strip("|").split("|")))))
    return rows


def _h200_shared(row: dict[str, Any]) -> int:
    """The shared memory of the launch an H200 row names (its tile and warps, triton's default 3 stages), compiled
    for sm_90 with the launch's specialisation."""
    dims = [int(x) for x in row["shape"].split("x")]
    dtype = report.DTYPES[row["dtype"]]
    tile, *_, warps = row["config"].split()
    if len(dims) == 3:
        launches = sk.launch_configs(*dims, dtype, 90, iters=report.PAPER_ITERS)
        size = dict(zip(("BR", "BS"), map(int, tile.split("x"))))
    else:
        launches = rel.launch_configs(*dims, dtype, 90)
        size = dict(zip(("BM", "BN"), map(int, tile.split("x"))))
    launch = next(x for x in launches if x.fn.__name__ == row["kernel"])
    launch = launch._replace(constexprs={**launch.constexprs, **size}, num_warps=int(warps[1:]), num_stages=3)
    return aot.compile_stats(launch, 90).shared


@needs_ptxas
def test_aot_shared_memory_equals_the_h200_measurement() -> None:
    """Regression fixture: every launch the H200 compiled (triton 3.6, sm_90) recompiled here for sm_90 with the
    launch's specialisation uses the shared memory the device reported: bf16 ``_relation_fwd`` 64x64 w8, 57,344 B
    (the old AOT report, pointers-only specialisation, said 24,576 B)."""
    rows = _h200_rows()
    assert len(rows) == 7 and any(r["real shared"] == "57344" and r["kernel"] == "_relation_fwd" for r in rows)
    assert _compiled(_h200_shared, rows) == [int(r["real shared"]) for r in rows]


def _recorded(monkeypatch: pytest.MonkeyPatch, module: Any) -> list[tuple[Any, tuple, dict]]:
    """Replace ``module.wrap_triton`` by a recorder: each launch's (kernel, args, kwargs), nothing runs."""
    calls: list[tuple[Any, tuple, dict]] = []

    class Recorder:
        def __init__(self, fn: Any) -> None:
            self.fn = fn

        def __getitem__(self, grid: Any) -> Any:
            return lambda *args, **kwargs: calls.append((self.fn, args, kwargs))

    monkeypatch.setattr(module, "wrap_triton", Recorder)
    return calls


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("B,K,N,d,e,masked", [(8, 8, 58, 64, 64, False), (2, 1, 64, 32, 48, True),
                                              (3, 8, 16, 128, 128, False), (1, 2, 1, 17, 96, False)])
def test_relation_specialisation_equals_a_real_launch(monkeypatch: pytest.MonkeyPatch, arch: int, B: int, K: int,
                                                      N: int, d: int, e: int, masked: bool) -> None:
    """The launchers' real arguments (CPU tensors, which torch allocates 64-byte aligned like CUDA's allocator)
    through triton's binder give exactly the specialisation ``launch_configs`` predicts: types, constants (here
    ``NB = 1`` and ``N = 1``), divisibility of ``N, d, e``, options (warps and stages). ``k`` is a view (the second
    half of one allocation): at d = 17 it starts 68 bytes in, which the launcher copies to an aligned tensor."""
    calls = _recorded(monkeypatch, rel)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, B, K, N, d, generator=g, dtype=torch.bfloat16)
    v = torch.randn(B, K, N, e, generator=g, dtype=torch.bfloat16)
    prior, mask = torch.full((K,), 1 / K), (torch.rand(B, N, generator=g) > 0.2) if masked else None
    rel.triton_forward(q, k, v, prior, mask)
    rel.triton_backward(torch.randn(B, N, e, dtype=torch.bfloat16), q, k, v, prior, mask, torch.zeros(B, K, N))
    predicted = rel.launch_configs(B, K, N, d, e, torch.bfloat16, arch, masked)
    assert [fn for fn, *_ in calls] == [x.fn for x in predicted]
    for (fn, args, kwargs), launch in zip(calls, predicted):
        real = aot.bind_values(fn, arch, args, kwargs)
        assert real == aot.bind(launch, arch)
        names = list(real.signature)
        constants = {names[i] for (i,) in real.constexprs} - set(launch.constexprs)
        assert constants == {n for n, x in (("NB", K), ("N", N)) if x == 1}
        assert {"d", "e", "N"} & set(real.divisible()) == {n for n, x in (("d", d), ("e", e), ("N", N)) if x % 16 == 0}


@pytest.mark.parametrize("B,R,S,iters,masked", [(8, 58, 8, 50, False), (4, 200, 2048, 64, True), (2, 16, 1, 3, False)])
def test_sinkhorn_specialisation_equals_a_real_launch(monkeypatch: pytest.MonkeyPatch, B: int, R: int, S: int,
                                                      iters: int, masked: bool) -> None:
    """As for the relation kernels, in both regimes: ``T = iters`` is specialised (64 divisible by 16), ``S = 1``
    becomes a constant, the float ``neg_inv_eps`` is not specialised."""
    calls = _recorded(monkeypatch, sk)
    cost = torch.rand(B, R, S)
    la, lb = torch.zeros(B, R), torch.zeros(B, S)
    mask = torch.rand(B, R, S) > 0.1 if masked else None
    sk.triton_forward(cost, la, lb, 0.1, iters, mask)
    rh, ch = torch.zeros(B, iters, R), torch.zeros(B, iters, S)
    sk.triton_backward(torch.rand(B, R, S), cost, la, lb, rh, ch, 0.1, mask)
    predicted = sk.launch_configs(B, R, S, torch.float32, 90, masked, iters=iters)
    assert [fn for fn, *_ in calls] == [x.fn for x in predicted]
    for (fn, args, kwargs), launch in zip(calls, predicted):
        real = aot.bind_values(fn, 90, args, kwargs)
        assert real == aot.bind(launch, 90)
        assert ("T" in real.divisible()) == (iters % 16 == 0) and real.signature["neg_inv_eps"] == "fp32"
        assert (real.signature["S"] == "constexpr") == (S == 1)


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


@pytest.mark.parametrize(("flags", "message"), [(["--arch", "80", "80"], "--arch lists a value twice: 80 80"),
                                               (["--dtype", "fp32", "bf16", "fp32"],
                                                "--dtype lists a value twice: fp32 bf16 fp32"),
                                               (["--workers", "0"], "--workers must be >= 1, got 0"),
                                               (["--workers", "-3"], "--workers must be >= 1, got -3"),
                                               (["--workers", "100000"], f"--workers must be at most the "
                                                                         f"{os.cpu_count()} cores here, got 100000")])
def test_cli_report_refuses_repeats_and_no_workers_before_compiling(flags: list[str], message: str,
                                                                    capsys: pytest.CaptureFixture,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a bug hunt: a repeated arch or dtype printed every row twice; --workers 0 or -3 compiled serially;
    --workers 100000 started a process (each importing torch) per distinct compile."""
    monkeypatch.setattr(report, "build", lambda *_: pytest.fail("compiled"))
    assert main(["--quiet", "kernels", "report", *flags]) == 1
    assert capsys.readouterr().err == f"pcmci: error: {message}\n"


def test_cli_report_refuses_an_out_holding_a_report_unless_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a bug hunt: ``--out`` holding an earlier report (minutes of compiles for ``--shapes all``) was
    replaced without asking."""
    (tmp_path / "kernels-report.md").write_text("earlier")
    monkeypatch.setattr(report, "build", lambda *_: pytest.fail("compiled"))
    assert main(["--quiet", "kernels", "report", "--out", str(tmp_path)]) == 1
    assert capsys.readouterr().err == (f"pcmci: error: {tmp_path} holds a report already (kernels-report.md); pass "
                                       "another --out, or --overwrite to replace it\n")
    assert (tmp_path / "kernels-report.md").read_text() == "earlier"
    monkeypatch.setattr(report, "build", lambda *_: {"ok": True})
    monkeypatch.setattr(report, "markdown", lambda _: "new\n")
    assert main(["--quiet", "kernels", "report", "--out", str(tmp_path), "--overwrite"]) == 0
    assert (tmp_path / "kernels-report.md").read_text() == "new\n"


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
    """Regime 1 is one forward and one backward launch, regime 2 one forward and two backward; the arguments and
    constants name every kernel parameter once, and the tile covers an on-chip problem."""
    onchip = sk.launch_configs(8, 58, 8, dtype, 89, iters=50)
    assert [x.fn for x in onchip] == [sk._fwd_onchip, sk._bwd_onchip]
    assert onchip[0].constexprs["BR"] >= 58 and onchip[0].constexprs["BS"] >= 8
    streamed = sk.launch_configs(8, 200, 2048, dtype, 89, masked=True, iters=50)
    assert [x.fn for x in streamed] == [sk._fwd_stream, sk._bwd_stream_adjoints, sk._bwd_stream_cost]
    signature = aot.bind(streamed[0], 89).signature
    assert signature["M"] == "*u8" and signature["C"] == "*" + triton_type(dtype)
    for launch in [*onchip, *streamed, *rel.launch_configs(8, 8, 958, 64, 64, dtype, 90)]:
        assert [*launch.args, *launch.constexprs] == launch.fn.arg_names
    with pytest.raises(ValueError, match="no Triton kernel"):
        sk.launch_configs(1, 4, 4, torch.int32, 89, iters=50)
    with pytest.raises(ValueError, match="head widths up to 128, got 160"):
        rel.launch_configs(1, 2, 16, 160, 64, dtype, 89)
