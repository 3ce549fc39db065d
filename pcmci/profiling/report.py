"""Write a profile: ``profile.json`` (the report dict), ``profile.md`` and PNG charts."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _si(x: float) -> str:
    """``674.45 G``, ``52.50 M``, ``8.19 K``."""
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= scale:
            return f"{x / scale:,.2f} {suffix}"
    return f"{x:,.0f}"


def _mp(x: float) -> str:
    """Parameters in millions."""
    return f"{x / 1e6:,.2f} M"


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def accounting(report: dict[str, Any]) -> list[str]:
    """What is counted, as bullet lines (also in the README)."""
    i, p = report["inputs"], report["params"]
    return [
        f"FLOPs: {report['flops']['convention']}.",
        f"One video = {i['views']} view(s) (test clips) x {i['frames']} frames at {i['image_size']}^2; every view "
        + (f"runs the CLIP image tower on each of its {i['frames']} frames and the TimeSformer once, then the stages "
           "and the head." if i.get("clip_frames_at_inference", True) else
           "runs the TimeSformer once, then the stages and the head. The CLIP image tower does not run at inference "
           "(no stage reads the frames; `model.ich.adjust=population`): it runs only while the dictionaries are "
           f"fitted, {_si(i['dictionaries'].get('flops_per_video', 0))} FLOPs per fitted video with the stages' "
           "dictionary features, not in `flops.total`.")
        + " `flops.total` is per video; `flops.per_view` per clip.",
        f"Label texts: {i['classes']} classes + {i['actions']} atomic-action texts (Breakfast sizes by default).",
        f"The CLIP text tower ({_mp(p['excluded'].get('clip_text', 0))} params) is excluded from `params.total` and "
        "has no forward FLOPs: label embeddings are computed once when the model is built and kept as the learnable "
        f"`T` (label_texts). `params.all` = {_mp(p['all'])} includes it.",
        "CLIP image tower: frozen, counted in params (and in FLOPs when it runs at inference). k-means confounder "
        "strata are buffers "
        f"({_si(p['buffers'])} values, not parameters), {i['dictionaries']['note']}.",
        "Weights are random where no checkpoint is cached: counts do not depend on the weights.",
    ]


def _latency_section(lat: dict[str, Any]) -> list[str]:
    """Markdown lines of the latency, throughput and memory table, and any compile fallback."""
    inf = lat["inference"]
    perf = [["inference forward", f"{inf['forward_ms']:.1f}", f"{inf['clips_per_s']:.2f}", "",
             f"{inf['peak_memory_bytes'] / 2**20:,.0f}"]]
    fallbacks = []
    for mode, t in lat.get("train_step", {}).items():
        if t.get("compile_failures"):  # the compiled step fell back (engine.compile.FallbackCompiled)
            mode = f"{mode}: {t['compile_stage']}"
            fallbacks.append(f"Compiled train step fell back to {t['compile_stage']}: "
                             + "; ".join(t["compile_failures"]))
        perf.append([f"train step ({mode})", f"{t['step_ms']:.1f}", f"{t['clips_per_s']:.2f}",
                     f"{t['first_call_ms']:.0f}", f"{t['peak_memory_bytes'] / 2**20:,.0f}"])
    return ["", "## Latency, throughput, memory", "", f"{lat['device']}, {lat['method']}, bf16 autocast: "
            f"{lat['amp_bf16']}. Peak memory: " + ("peak allocated on the GPU." if "cuda" in lat["method"].lower()
                                                    else "process peak RSS (high-water mark of the run).")
            + ("" if "compiled" in lat.get("train_step", {}) else " Compiled train step: not run (pass --compile)."),
            "", _table(["run", "median ms", "clips/s", "first call ms", "peak MiB"], perf), *fallbacks]


def to_markdown(report: dict[str, Any]) -> str:
    """The profile as Markdown: accounting, budget, modules, stages, operators, cross-checks, latency, comparison."""
    flops, params, lat, check = report["flops"], report["params"], report["latency"], report["cross_check"]
    total = max(flops["total"], 1)
    out = [f"# Profile: {report['name']}", "", "## Accounting", ""] + [f"- {line}" for line in accounting(report)]
    b = report["budget"]
    out += ["", f"## Budget: the paper's 211M params / 650 GFLOPs (tolerance {_pct(b['tolerance'])})", "",
            _table(["quantity", "measured", "paper", "diff", "within"], [
                ["params", _mp(b["params"]["measured"]), _mp(b["params"]["paper"]), _pct(b["params"]["rel_diff"]),
                 "yes" if b["params"]["ok"] else "**no**"],
                ["FLOPs / video", _si(b["flops"]["measured"]), _si(b["flops"]["paper"]), _pct(b["flops"]["rel_diff"]),
                 "yes" if b["flops"]["ok"] else "**no**"]])]
    rows = [[name, _mp(m["params"]), _mp(m["trainable"]), "yes" if m["counted"] else "no (precomputed)",
             _si(flops["by_module"].get(name, 0)), _pct(flops["by_module"].get(name, 0) / total)]
            for name, m in params["by_module"].items()]
    rows.append(["other (frame resize/normalise, glue)", "", "", "", _si(flops["by_module"]["other"]),
                 _pct(flops["by_module"]["other"] / total)])
    rows.append(["**total (counted)**", _mp(params["total"]), _mp(params["trainable"]), "", _si(flops["total"]),
                 "100%"])
    out += ["", "## Parameters and FLOPs per module", "", f"FLOPs per video "
            f"({flops['views']} view(s); {_si(flops['per_view'])} per view); "
            f"frozen (counted): {_mp(params['frozen'])}.",
            "", _table(["module", "params", "trainable", "in total", "FLOPs", "share"], rows)]
    inf = lat["inference"]
    stage_rows = [[s, _si(f), _pct(f / total), f"{inf['stages_ms'].get(s, 0):.2f}"]
                  for s, f in flops["by_stage"].items()]
    out += ["", "## Stages (forward order)", "", f"Latency: median of {lat['repeats']} after {lat['warmup']} warm-up, "
            f"batch {lat['batch']} clip(s), {lat['device']}, {lat['method']}.", "",
            _table(["stage", "FLOPs / video", "share", "ms / forward"], stage_rows)]
    out += ["", "## FLOPs by operator", "",
            _table(["op", "FLOPs", "share"], [[op, _si(v), _pct(v / total)] for op, v in flops["by_operator"].items()])]
    skipped = flops["skipped_matmul"]
    out += ["", "## Ops fvcore skipped", "", "Estimated at one FLOP per output element (an upper bound; views and "
            "copies cost none). Matrix-product / attention ops among them: "
            + (", ".join(skipped) if skipped else "none") + ".", "", _table(["op", "calls", "est. FLOPs", "share"],
                              [[s["op"], s["calls"], _si(s["est_flops"]), _pct(s["share"])] for s in flops["skipped"]])]
    out += ["", f"## Cross-checks (tolerance {_pct(check['tolerance'])}): {'pass' if check['ok'] else '**FAIL**'}", "",
            "FlopCounterMode runs eagerly and would also count ops whose results are never used (the JIT trace "
            "fvcore reads drops them), so a stage row that disagrees points at dead compute.", "",
            _table(["check", "fvcore", "reference", "diff", "ok"],
                   [[r["what"], _si(r["fvcore"]), _si(r["reference"]), _pct(r["rel_diff"]),
                     "yes" if r["ok"] else "**no**"] for r in check["rows"]])]
    out += _latency_section(lat)
    out += ["", "## Comparison with published figures", "", "`published`: figures printed in the PCMCI paper; "
            "`measured`: this run. Ratios are relative to this model.", "",
            _table(["model", "source", "FLOPs", "params", "FLOPs ratio", "params ratio"],
                   [[r["model"], r["source"], _si(r["flops"]), _mp(r["params"]), f"{r['flops_ratio']:.2f}x",
                     f"{r['params_ratio']:.2f}x"] for r in report["comparison"]])]
    return "\n".join(out) + "\n"


def write_charts(report: dict[str, Any], out: Path) -> list[Path]:
    """``modules.png`` (params and FLOPs per module), ``stages.png`` (FLOPs and latency per stage),
    ``comparison.png`` (published vs measured, log-log)."""
    paths = [out / "modules.png", out / "stages.png", out / "comparison.png"]
    mods = report["params"]["by_module"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.barh(list(mods), [m["params"] / 1e6 for m in mods.values()],
           color=["tab:blue" if m["counted"] else "lightgray" for m in mods.values()])
    a.set_xlabel("params (M); grey = not in total")
    b.barh(list(mods), [report["flops"]["by_module"].get(n, 0) / 1e9 for n in mods], color="tab:orange")
    b.set_xlabel("GFLOPs per video (1 FLOP = 1 MAC)")
    for ax in (a, b):
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(paths[0], dpi=120)
    stages = report["flops"]["by_stage"]
    ms = report["latency"]["inference"]["stages_ms"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.5))
    a.barh(list(stages), [v / 1e9 for v in stages.values()], color="tab:orange")
    a.set_xlabel("GFLOPs per video")
    b.barh(list(stages), [ms.get(s, 0) for s in stages], color="tab:green")
    b.set_xlabel(f"ms per forward ({report['latency']['device']}, batch {report['latency']['batch']})")
    for ax in (a, b):
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(paths[1], dpi=120)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for row in report["comparison"]:
        measured = row["source"] == "measured"
        ax.scatter(row["params"] / 1e6, row["flops"] / 1e9, marker="*" if measured else "o", s=160 if measured else 60,
                   color="tab:red" if measured else "tab:blue")
        ax.annotate(f"{row['model']} ({row['source']})", (row["params"] / 1e6, row["flops"] / 1e9), fontsize=8,
                    xytext=(5, 5), textcoords="offset points")
    ax.set(xscale="log", yscale="log", xlabel="params (M)", ylabel="GFLOPs per video")
    fig.tight_layout()
    fig.savefig(paths[2], dpi=120)
    plt.close("all")
    return paths


def write_report(report: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``profile.json``, ``profile.md`` and the charts under ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "profile.json", "markdown": out / "profile.md"}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    paths["markdown"].write_text(to_markdown(report))
    for path in write_charts(report, out):
        paths[path.stem] = path
    return paths
