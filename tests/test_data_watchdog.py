"""The decode watchdog ends what it stops: a hung decoder's process is killed and reaped, no thread or memory stays.

References are independent of the watchdog: process ids come from ``os.getpid()`` run inside the worker, liveness
from ``/proc``, threads from ``/proc/self/task`` (native threads included), memory from ``/proc/self/statm``.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from pcmci.data import decode, watchdog
from pcmci.data.datasets import VideoDataset, collate_videos
from pcmci.data.records import LabelSet, VideoDecodeError, VideoRecord, VideoSet
from pcmci.data.synthetic import encode_video

HOG = 256 * 2**20  # bytes the hung decoder holds: far above the parent's RSS noise


def _hang(nbytes: int) -> None:
    """A decoder that takes memory and never returns."""
    block = np.ones(nbytes, np.uint8)  # ones, not zeros: the pages are really touched
    while block.any():
        time.sleep(0.05)


def _hanging_backend(source, indices, info):  # the signature of a decode backend
    _hang(HOG)


def _crash() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _children() -> set[int]:
    own = str(os.getpid())
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if stat.rsplit(")", 1)[1].split()[1] == own:  # field 4: the parent's pid
                found.add(int(entry))
    return found


@pytest.fixture
def video(tmp_path: Path) -> tuple[Path, np.ndarray]:
    frames = [np.full((32, 48, 3), 8 * i, np.uint8) for i in range(12)]
    path = tmp_path / "v.webm"
    encode_video(path, frames, "vp9", 8, 4)
    with av.open(str(path)) as container:  # reference: a plain sequential decode
        return path, np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_hung_decoder_is_killed_with_its_memory_and_replaced() -> None:
    watchdog.shutdown()
    first = watchdog.guarded(5, "warmup", os.getpid)
    assert first != os.getpid() and first in _children()
    threads, rss = _threads(), _rss()
    tic = time.perf_counter()
    with pytest.raises(VideoDecodeError, match=r"cannot decode hung\.webm: decode timed out after 1 s"):
        watchdog.guarded(1.0, "hung.webm", _hang, HOG)
    took = time.perf_counter() - tic
    assert took < 3.0  # 1 s timeout, then SIGKILL and waitpid (milliseconds) on a loaded 2-core machine
    assert not Path(f"/proc/{first}").exists()  # killed and reaped: not even a zombie
    assert first not in _children() and watchdog.worker_pid() is None
    assert _threads() == threads  # the watchdog adds no thread, and left none behind
    assert _rss() - rss < 32 * 2**20  # the 256 MiB lived in the killed worker, not here
    second = watchdog.guarded(5, "next", os.getpid)  # the next call forks a fresh worker
    assert second not in (first, os.getpid()) and watchdog.worker_pid() == second
    watchdog.shutdown()
    assert not Path(f"/proc/{second}").exists() and _threads() == threads


def test_hanging_backend_times_out_and_decoding_resumes(video, monkeypatch) -> None:
    path, full = video
    monkeypatch.setitem(decode._BACKENDS, "pyav", _hanging_backend)
    watchdog.shutdown()  # the next worker is forked with the hanging backend in place
    with pytest.raises(VideoDecodeError, match=f"{path}: decode timed out after 0.5 s"):
        decode.decode_frames(path, [0, 5], timeout=0.5)
    monkeypatch.undo()
    frames, info = decode.decode_frames(path, [0, 5, 11], timeout=5)  # a fresh worker, forked without the patch
    np.testing.assert_array_equal(frames, full[[0, 5, 11]])
    assert info.num_frames == len(full)


def test_crashing_decoder_is_reported_not_fatal() -> None:
    with pytest.raises(VideoDecodeError, match=r"crash\.mp4: decoder process died \(killed by signal 11\)"):
        watchdog.guarded(5, "crash.mp4", _crash)
    assert watchdog.guarded(5, "after", os.getpid) != os.getpid()


def test_errors_cross_the_pipe_unchanged(tmp_path) -> None:
    missing = tmp_path / "gone.webm"
    with pytest.raises(VideoDecodeError) as guarded_err:
        decode.decode_frames(missing, [0], timeout=5)
    with pytest.raises(VideoDecodeError) as direct_err:
        decode.decode_frames(missing, [0], timeout=0)
    assert (guarded_err.value.path, guarded_err.value.cause) == (direct_err.value.path, direct_err.value.cause)
    with pytest.raises(ValueError, match="indices must be"):
        decode.decode_frames(missing, [], timeout=5)


def test_dataloader_workers_get_their_own_decode_worker(video) -> None:
    """DataLoader workers are daemonic (no multiprocessing children): the watchdog forks with os.fork."""
    path, full = video
    videos = VideoSet(LabelSet(["a"]), [VideoRecord(path, 0, [], None)] * 4, "test")
    dataset = VideoDataset(videos, frames=4, image_size=32, timeout=5)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=collate_videos)
    batches = list(loader)
    assert sum(len(b["index"]) for b in batches) == 4 and not any(b["bad"] for b in batches)
    reference = dataset[0]["video"]  # this process, its own worker
    for batch in batches:
        for clip in batch["video"]:
            torch.testing.assert_close(clip, reference, rtol=0, atol=0)


def _state(pid: int) -> str | None:
    """The process state letter from /proc (None when gone); a zombie ('Z') has stopped running."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def test_worker_hung_when_its_parent_dies_ends_too(tmp_path):
    """A parent killed while its worker hangs in a decode must not leave the worker running."""
    import subprocess
    import sys

    script = ("import os, time\nfrom pcmci.data import watchdog\n"
              "print(watchdog.guarded(5, 'x', os.getpid), flush=True)\n"
              "watchdog.guarded(600, 'hung.webm', time.sleep, 600)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    assert _state(worker) in ("S", "R")
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 5  # it checks every ORPHAN_POLL = 0.5 s
    while _state(worker) not in (None, "Z") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _state(worker) in (None, "Z")


def test_a_child_forked_while_the_lock_is_held_can_decode() -> None:
    """A DataLoader worker forked while another thread of its parent is inside a guarded call must not deadlock."""
    with watchdog._lock:  # as if another thread were mid-call at the moment of the fork
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.alarm(10)  # a deadlock ends the child (SIGALRM) instead of the test run
                code = 0 if watchdog.guarded(5, "x", os.getpid) != os.getpid() else 2
                watchdog.shutdown()
            finally:
                os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


class _Awkward(Exception):
    """An exception that pickles but does not unpickle (its __init__ wants two arguments)."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a} {b}")


def _raise_awkward() -> None:
    raise _Awkward("codec", "failure")


def test_an_exception_that_does_not_unpickle_arrives_as_its_text() -> None:
    with pytest.raises(RuntimeError, match="^_Awkward: codec failure$"):
        watchdog.guarded(5, "x", _raise_awkward)
    assert watchdog.guarded(5, "x", os.getpid) != os.getpid()  # the worker is still in step
