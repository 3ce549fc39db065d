"""Command line: ``pcmci demo|train|ablate|diagnose|export|eval|predict|synth|profile|data|weights|convert|kernels|bench|vlm``.

Each command is a parser and, beside it, its handler (``set_defaults(func=...)``); a handler returns the exit
code (None = 0). A ``PcmciError`` (bad config, dataset, video, weights or checkpoint) or an ``OSError`` (a file
that cannot be read or written) prints one line ``pcmci: error: <cause>`` and exits 1; any other exception is a
bug and is named as one, with its type; ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import get_args

from .config import DatasetName
from .errors import ConfigError, PcmciError

# ValueError stays expected until the layers outside pcmci.errors (the model and the train / evaluate / predict
# entry points) raise the project's types for every input they refuse.
EXPECTED_ERRORS = (PcmciError, OSError, ValueError)


def out_folder(value: str) -> str:
    """An ``--out`` folder checked before any work: the first part of it that exists must be a writable folder
    (a file there, or a read-only folder, would fail only when the results are written)."""
    if not value.strip():  # Path("") is the current folder: results would land there, or the default be used
        raise argparse.ArgumentTypeError("an empty path")
    path = Path(value)
    existing = next((p for p in (path, *path.parents) if p.exists()), Path.cwd())
    if not existing.is_dir():
        raise argparse.ArgumentTypeError(f"{value}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{value}: {existing} is not writable")
    return value


def input_file(value: str) -> str:
    """A file the command reads, checked before any model loads: not empty, present, not a folder."""
    if not value.strip():
        raise argparse.ArgumentTypeError("an empty path")
    path = Path(value)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{value}: a folder, expected a file")
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{value}: no such file")
    return value


def checkpoint_file(value: str) -> str:
    """A checkpoint path: an empty one is refused here (it would be read as the current folder); a missing, folder
    or unreadable one is named by the checkpoint loader."""
    if not value.strip():
        raise argparse.ArgumentTypeError("an empty path")
    return value


def refuse_existing_report(out: str | Path, names: Sequence[str]) -> None:
    """``FileExistsError`` before any work when ``out`` holds one of the report files ``names`` (an earlier run's
    results, which this one would replace); callers skip the check under ``--overwrite``."""
    held = [name for name in names if (Path(out) / name).exists()]
    if held:
        raise FileExistsError(f"{out} holds a report already ({', '.join(held)}); pass another --out, or --overwrite "
                              "to replace it")


def _add_config(p: argparse.ArgumentParser, example: str = "optim.lr=1e-4 model.stages=[ich,ivc]") -> None:
    """The positional ``CONFIG [key=value ...]`` every config-driven command takes."""
    p.add_argument("config", help="preset name (tiny, paper, breakfast, coin, charades) or YAML file")
    p.add_argument("overrides", nargs="*", help=f"dotted overrides, e.g. {example}")


def _add_scene(p: argparse.ArgumentParser) -> None:
    """The synthetic scene's knobs (``pcmci.data.synthetic.Scene``); defaults are the demo's scene."""
    from .data.synthetic import DEMO_SCENE, Context

    p.add_argument("--camera", type=float, default=DEMO_SCENE.camera,
                   help="hand-held camera in [0, 1]: background scroll, zoom and shake (0 = a still room)")
    p.add_argument("--lighting", type=float, default=DEMO_SCENE.lighting,
                   help="light drift and flicker in [0, 1]")
    p.add_argument("--distractor-motion", type=float, default=DEMO_SCENE.distractor_motion,
                   help="the distractor's own speed in px/frame at 64 px, [0, 2]")
    p.add_argument("--still-pairs", type=int, default=DEMO_SCENE.still_pairs,
                   help="class pairs that share their motion and differ only by a still tool (0-2)")
    p.add_argument("--props", action="store_true", default=DEMO_SCENE.props,
                   help="a third confounder: each activity's co-occurring prop standing in the room (the apron)")
    p.add_argument("--order-pairs", action=argparse.BooleanOptionalAction, default=DEMO_SCENE.order_pairs,
                   help="add the two classes told apart from another only by the order of their actions (7 classes "
                        "with one still pair instead of 5; the tiny model does not learn that cause in the demo's "
                        "budget, so every variant is near chance OOD)")
    p.add_argument("--context", choices=get_args(Context), default=DEMO_SCENE.context,
                   help="independent: each confounder drawn on its own; joint: one context per clip shared by all "
                        "confounders (the training split then holds off-class contexts, see 'support')")


def scene_from(args: argparse.Namespace):  # -> pcmci.data.synthetic.Scene
    from .data.synthetic import Scene

    return Scene(camera=args.camera, lighting=args.lighting, distractor_motion=args.distractor_motion,
                 still_pairs=args.still_pairs, props=args.props, context=args.context, order_pairs=args.order_pairs)


def _demo(args: argparse.Namespace) -> None:
    from .experiments.demo import run_demo

    report = run_demo(args.out, seeds=args.seeds, epochs=args.epochs, confound=args.confound, n_train=args.train,
                      n_test=args.test, scene=scene_from(args), device=args.device, progress=not args.quiet)
    print((Path(args.out) / "report.md").read_text())
    print(f"report: {args.out}/report.md, {args.out}/report.json (full OOD acc {report['full']['ood']['acc']:.4f}, "
          f"baseline OOD acc {report['baseline']['ood']['acc']:.4f})")


def _add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=out_folder, default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--seeds", type=int, default=1, help="number of seeds; >1 reports mean ± std")
    p.add_argument("--epochs", type=int, help="training epochs per model (default: the tiny preset's, 30)")
    p.add_argument("--confound", type=float, default=0.9, help="confounder/label correlation in train and ID test")
    p.add_argument("--train", type=int, default=720, help="synthetic training videos")
    p.add_argument("--test", type=int, default=240, help="synthetic test videos: half test_id, half test_ood")
    p.add_argument("--device", default="auto")
    _add_scene(p)
    p.set_defaults(func=_demo)


def _launch_torchrun(args: argparse.Namespace) -> int:
    """Re-run this ``pcmci train`` under ``torchrun --standalone --nproc_per_node N``; its exit code."""
    import subprocess

    flags = [*(["--debug"] if args.debug else []), *(["--quiet"] if args.quiet else [])]
    mode = [*(["--resume"] if args.resume else []), *(["--overwrite"] if args.overwrite else [])]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
               "-m", "pcmci", *flags, "train", args.config, *args.overrides, *mode]
    return subprocess.run(command, check=False).returncode


def _train(args: argparse.Namespace) -> int | None:
    from .config import load_config
    from .engine.ranks import is_main_process, launched_by_torchrun
    from .engine.train import refuse_existing_run, train

    cfg = load_config(args.config, args.overrides)
    cfg.run.progress = cfg.run.progress and not args.quiet
    refuse_existing_run(cfg, args.resume, args.overwrite)
    if args.nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {args.nproc}")
    if args.nproc > 1 and not launched_by_torchrun():
        return _launch_torchrun(args)
    checkpoint = train(cfg, resume=args.resume)
    if is_main_process():
        print(f"checkpoint: {checkpoint}")
    return None


def _add_train(p: argparse.ArgumentParser) -> None:
    _add_config(p)
    p.add_argument("--resume", action="store_true", help="continue from run.out_dir/checkpoint.pt")
    p.add_argument("--overwrite", action="store_true", help="start over in a run.out_dir that holds a checkpoint")
    p.add_argument("--nproc", type=int, default=1,
                   help="processes (one per GPU; gloo on CPU): relaunches itself under torchrun (DDP)")
    p.set_defaults(func=_train)


def _ablate(args: argparse.Namespace) -> None:
    from .experiments.ablate import check_inputs, run_ablation, variant_names

    variant_names(args.seeds, args.jobs, args.variants)
    check_inputs(args.config, args.overrides, args.device)
    run_ablation(args.config, args.overrides, args.seeds, args.out, args.variants, args.device, not args.quiet,
                 args.jobs, args.overwrite)
    print((Path(args.out) / "ablation.md").read_text())
    print(f"report: {args.out}/ablation.md, {args.out}/ablation.json, {args.out}/ablation_acc.png")


def _add_ablate(p: argparse.ArgumentParser) -> None:
    _add_config(p, "data.manifest=... (shared by every variant)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per variant (default: 3)")
    p.add_argument("--variants", nargs="+",
                   help="subset of: baseline reweight ich ici ivc ich+ici ich+ivc ici+ivc full reversed (default), "
                        "ivc-noreweight ivc-mediator-only ivc-static full-static (named switches)")
    p.add_argument("--out", type=out_folder, default="runs/ablate", help="output folder (default: runs/ablate)")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at a time, each in its own process (default: 1)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace runs of another configuration (config, overrides) found in --out")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_ablate)


def _diagnose(args: argparse.Namespace) -> None:
    from .experiments.diagnose import diagnose
    from .experiments.hallucination import hallucination_report

    if args.checkpoint is None and args.hallucination is None:
        raise ConfigError("pcmci diagnose needs a CHECKPOINT, or --hallucination WEIGHTS for a VLM alone")
    if args.split is not None and not args.split.strip():  # '' would silently probe the default split
        raise ConfigError("--split is empty; give a split name, or leave --split out for the config's last eval split")
    if args.limit < 1 or args.hallucination_clips < 1:
        raise ConfigError(f"--limit and --hallucination-clips must be >= 1, got {args.limit} and "
                          f"{args.hallucination_clips}")
    if args.hallucination is not None:
        out = Path(args.out or "runs/hallucination")
        out = out / "hallucination" if args.checkpoint is not None else out
        hallucination_report(args.hallucination, out, clips=args.hallucination_clips)
        print((out / "hallucination.md").read_text())
        print(f"report: {out}/hallucination.md, {out}/hallucination.json")
    if args.checkpoint is None:
        return
    report = diagnose(args.checkpoint, args.split, args.video, args.out, args.limit, args.device, not args.quiet)
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / "diagnose"
    print((out / "diagnose.md").read_text())
    print(f"report: {out}/diagnose.md, {out}/diagnose.json ({report['videos']} videos)")


def _add_diagnose(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", nargs="?", type=checkpoint_file,
                   help="a training checkpoint (optional with --hallucination)")
    p.add_argument("--hallucination", metavar="WEIGHTS",
                   help="also probe a VLM's co-occurrence hallucination: masking test + ICH's proxy (weights file or "
                        "tag, e.g. pcmci-synth)")
    p.add_argument("--hallucination-clips", type=int, default=70, help="held-out clips per probe case (default: 70)")
    p.add_argument("--split", help="split to probe (default: the config's last eval split)")
    p.add_argument("--video", type=input_file, help="also draw the ICH / ICI / IVC maps for this video")
    p.add_argument("--limit", type=int, default=200, help="at most this many videos (default: 200)")
    p.add_argument("--out", type=out_folder, help="output folder (default: CHECKPOINT_DIR/diagnose)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_diagnose)


def _export(args: argparse.Namespace) -> None:
    from .engine.export import export_checkpoint

    print(f"exported: {', '.join(str(p) for p in export_checkpoint(args.checkpoint, args.out, args.overwrite))}")


def _add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", type=checkpoint_file)
    p.add_argument("--out", type=out_folder, required=True,
                   help="output folder (PCMCI.from_pretrained(DIR) loads it)")
    p.add_argument("--overwrite", action="store_true", help="replace the export in an --out that holds one")
    p.set_defaults(func=_export)


def _eval(args: argparse.Namespace) -> None:
    from .engine.evaluate import evaluate, per_class_markdown
    from .engine.ranks import is_main_process

    results = evaluate(args.checkpoint, args.splits, args.out, args.manifest, args.device, progress=not args.quiet)
    if not is_main_process():  # under torchrun every rank holds the gathered results; one prints them
        return
    if args.json:
        print(json.dumps({s: {k: m[k] for k in ("videos", "acc", "top5", "map")} for s, m in results.items()}))
    else:
        for split, metrics in results.items():
            print(per_class_markdown(metrics, split))


def _add_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", type=checkpoint_file)
    p.add_argument("--splits", nargs="+", help="split names (default: the config's data.eval_splits)")
    p.add_argument("--manifest", type=input_file,
                   help="evaluate on another manifest (rows matched to the checkpoint's classes by name)")
    p.add_argument("--out", type=out_folder, help="output folder (default: the checkpoint's folder)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    p.set_defaults(func=_eval)


def _predict(args: argparse.Namespace) -> None:
    from .engine.predict import predict_video

    top = predict_video(args.checkpoint, args.video, args.topk, args.device, args.labels)
    if args.json:
        print(json.dumps({"checkpoint": args.checkpoint, "video": args.video,
                          "top": [{"label": label, "prob": prob} for label, prob in top]}))
    else:
        print("\n".join(f"{prob:.4f}  {label}" for label, prob in top))


def _add_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", type=checkpoint_file)
    p.add_argument("video", type=input_file)
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--labels", type=input_file,
                   help="labels.json the caller expects; stop naming any difference from the checkpoint's")
    p.add_argument("--json", action="store_true", help="print the predictions as one JSON object")
    p.set_defaults(func=_predict)


def _synth(args: argparse.Namespace) -> None:
    from .data.synthetic import synthesize

    path = synthesize(args.out, seed=args.seed, n_train=args.train, n_test=args.test, confound=args.confound,
                      codec=args.codec, size=args.size, progress=not args.quiet, scene=scene_from(args),
                      overwrite=args.overwrite, jobs=args.jobs)
    print(f"manifest: {path}")
    shares = json.loads((path.parent / "meta.json").read_text())["support"]
    print("videos with no confounder of their own class (positivity): "
          + ", ".join(f"{split} {share:.1%}" for split, share in shares.items()))


def _add_synth(p: argparse.ArgumentParser) -> None:
    from .data.synthetic import CODECS

    p.add_argument("--out", type=out_folder, default="data/synthetic")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--confound", type=float, default=0.9)
    p.add_argument("--codec", choices=list(CODECS), default="vp9")
    p.add_argument("--train", type=int, default=720, help="training videos")
    p.add_argument("--test", type=int, default=240, help="test videos in all: half test_id, half test_ood")
    p.add_argument("--size", type=int, default=64, help="frame size in pixels")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the set in an --out that holds one (its listed videos are removed first)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="processes rendering and encoding at once (default: all cores; the set is the same for any)")
    _add_scene(p)
    p.set_defaults(func=_synth)


def _data_inspect(args: argparse.Namespace) -> None:
    from .data.datasets import tree_config
    from .data.inspect import inspect_into, render

    data = tree_config(args.dataset, args.root, args.video_template, args.annotations)
    report = inspect_into(data, args.split, Path(args.out) if args.out else None, args.grid, progress=not args.quiet)
    print(json.dumps(report) if args.json else render(report))


def _data_prepare(args: argparse.Namespace) -> int:
    from .data import prepare
    from .data.datasets import tree_config

    data = tree_config(args.dataset, args.root, args.video_template, args.annotations)
    settings = prepare.PrepareSettings.for_jobs(args.jobs, short_side=args.short_side, gop=args.gop,
                                                codec=args.codec, fps=args.fps)
    report = prepare.prepare_dataset(data, args.out, settings, args.jobs, progress=not args.quiet)
    print(json.dumps(report) if args.json else prepare.render(report))
    return 1 if report["failed"] else 0


def _add_data(p: argparse.ArgumentParser) -> None:
    from .data.prepare import CODECS as PREPARE_CODECS

    tools = p.add_subparsers(dest="tool", required=True)
    q = tools.add_parser("inspect", help="counts per split/class, missing and undecodable files, stats, sample grid")
    r = tools.add_parser("prepare", help="re-encode every video for random access (keyframe every --gop frames, "
                                         "constant rate, short side scaled) + manifest.csv and a report")
    for t in (q, r):
        t.add_argument("--dataset", choices=get_args(DatasetName), required=True)
        t.add_argument("--root", required=True,
                       help="dataset folder (manifest: the CSV, or the folder holding manifest.csv)")
        t.add_argument("--video-template", default="", help="video path template under ROOT (default: the dataset's)")
        t.add_argument("--annotations", default="", help="COIN.json / the Charades CSV folder (default: under ROOT)")
        t.add_argument("--json", action="store_true", help="print the report as one JSON object")
    q.add_argument("--split", help="only this split (default: all)")
    q.add_argument("--out", type=out_folder,
                   help="write report.json and the sample grid (grid.png) into this folder")
    q.add_argument("--grid", help="sample-frame grid PNG (default: OUT/grid.png with --out, else none; '' for none)")
    q.set_defaults(func=_data_inspect)
    r.add_argument("--out", type=out_folder, required=True,
                   help="output folder: the videos, manifest.csv, labels.json, prepare.json")
    r.add_argument("--short-side", type=int, default=256, help="scale the shorter side down to this (default: 256)")
    r.add_argument("--gop", type=int, default=8, help="a keyframe at least every GOP frames (default: 8)")
    r.add_argument("--codec", choices=list(PREPARE_CODECS), default="h264", help="(default: h264, NVDEC and PyAV)")
    r.add_argument("--fps", type=float, help="constant output rate (default: each source's average rate)")
    r.add_argument("--jobs", type=int, default=1, help="videos encoded at a time, one process each (default: 1)")
    r.set_defaults(func=_data_prepare)


def _profile(args: argparse.Namespace) -> None:
    from .config import ConfigError, load_config
    from .profiling import ProfileOptions, run_profile

    source, overrides = args.config, list(args.overrides)
    if source is not None and "=" in source and not Path(source).is_file():
        source, overrides = None, [source, *overrides]  # `[--preset NAME] key=value`: the override read as CONFIG
    if args.preset is not None:
        if source is not None:
            raise ConfigError("give either --preset NAME or CONFIG, not both")
        source = args.preset
    source = "tiny" if source is None else source
    if not args.overwrite:
        refuse_existing_report(args.out, ("profile.json", "profile.md"))
    options = ProfileOptions(device=args.device, batch=args.batch, views=args.views, classes=args.classes,
                             actions=args.actions, warmup=args.warmup, repeats=args.repeats, train=args.train,
                             compile=args.compile)
    paths = run_profile(load_config(source, overrides), options, args.out, name=Path(str(source)).stem)
    print(paths["markdown"].read_text())
    print("report: " + ", ".join(str(p) for p in paths.values()))


def _add_profile(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="preset name or YAML file (default: tiny; or use --preset)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.stages=[ich,ivc]")
    p.add_argument("--preset", help="preset name (tiny, paper, breakfast, coin, charades)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--batch", type=int, default=1, help="clips per timed forward / train step")
    p.add_argument("--views", type=int, help="test views per video counted in FLOPs (default: data.test_views)")
    p.add_argument("--classes", type=int, default=10, help="class texts (default: Breakfast's 10 activities)")
    p.add_argument("--actions", type=int, default=48, help="atomic-action texts (default: Breakfast's 48)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions (medians are reported)")
    p.add_argument("--no-train", dest="train", action="store_false", help="skip the training-step timing")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="also time a torch.compile'd training step (default: on CUDA only)")
    p.add_argument("--out", type=out_folder, default="runs/profile", help="output folder (default: runs/profile)")
    p.add_argument("--overwrite", action="store_true", help="replace the profile in an --out that holds one")
    p.set_defaults(func=_profile)


def _weights_check(args: argparse.Namespace) -> None:
    from .config import load_config
    from .errors import WeightsError
    from .model.weights import check_weights, render_check, require_weights

    cfg = load_config(args.config, args.overrides)
    rows = check_weights(cfg.model)
    print(render_check(rows))
    failed = [f"{r['tower']} ({r['shape_check']})" for r in rows if r["shape_check"].startswith("FAILED")]
    if failed:
        raise WeightsError(f"weights that do not fit: {'; '.join(failed)}")
    require_weights(cfg.model)


def _add_weights(p: argparse.ArgumentParser) -> None:
    tools = p.add_subparsers(dest="tool", required=True)
    q = tools.add_parser("check", help="resolve every weight file of a config: source, shape check, parameters")
    _add_config(q, "model.timesformer.pretrained=DIR")
    q.set_defaults(func=_weights_check)


def _convert(args: argparse.Namespace) -> None:
    from .model.weights import convert_timesformer

    out, fields = convert_timesformer(args.src, args.out, args.overwrite)
    shape = " ".join(f"model.timesformer.{k}={v:g}" for k, v in fields.items())
    print(f"wrote {out}; train with model.timesformer.pretrained={out} {shape}")


def _add_convert(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=["timesformer"])
    p.add_argument("src", help="HF TimeSformer model directory (config.json + model.safetensors/pytorch_model.bin)")
    p.add_argument("--out", required=True, help="file to write (for model.timesformer.pretrained)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (never the source)")
    p.set_defaults(func=_convert)


def _add_kernels(p: argparse.ArgumentParser) -> None:
    from .kernels.report import add_arguments, run

    tools = p.add_subparsers(dest="tool", required=True)
    q = tools.add_parser("report", help="registers, spills, shared memory, occupancy, roofline per launch")
    add_arguments(q, folder=out_folder)
    q.set_defaults(func=run)


def _bench_command(args: argparse.Namespace) -> str:
    """The command line that regenerates this benchmark, written into its report."""
    flags = {"--steps": args.steps, "--warmup": args.warmup, "--input": args.input, "--variants": args.variants,
             "--dtype": args.dtype, "--peak-tflops": args.peak_tflops}
    return " ".join(["pcmci bench train", args.config, *args.overrides,
                     *(f"{k} {v}" for k, v in flags.items() if v is not None), *(["--json"] if args.json else [])])


def _bench_train(args: argparse.Namespace) -> None:
    from .config import load_config
    from .engine.bench import BenchOptions, bench_train, markdown, report_paths, write

    # only an absent --variants means the default set: an empty one is refused, not read as "default"
    variants = args.variants.split(",") if args.variants is not None else []
    options = BenchOptions(steps=args.steps, warmup=args.warmup, input=args.input, dtype=args.dtype,
                           variants=variants, peak_tflops=args.peak_tflops)
    name = Path(str(args.config)).stem
    if not args.overwrite:
        refuse_existing_report(args.out, [p.name for p in report_paths(Path(args.out), name).values()])
    report = bench_train(load_config(args.config, args.overrides), options, name=name)
    command = _bench_command(args)
    paths = write(report, Path(args.out), command)
    print(json.dumps(report) if args.json else markdown(report, command))
    print(f"report: {paths['markdown']}, {paths['json']}", file=sys.stderr)


def _add_bench(p: argparse.ArgumentParser) -> None:
    from .engine.bench import DTYPES, INPUTS

    tools = p.add_subparsers(dest="tool", required=True)
    q = tools.add_parser("train", help="real training steps per variant (eager, compiled, +triton): clips/s, MFU")
    _add_config(q, "optim.batch_size=16")
    q.add_argument("--steps", type=int, default=20, help="timed steps per variant (default: 20)")
    q.add_argument("--warmup", type=int, default=3, help="untimed steps first, compilation included (default: 3)")
    q.add_argument("--input", choices=list(INPUTS), default="synthetic",
                   help="device-resident random frames, or the config's data loader (default: synthetic)")
    q.add_argument("--variants", help="comma-separated eager, compiled, eager+triton, compiled+triton "
                                      "(default: eager,compiled,compiled+triton on CUDA, eager,compiled on CPU)")
    q.add_argument("--dtype", choices=list(DTYPES), help="bf16 autocast (CUDA) or fp32 (default: bf16 on CUDA)")
    q.add_argument("--peak-tflops", type=float, help="dense peak of this device in TFLOP/s, for MFU")
    q.add_argument("--json", action="store_true", help="print the report as JSON instead of Markdown")
    q.add_argument("--out", type=out_folder, default="bench/results",
                   help="folder for bench-train-NAME.md/.json (default: bench/results)")
    q.add_argument("--overwrite", action="store_true", help="replace the bench-train-NAME report in an --out that "
                                                            "holds one")
    q.set_defaults(func=_bench_train)


def _vlm_pretrain(args: argparse.Namespace) -> None:
    from .engine.vlm import VLMSettings, pretrain_vlm

    settings = VLMSettings(seed=args.seed, clips=args.clips, cooccur=args.cooccur, epochs=args.epochs)
    record = pretrain_vlm(args.out, settings, progress=not args.quiet, overwrite=args.overwrite)
    print(f"weights: {args.out}/{record['weights']} (sha256 {record['sha256']}); zero-shot accuracy "
          f"{record['zero_shot_accuracy']['cooccurring']:.3f} with the co-occurrence, "
          f"{record['zero_shot_accuracy']['broken']:.3f} without; record: {args.out}/vlm.json")


def _add_vlm(p: argparse.ArgumentParser) -> None:
    from .engine.vlm import VLMSettings

    tools = p.add_subparsers(dest="tool", required=True)
    q = tools.add_parser("pretrain", help="train the tiny CLIP on frame-caption pairs with a planted co-occurrence "
                                          "-> safetensors + vlm.json (model.clip.pretrained loads it)")
    q.add_argument("--out", type=out_folder, default="runs/vlm", help="output folder (default: runs/vlm)")
    q.add_argument("--seed", type=int, default=VLMSettings.seed)
    q.add_argument("--clips", type=int, default=VLMSettings.clips, help="synthetic clips (4 frames each)")
    q.add_argument("--cooccur", type=float, default=VLMSettings.cooccur,
                   help="P(the activity's own prop is in view and named in the caption)")
    q.add_argument("--epochs", type=int, default=VLMSettings.epochs)
    q.add_argument("--overwrite", action="store_true", help="replace the weights in an --out that holds them")
    q.set_defaults(func=_vlm_pretrain)


# name -> (one-line help, the function that adds its arguments and handler)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "demo": ("synthesize data, train full model + baseline, evaluate ID/OOD, write a report", _add_demo),
    "train": ("train a model: pcmci train CONFIG [key=value ...]", _add_train),
    "ablate": ("train + evaluate the paper's stage variants over seeds: table, JSON, bar chart", _add_ablate),
    "diagnose": ("static-bias probes, counterfactual flip rate, stage heatmaps of a checkpoint", _add_diagnose),
    "export": ("checkpoint -> DIR/model.safetensors + config.json + labels.json", _add_export),
    "eval": ("evaluate a checkpoint: accuracy, mAP, per-class table, confusion matrix", _add_eval),
    "predict": ("top-k labels for one video", _add_predict),
    "synth": ("write the synthetic confounded activity dataset (videos + manifest)", _add_synth),
    "profile": ("params, FLOPs (fvcore, cross-checked), latency, memory -> profile.md/.json", _add_profile),
    "data": ("dataset tools: pcmci data inspect|prepare --dataset NAME --root DIR", _add_data),
    "weights": ("pretrained weights: pcmci weights check CONFIG [key=value ...]", _add_weights),
    "convert": ("foreign weights -> a pcmci file: pcmci convert timesformer SRC --out FILE", _add_convert),
    "kernels": ("kernel tools: pcmci kernels report (AOT compile for sm_80/89/90, no GPU)", _add_kernels),
    "bench": ("benchmarks: pcmci bench train CONFIG (clips/s, step times, memory, MFU)", _add_bench),
    "vlm": ("the project's own VLM: pcmci vlm pretrain (planted co-occurrence)", _add_vlm),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line. ``only``: build that command's arguments alone; the others keep their name and help, and
    their modules (torch, triton, fvcore, open_clip) are not imported, so ``pcmci --help`` and ``pcmci synth``
    start in a fraction of a second (``main`` does this). None builds every command."""
    parser = argparse.ArgumentParser(prog="pcmci", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (text, add) in COMMANDS.items():
        command = sub.add_parser(name, help=text)
        if only is None or name == only:
            add(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(next((a for a in argv if not a.startswith("-")), ""))
    args, extra = parser.parse_known_args(argv)
    # `pcmci bench train tiny --steps 3 optim.batch_size=2`: argparse leaves key=value after an option unparsed
    if extra and hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from .engine.ranks import is_main_process

    logging.basicConfig(level=logging.INFO if is_main_process() and not args.quiet else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return args.func(args) or 0
    except EXPECTED_ERRORS as exc:
        if args.debug:
            raise
        print(f"pcmci: error: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("pcmci: interrupted", file=sys.stderr)  # no traceback: the user asked for it
        return 130
    except Exception as exc:
        if args.debug:
            raise
        cause = (str(exc).strip().splitlines() or [""])[0]
        print(f"pcmci: error: {type(exc).__name__}: {cause} (run with --debug for the traceback)",
              file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
