"""One place that turns a ``VideoDataset`` into batches: DALI on GPU (``auto``/``dali``), else a PyTorch
``DataLoader`` over per-video decoding (PyAV, or DALI-CPU for VP8/VP9/MJPEG with ``dali``)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch.utils.data import DataLoader

from pcmci.data import dali
from pcmci.data.datasets import VideoDataset, collate_videos
from pcmci.data.sampling import epoch_order

log = logging.getLogger(__name__)
_announced: set[str] = set()


def uses_dali_gpu(backend: str, device: torch.device, views: int = 1) -> bool:
    """Whether batches come from the DALI GPU pipeline (NVDEC): ``auto``/``dali`` with CUDA, DALI and one view."""
    return backend in ("auto", "dali") and device.type == "cuda" and views == 1 and dali.available()


def make_loader(dataset: VideoDataset, batch_size: int, device: torch.device, shuffle: bool = False,
                epoch: int = 0, num_workers: int = 0, weights: torch.Tensor | None = None) -> Iterable[dict[str, Any]]:
    """Batches ``{"video", "label", "steps", "index", "bad"}`` of ``dataset`` for ``epoch``.

    Orders are a pure function of (dataset seed, epoch) (:func:`~pcmci.data.sampling.epoch_order`: shuffled, or
    resampled in proportion to ``weights[n]``); under ``torch.distributed`` each rank reads positions
    ``rank::world`` of the order, padded by repeating it. ``video`` is absent from a batch whose videos were all
    skipped.
    """
    dataset.set_epoch(epoch)
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if distributed else (0, 1)
    # DALI's GPU pipeline centre-crops; a training crop jitter is cut per video after decoding instead.
    jitter = dataset.train and dataset.train_crop_scale < 1.0
    gpu = uses_dali_gpu(dataset.backend, device, dataset.views) and not jitter
    choice = "DALI (NVDEC, GPU)" if gpu else "DALI-CPU / PyAV per video" if dataset.backend == "dali" else "PyAV"
    if choice not in _announced:
        _announced.add(choice)
        log.info("data: backend=%s on %s -> decoding with %s", dataset.backend, device.type, choice)
    if gpu:
        loader = dali.DaliLoader(dataset, batch_size, "gpu", shuffle, rank, world, weights=weights)
        loader.set_epoch(epoch)
        return loader
    sampler = epoch_order(len(dataset), dataset.seed, epoch, shuffle, rank, world, weights)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, collate_fn=collate_videos,
                      pin_memory=device.type == "cuda")
