"""NVIDIA DALI decoding (extra ``dali``): a per-video DALI-CPU backend and a sharded batch loader.

``decode_cpu`` serves the ``dali`` entry of the decode-backend registry (VP8/VP9/MJPEG on CPU).
``DaliLoader`` runs one pipeline per process that decodes exactly the frame indices the dataset's sampler picks
(the same as PyAV's for the same seed and epoch) with ``fn.decoders.video(..., frames=indices)``, DALI's mode for
a list of sparse indices rather than a contiguous window (NVDEC through the ``mixed`` backend on GPU:
H.264/HEVC/VP9/AV1/...; libavcodec on CPU; tested on CPU, where the operator is shared), resizes the shorter side,
centre-crops and scales to [0, 1] on the same device, and hands batches to PyTorch without copies
through the DALI PyTorch plugin. Each DDP rank reads its own shard of the (epoch-shuffled) indices.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pcmci.data.records import ClipSource, Source, VideoDecodeError, VideoInfo
from pcmci.data.sampling import epoch_order
from pcmci.data.watchdog import DECODE_TIMEOUT, with_thread_timeout
from pcmci.errors import ConfigError


def available() -> bool:
    """Whether ``nvidia.dali`` imports."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def _require() -> None:
    if not available():
        raise ConfigError("data.backend=dali needs NVIDIA DALI: pip install 'pcmci[dali]'")


def _encoded(source: Source) -> np.ndarray:
    if isinstance(source, bytes):
        return np.frombuffer(source, dtype=np.uint8)
    return np.fromfile(Path(source), dtype=np.uint8)


def _cause(err: Exception) -> str:
    """The informative line of a DALI error: what the operator ``encountered``, not the trailing boilerplate."""
    text = str(err).split("encountered:", 1)[-1]
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not line.strip().startswith(("C++ context", "Current pipeline object"))]
    return "DALI: " + (lines[0] if lines else type(err).__name__)


def _pipeline(batch_size: int, device: str, size: int | None, threads: int, device_id: int | None) -> Any:
    """Pipeline: encoded bytes ``enc`` + frame indices ``idx`` -> uint8 [F,H,W,3], or float [F,3,S,S] in [0,1]."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=device_id, prefetch_queue_depth=1,
                  exec_dynamic=True)
    def pipe() -> Any:
        encoded = fn.external_source(name="enc", dtype=types.UINT8, ndim=1)
        indices = fn.external_source(name="idx", dtype=types.INT32, ndim=1)
        frames = fn.decoders.video(encoded, device="mixed" if device == "gpu" else "cpu", frames=indices)
        if size is None:
            return frames
        frames = fn.resize(frames, resize_shorter=size, antialias=True)
        return fn.crop_mirror_normalize(frames, crop=(size, size), dtype=types.FLOAT, mean=[0.0], std=[255.0],
                                        output_layout="FCHW")

    built = pipe()
    built.build()
    _built.append(os.getpid())
    return built


_built: list[int] = []  # pids that built a pipeline; inherited by forked children


def built_pipelines() -> bool:
    """Whether this process, or one it was forked from, has built a DALI pipeline. DALI does not survive a fork:
    a child forked after that hangs building its own pipeline, so such a process must decode DALI in-process."""
    return bool(_built)


@lru_cache(maxsize=1)
def _cpu_decoder() -> tuple[Any, threading.Lock]:
    return _pipeline(1, "cpu", None, 1, None), threading.Lock()


def decode_cpu(source: Source, indices: Sequence[int], info: VideoInfo) -> np.ndarray:
    """uint8 [len(indices), H, W, 3] RGB decoded by DALI-CPU (one cached pipeline per process)."""
    _require()
    pipe, lock = _cpu_decoder()
    with lock:
        pipe.feed_input("enc", [_encoded(source)])
        pipe.feed_input("idx", [np.asarray(indices, dtype=np.int32)])
        try:
            (out,) = pipe.run()
        except RuntimeError as err:
            raise VideoDecodeError(source, _cause(err)) from err
        frames = np.array(out[0])
    if frames.shape != (len(indices), info.height, info.width, 3):
        raise VideoDecodeError(source, f"DALI returned frames of shape {frames.shape}")
    return frames


def _to_torch(tensors: Any, device: torch.device) -> torch.Tensor:
    from nvidia.dali.plugin.pytorch import feed_ndarray

    dense = tensors.as_tensor()
    out = torch.empty(dense.shape(), dtype=torch.float32, device=device)
    feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(device) if device.type == "cuda" else None)
    return out


class DaliLoader:
    """Batches ``{"video": float [B,F,3,S,S] in [0,1] on the device, "label", "steps", "index", "bad"}``.

    Shard ``rank`` of ``world`` sees positions ``rank::world`` of the epoch order (seeded shuffle when ``shuffle``,
    a weighted resample given ``weights``), padded to a multiple of ``world`` as ``DistributedSampler`` does;
    ``set_epoch`` selects both the order and the training offsets. Videos that fail to probe, or that fail inside
    the pipeline (found by decoding a failed batch one video at a time), are skipped and listed in ``bad`` when the
    dataset has ``skip_bad``, else raise. Every ``pipe.run()`` runs under a thread watchdog (``timeout`` seconds,
    default the dataset's): the pipeline cannot leave this process, so a timed-out run raises and the pipeline is
    rebuilt, but the stuck run is not stopped (the PyAV / DALI-CPU per-video path kills its decoder process
    instead).
    """

    def __init__(self, dataset: ClipSource, batch_size: int, device: str = "gpu", shuffle: bool = False,
                 rank: int = 0, world: int = 1, threads: int = 2, timeout: float | None = None,
                 weights: torch.Tensor | None = None) -> None:
        _require()
        if dataset.views > 1:
            raise ConfigError("DaliLoader decodes one view per video; use the PyTorch loader for multi-view tests")
        self.dataset, self.batch_size, self.shuffle = dataset, batch_size, shuffle
        self.rank, self.world, self.epoch, self.weights = rank, world, 0, weights
        self.timeout = getattr(dataset, "timeout", DECODE_TIMEOUT) if timeout is None else timeout
        self.device = torch.device("cuda", torch.cuda.current_device()) if device == "gpu" else torch.device("cpu")
        self._build = (batch_size, device, dataset.image_size, threads, self.device.index if device == "gpu" else None)
        self.pipe = _pipeline(*self._build)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.dataset.set_epoch(epoch)

    def _order(self) -> list[int]:
        """This shard's indices (:func:`~pcmci.data.sampling.epoch_order`, as the PyTorch loader's)."""
        return epoch_order(len(self.dataset), self.dataset.seed, self.epoch, self.shuffle, self.rank, self.world,
                           self.weights)

    def __len__(self) -> int:
        return -(-len(self._order()) // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        order = self._order()
        for start in range(0, len(order), self.batch_size):
            good, encoded, indices, bad = [], [], [], []
            for index in order[start : start + self.batch_size]:
                try:
                    plan = self.dataset.plan(index)
                    encoded.append(_encoded(plan.path))
                except (VideoDecodeError, OSError) as err:
                    if not self.dataset.skip_bad:
                        raise
                    bad.append(f"{self.dataset.records[index].path}: {err}")
                    continue
                good.append(index)
                indices.append(np.asarray(plan.clips[0], dtype=np.int32))
            batch: dict[str, Any] = {"bad": bad, "index": torch.tensor(good, dtype=torch.int64)}
            if good:
                video, good, failed = self._decode(good, encoded, indices)
                batch["bad"] += failed
                batch["index"] = torch.tensor(good, dtype=torch.int64)
            if good:
                batch["video"] = video
                targets = [self.dataset.targets(i) for i in good]
                batch["label"] = torch.stack([label for label, _ in targets])
                batch["steps"] = torch.stack([steps for _, steps in targets])
            yield batch

    def _run(self, encoded: list[np.ndarray], indices: list[np.ndarray], what: str) -> torch.Tensor:
        """One ``pipe.run()`` under the decode watchdog -> float [n,F,3,S,S]; a fresh pipeline after any failure
        (a timed-out run still holds the old one)."""
        def run() -> torch.Tensor:
            self.pipe.feed_input("enc", encoded)
            self.pipe.feed_input("idx", indices)
            try:
                (out,) = self.pipe.run()
            except RuntimeError as err:
                raise VideoDecodeError(what, _cause(err)) from err
            return _to_torch(out, self.device)

        try:
            return with_thread_timeout(self.timeout, what, run)
        except VideoDecodeError:
            self.pipe = _pipeline(*self._build)
            raise

    def _decode(self, good: list[int], encoded: list[np.ndarray],
                indices: list[np.ndarray]) -> tuple[torch.Tensor | None, list[int], list[str]]:
        """(video, decoded indices, bad entries) of one batch. When the batch fails inside the pipeline and the
        dataset has ``skip_bad``, its videos are decoded one by one to find the bad ones, which are skipped and
        listed (``path: cause``); without ``skip_bad`` the batch's error is raised, naming its videos."""
        paths = [str(self.dataset.records[i].path) for i in good]
        try:
            return self._run(encoded, indices, ", ".join(paths)), good, []
        except VideoDecodeError:
            if not self.dataset.skip_bad:
                raise
        videos, kept, bad = [], [], []
        for index, enc, idx, path in zip(good, encoded, indices, paths):
            try:
                videos.append(self._run([enc], [idx], path))
                kept.append(index)
            except VideoDecodeError as err:
                bad.append(str(err))
        return (torch.cat(videos) if videos else None), kept, bad
