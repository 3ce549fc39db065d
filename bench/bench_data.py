"""Video loading benchmarks (pytest-benchmark; ``extra_info`` holds clips/s and frames/s), and, run as a script,
random 8-frame sampling on long-GOP originals vs the files ``pcmci data prepare`` makes of them (one JSON).

A 3-minute 320x240 25 fps video (Breakfast-like QVGA; keyframe every 250 frames, x264's default) is
generated once per session as H.264 and VP9. CPU: PyAV sparse seeking vs a naive full decode for one
8-frame clip; DALI-CPU vs PyAV on VP9. GPU (when present): DALI-NVDEC vs PyAV on H.264, and the DALI
loader's clips/s against the tiny model's training step.

    .venv/bin/python -m pytest bench/bench_data.py --benchmark-json bench/results/cpu-DATE-data.json
    .venv/bin/python bench/bench_data.py --device "2-core CPU" --out bench/results/cpu-DATE-data-prepare.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")  # the GPU image has no PyAV unless it travels as a wheel

from pcmci.data.decode import decode_frames, probe
from pcmci.data.sampling import segment_indices
from pcmci.data.synthetic import encode_video

SECONDS, FPS, GOP, FRAMES = 180, 25, 250, 8
H, W = 240, 320


def _frames(count: int) -> Iterator[np.ndarray]:
    """Moving colour gradients and a sliding white box: cheap to draw, not trivial to encode."""
    y, x = np.mgrid[0:H, 0:W]
    for i in range(count):
        img = np.stack([(x + 2 * i) % 256, (y + i) % 256, (x + y + 3 * i) % 256], -1).astype(np.uint8)
        img[100:140, (4 * i) % (W - 40) : (4 * i) % (W - 40) + 40] = 255
        yield img


@pytest.fixture(scope="session")
def long_videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("long")
    paths = {"h264": root / "long.mp4", "vp9": root / "long.webm"}
    for codec, path in paths.items():
        encode_video(path, _frames(SECONDS * FPS), codec, FPS, GOP)
    return paths


def _record(benchmark, frames_per_clip: int, decoded_per_clip: int | None = None) -> None:
    seconds = benchmark.stats.stats.mean
    benchmark.extra_info.update({"clips_per_s": 1 / seconds, "frames_out_per_s": frames_per_clip / seconds})
    if decoded_per_clip is not None:
        benchmark.extra_info["frames_decoded_per_s"] = decoded_per_clip / seconds


def _full_decode(path: Path, indices: list[int]) -> np.ndarray:
    """The naive loader: decode every frame from the start, keep the wanted ones."""
    wanted, kept = set(indices), {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_type, stream.codec_context.thread_count = "AUTO", 2
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                kept[i] = frame.to_ndarray(format="rgb24")
    return np.stack([kept[i] for i in indices])


def _clips(info_frames: int) -> Iterator[list[int]]:
    """Training-style clips: fresh random offsets every call (no lucky reuse of one GOP)."""
    generator = torch.Generator().manual_seed(0)
    while True:
        yield segment_indices(info_frames, FRAMES, True, generator)


@pytest.mark.parametrize("codec", ["h264", "vp9"])
def test_pyav_sparse_seek(benchmark, long_videos, codec):
    path = long_videos[codec]
    info = probe(path)
    assert info.num_frames == SECONDS * FPS
    clips = _clips(info.num_frames)
    out = benchmark.pedantic(lambda: decode_frames(path, next(clips), "pyav", info)[0], rounds=6, warmup_rounds=1)
    assert out.shape == (FRAMES, H, W, 3)
    _record(benchmark, FRAMES)


@pytest.mark.parametrize("codec", ["h264", "vp9"])
def test_pyav_full_decode(benchmark, long_videos, codec):
    path = long_videos[codec]
    clips = _clips(SECONDS * FPS)
    out = benchmark.pedantic(lambda: _full_decode(path, next(clips)), rounds=2, warmup_rounds=0)
    assert out.shape == (FRAMES, H, W, 3)
    _record(benchmark, FRAMES, SECONDS * FPS)


def test_dali_cpu_sparse_vp9(benchmark, long_videos):
    pytest.importorskip("nvidia.dali")
    path = long_videos["vp9"]
    info = probe(path)
    clips = _clips(info.num_frames)
    out = benchmark.pedantic(lambda: decode_frames(path, next(clips), "dali", info)[0], rounds=6, warmup_rounds=1)
    assert out.shape == (FRAMES, H, W, 3)
    _record(benchmark, FRAMES)


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@gpu
def test_dali_nvdec_h264(benchmark, long_videos, tmp_path):
    """DALI mixed (NVDEC) loader on 16 copies of the long H.264 video, batch 8: clips/s incl. resize to 224."""
    pytest.importorskip("nvidia.dali")
    from pcmci.data.dali import DaliLoader
    from pcmci.data.datasets import ManifestDataset

    (tmp_path / "m.csv").write_text("path,label\n" + f"{long_videos['h264']},x\n" * 16)
    loader = DaliLoader(ManifestDataset(tmp_path / "m.csv", None, frames=FRAMES, image_size=224, train=True),
                        batch_size=8, device="gpu", shuffle=True)
    epoch = iter(range(10**6))

    def run() -> int:
        loader.set_epoch(next(epoch))
        count = sum(batch["video"].shape[0] for batch in loader)
        torch.cuda.synchronize()
        return count

    assert benchmark.pedantic(run, rounds=3, warmup_rounds=1) == 16
    seconds = benchmark.stats.stats.mean
    benchmark.extra_info.update({"clips_per_s": 16 / seconds, "frames_out_per_s": 16 * FRAMES / seconds})


@gpu
def test_loader_keeps_up_with_training(benchmark, long_videos, tmp_path):
    """Train-step time of the tiny model (batch 8) vs the DALI loader's time per batch of the same size."""
    pytest.importorskip("nvidia.dali")
    from pcmci.config import preset
    from pcmci.data.dali import DaliLoader
    from pcmci.data.datasets import ManifestDataset
    from pcmci.model import build_model

    cfg = preset("tiny")
    model = build_model(cfg.model, ["a", "b", "c"], []).cuda()
    (tmp_path / "m.csv").write_text("path,label\n" + f"{long_videos['h264']},a\n" * 8)
    dataset = ManifestDataset(tmp_path / "m.csv", None, frames=cfg.data.frames, image_size=cfg.data.image_size,
                              train=True)
    loader = DaliLoader(dataset, batch_size=8, device="gpu")
    batch = next(iter(loader))
    model.build_dictionaries([batch["video"]])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        loss = model.loss(model(batch["video"]), batch["label"].cuda())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        torch.cuda.synchronize()

    benchmark.pedantic(step, rounds=10, warmup_rounds=2)

    tic = time.perf_counter()
    for _ in range(3):
        next(iter(loader))
    torch.cuda.synchronize()
    load = (time.perf_counter() - tic) / 3
    train_step = benchmark.stats.stats.mean
    benchmark.extra_info.update({"train_step_s": train_step, "load_batch_s": load, "keeps_up": load <= train_step})


def _sampling_rate(paths: list[Path], clips: int, timeout: float) -> dict[str, float]:
    """Training-style random 8-frame clips (fresh offsets each clip, as ``VideoDataset`` draws them) through
    ``decode_frames``; clips/s over all ``paths`` (each probed once beforehand, as the dataset caches it)."""
    infos = {path: probe(path) for path in paths}
    generator = torch.Generator().manual_seed(0)
    decode_frames(paths[0], [0], "pyav", infos[paths[0]], timeout)  # start the decode worker outside the clock
    tic = time.perf_counter()
    for i in range(clips):
        path = paths[i % len(paths)]
        out, _ = decode_frames(path, segment_indices(infos[path].num_frames, FRAMES, True, generator), "pyav",
                               infos[path], timeout)
        assert out.shape[0] == FRAMES
    seconds = time.perf_counter() - tic
    return {"clips": clips, "seconds": seconds, "clips_per_s": clips / seconds}


def compare_prepared(frames: int, gop: int, clips: int, jobs: int) -> dict:
    """Long-GOP originals (H.264 and VP9, ``frames`` frames, keyframe every ``gop``) made here, prepared with
    ``pcmci data prepare`` defaults (--gop 8, no scaling at 240 p), sampled before and after."""
    from pcmci.config import DataConfig
    from pcmci.data.prepare import PrepareSettings, prepare_dataset

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "originals"
        root.mkdir()
        originals = [root / f"long{i}.{ext}" for i, ext in enumerate(["mp4", "webm", "mp4", "webm"])]
        for path in originals:
            encode_video(path, _frames(frames), "h264" if path.suffix == ".mp4" else "vp9", FPS, gop)
        (root / "manifest.csv").write_text("path,label\n" + "".join(f"{p.name},x\n" for p in originals))
        data = DataConfig(dataset="manifest", root=str(root), manifest=str(root / "manifest.csv"))
        settings = PrepareSettings(short_side=H, gop=8, codec="h264", threads=max(1, (os.cpu_count() or 1) // jobs))
        report = prepare_dataset(data, Path(tmp) / "prepared", settings, jobs)
        assert report["failed"] == 0, report["failures"]
        rerun = prepare_dataset(data, Path(tmp) / "prepared", settings, jobs)
        prepared = [Path(tmp) / "prepared" / e["output"] for e in report["files"]]
        result = {
            "originals": {"videos": len(originals), "frames": frames, "gop": gop, "size": f"{W}x{H}", "fps": FPS,
                          "codecs": ["h264", "vp9"], "bytes": report["source_bytes"]},
            "prepare": {"settings": report["settings"], "jobs": jobs, "seconds": report["seconds"],
                        "bytes": report["bytes"], "max_keyframe_interval": max(e["max_keyframe_interval"]
                                                                               for e in report["files"]),
                        "frame_counts_match": all(e["frames"] == e["source_frames"] for e in report["files"]),
                        "rerun_encoded": rerun["done"], "rerun_seconds": rerun["seconds"]},
            "sampling": {"original": _sampling_rate(originals, clips, 60.0),
                         "prepared": _sampling_rate(prepared, clips, 60.0)},
            "watchdog": _watchdog_overhead(prepared, 4 * clips),
            "watchdog_demo_clips": _watchdog_overhead(_demo_videos(Path(tmp) / "synthetic"), 4 * clips),
        }
    result["speedup"] = result["sampling"]["prepared"]["clips_per_s"] / result["sampling"]["original"]["clips_per_s"]
    return result


def _demo_videos(root: Path) -> list[Path]:
    """The synthetic demo's videos (64 px, VP9), a small set."""
    from pcmci.data.datasets import read_manifest
    from pcmci.data.synthetic import synthesize

    return [row.path for row in read_manifest(synthesize(root, n_train=24, n_test=8, progress=False))]


def _watchdog_overhead(paths: list[Path], clips: int) -> dict[str, float]:
    """The same clips decoded alternately in this process (``timeout=0``) and through the decode worker
    (``timeout=60``, the default), so load changes on a shared machine hit both alike; medians per clip."""
    infos = {path: probe(path) for path in paths}
    generator = torch.Generator().manual_seed(1)
    times: dict[float, list[float]] = {0.0: [], 60.0: []}
    decode_frames(paths[0], [0], "pyav", infos[paths[0]], 60.0)
    for i in range(clips):
        path = paths[i % len(paths)]
        indices = segment_indices(infos[path].num_frames, FRAMES, True, generator)
        for timeout in ((0.0, 60.0) if i % 2 else (60.0, 0.0)):
            tic = time.perf_counter()
            decode_frames(path, indices, "pyav", infos[path], timeout)
            times[timeout].append(time.perf_counter() - tic)
    in_process, worker = (float(np.median(times[t])) * 1e3 for t in (0.0, 60.0))
    return {"clips": clips, "in_process_ms_per_clip": in_process, "worker_ms_per_clip": worker,
            "overhead_ms_per_clip": worker - in_process}


def main() -> None:
    parser = argparse.ArgumentParser(description="random 8-frame sampling: long-GOP originals vs prepared files")
    parser.add_argument("--device", required=True, help="the machine, in words (e.g. '2-core CPU')")
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--frames", type=int, default=600, help="frames per original (default: 600 = 24 s)")
    parser.add_argument("--gop", type=int, default=250, help="keyframe interval of the originals (default: 250)")
    parser.add_argument("--clips", type=int, default=60, help="clips sampled per file set (default: 60)")
    parser.add_argument("--jobs", type=int, default=2, help="prepare jobs (default: 2)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = {"device": args.device, "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
              "date": date.today().isoformat(), "command": shlex.join([".venv/bin/python", *sys.argv]),
              "pyav": av.__version__, **compare_prepared(args.frames, args.gop, args.clips, args.jobs)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    s = result["sampling"]
    print(f"original {s['original']['clips_per_s']:.2f} clips/s, prepared {s['prepared']['clips_per_s']:.2f} clips/s "
          f"({result['speedup']:.1f}x); watchdog {result['watchdog']['overhead_ms_per_clip']:.2f} ms/clip at 240p, "
          f"{result['watchdog_demo_clips']['overhead_ms_per_clip']:.2f} ms/clip at 64 px -> {args.out}")


if __name__ == "__main__":
    main()
