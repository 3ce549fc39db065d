"""Video loading benchmarks (pytest-benchmark; ``extra_info`` holds clips/s and frames/s).

A 3-minute 320x240 25 fps video (Breakfast-like QVGA; keyframe every 250 frames, x264's default) is
generated once per session as H.264 and VP9. CPU: PyAV sparse seeking vs a naive full decode for one
8-frame clip; DALI-CPU vs PyAV on VP9. GPU (when present): DALI-NVDEC vs PyAV on H.264, and the DALI
loader's clips/s against the tiny model's training step.

    .venv/bin/python -m pytest bench/bench_data.py --benchmark-json bench/results/cpu-DATE-data.json
"""
from __future__ import annotations

from collections.abc import Iterator
import time
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
