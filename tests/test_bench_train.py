"""``pcmci bench train``: real training steps of the tiny preset on CPU; FLOPs per training clip against a second,
independent count (``torch.utils.flop_counter``), clips/s against the step times; bad input gives one-line errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pcmci.cli import main
from pcmci.config import preset
from pcmci.engine import bench
from pcmci.profiling.flops import fvcore_count, torch_count

VISUAL = "clip.model.visual"


@pytest.fixture(scope="module")
def tiny_bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("bench")
    assert main(["--quiet", "bench", "train", "tiny", "optim.batch_size=2", "--steps", "3", "--warmup", "1",
                 "--variants", "eager", "--out", str(out)]) == 0
    return json.loads((out / "bench-train-tiny.json").read_text()), out


def test_flops_per_clip_equal_an_independent_count(tiny_bench: tuple[dict, Path]) -> None:
    """The bench's count (fvcore's forward by module, frozen CLIP image tower x1, the rest x3) against the same
    accounting of ``torch.utils.flop_counter``'s forward count (dispatcher-level, not the JIT trace fvcore
    reads). torch has no formula for the normalisations fvcore counts (layer norm: a few MACs per element), so
    the two agree once those are left out of fvcore's side; what remains is the same matrix products counted
    twice, equal to the MAC: the tolerance 1e-9 only absorbs float division."""
    report, _ = tiny_bench
    cfg = preset("tiny")
    model = bench._model(cfg, torch.device("cpu"), None).eval()
    t = cfg.model.timesformer
    clip = torch.rand(1, t.frames, 3, t.img_size, t.img_size)
    fv = fvcore_count(model, (clip,))
    by_torch = torch_count(model, (clip,))
    comparable = fv.torch_comparable_by_module

    def rule(counts: dict[str, int]) -> int:
        return counts.get(VISUAL, 0) + 3 * (counts[""] - counts.get(VISUAL, 0))

    macs = report["macs_per_clip"]
    assert macs["frozen_groups"] == ["clip_text", "clip_visual"] and macs["frozen_forward"] == fv.by_module.get(VISUAL, 0)
    assert macs["training"] == rule(fv.by_module) and report["flops_per_clip"] == 2 * macs["training"]
    assert rule(comparable) == pytest.approx(rule(by_torch), rel=1e-9)
    norms = macs["training"] - rule(comparable)
    assert 0 <= norms <= 0.05 * macs["training"]  # the normalisations: a few percent of a transformer's MACs


def test_clips_per_second_consistent_with_step_times(tiny_bench: tuple[dict, Path]) -> None:
    report, out = tiny_bench
    (row,) = report["variants"]
    assert row["variant"] == "eager" and row["steps"] == 3 and row["clips"] == 3 * 2
    assert row["clips_per_s"] > 0
    assert row["clips_per_s"] == pytest.approx(row["clips"] / (sum(row["step_ms"]) / 1e3), rel=1e-9)
    assert min(row["step_ms"]) <= row["step_ms_p50"] <= row["step_ms_p90"] <= max(row["step_ms"])
    assert 0 <= row["data_wait_share"] < 1 and row["peak_memory_bytes"] > 0
    assert row["mfu"] is None and report["peak_flops"] is None  # CPU without --peak-tflops
    assert row["achieved_tflops"] == pytest.approx(report["flops_per_clip"] * row["clips_per_s"] / 1e12, rel=1e-9)
    md = (out / "bench-train-tiny.md").read_text()
    assert "`pcmci bench train tiny optim.batch_size=2 --steps 3 --warmup 1 --input synthetic --variants eager`" in md
    assert f"| eager | {row['clips_per_s']:.2f} |" in md


def test_peak_table_and_mfu() -> None:
    cpu = torch.device("cpu")
    assert bench.peak_flops(cpu, "fp32", None)[0] is None
    assert bench.peak_flops(cpu, "bf16", 100.0) == (100e12, "--peak-tflops")


@pytest.mark.parametrize("argv,message", [
    (["--variants", "eager,fast"], "unknown variant 'fast'"),
    (["--dtype", "bf16"], "--dtype bf16 is pcmci train's bf16 autocast"),
    (["--variants", "compiled+triton"], "+triton variants need a CUDA device"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--peak-tflops", "-1"], "--peak-tflops must be a positive finite number, got -1.0"),
    (["--peak-tflops", "inf"], "--peak-tflops must be a positive finite number, got inf"),
    (["--variants", ""], "--variants has an empty name in ''; give e.g. eager,compiled"),
    (["--variants", "eager,"], "--variants has an empty name in 'eager,'"),
    (["--variants", "eager,compiled,eager"], "--variants lists a variant twice: eager,compiled,eager"),
])
def test_bad_input_is_one_line_error(argv: list[str], message: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "train", "tiny", "--out", str(tmp_path), *argv]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("pcmci: error: bench train: ") and message in err and "\n" not in err


def test_an_out_holding_the_report_is_refused_unless_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a bug hunt: a second ``pcmci bench train tiny`` into the default bench/results (another device, other
    flags) replaced the first one's report without asking."""
    (tmp_path / "bench-train-tiny.json").write_text("{}")
    started = []

    def stop(*_: object, **__: object) -> None:
        started.append(True)
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "bench_train", stop)
    assert main(["--quiet", "bench", "train", "tiny", "--out", str(tmp_path)]) == 1
    assert capsys.readouterr().err == (f"pcmci: error: {tmp_path} holds a report already (bench-train-tiny.json); "
                                       "pass another --out, or --overwrite to replace it\n")
    assert (tmp_path / "bench-train-tiny.json").read_text() == "{}" and not started
    assert main(["--quiet", "bench", "train", "tiny", "--out", str(tmp_path), "--overwrite"]) == 130
    assert started
