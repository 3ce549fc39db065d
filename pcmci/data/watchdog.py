"""The decode watchdog: decodes that may hang run in a persistent worker process that is killed when it overruns.

``guarded(timeout, source, fn, *args)`` runs ``fn(*args)`` in this process's decode worker, a child forked on
first use (so it shares every loaded module and costs no imports) that serves calls over a pipe until it is
killed or its parent goes away (checked twice a second, also during a hung call). When a call has not answered
after ``timeout`` seconds the worker is killed (SIGKILL) and reaped, its memory returns to the system, and
``VideoDecodeError`` names the file; the next call forks a fresh worker. A worker that dies by itself (a segfault
inside a codec) is reported the same way instead of taking the training process down. Each process (a DataLoader
worker included) has its own decode worker; the worker is forked with ``os.fork`` because DataLoader workers are
daemonic and may not start ``multiprocessing`` children. ``timeout=0`` runs ``fn`` in the calling process, unwatched.

Cost: one pipe round trip per call, the arguments and the result pickled once (measured in ``bench/bench_data.py``).

``fn`` and its arguments must pickle (``fn`` by reference: a module-level function). DALI does not survive a fork:
the DALI GPU loader's pipeline, and DALI-CPU decodes in a process that has built a DALI pipeline, run in-process
under ``with_thread_timeout``, which raises after ``timeout`` but cannot stop the stuck thread.
"""

from __future__ import annotations

import faulthandler
import os
import pickle
import signal
import threading
import time
from multiprocessing.connection import Connection, Pipe
from typing import Any, Callable, TypeVar

from pcmci.data.records import Source, VideoDecodeError

DECODE_TIMEOUT = 60.0  # seconds; 0 disables the watchdog
ORPHAN_POLL = 0.5  # seconds between a worker's checks that its parent still lives
T = TypeVar("T")


def _serve(conn: Connection) -> None:
    """The worker's loop: ``(fn, args)`` in, ``("ok", value)`` or ``("error", exception)`` out, until EOF."""
    global _in_worker
    _in_worker = True
    while True:
        try:
            fn, args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply: tuple[str, Any] = ("ok", fn(*args))
        except BaseException as err:  # handed to the caller, which re-raises it
            reply = ("error", _portable(err))
        try:
            conn.send(reply)
        except (pickle.PicklingError, TypeError, AttributeError) as err:
            conn.send(("error", RuntimeError(f"decode worker could not return its result: {err}")))


def _portable(err: BaseException) -> BaseException:
    """``err`` if it survives pickling (the caller re-raises it as is), else a RuntimeError with its text."""
    try:
        pickle.loads(pickle.dumps(err))
    except Exception:  # e.g. an exception class whose __init__ takes other arguments than its args
        return RuntimeError(f"{type(err).__name__}: {err}")
    return err


def exit_with_parent(parent: int, interval: float = ORPHAN_POLL) -> None:
    """In a worker process (run it in a daemon thread): end the process once ``parent`` is gone, checked every
    ``interval`` seconds, even in the middle of a hung call or a training run (else it would run on)."""
    while os.getppid() == parent:
        time.sleep(interval)
    os._exit(1)


class DecodeWorker:
    """One forked child serving calls over a pipe; ``call`` kills it when a call overruns its timeout."""

    def __init__(self) -> None:
        parent, child = Pipe()
        pid = os.fork()
        if pid == 0:  # the child: serve, then leave without running the parent's exit handlers
            code = 0
            try:
                parent.close()
                faulthandler.disable()  # a crash is reported by the parent, in one line
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the parent, which then closes the pipe
                threading.Thread(target=exit_with_parent, args=(os.getppid(),), daemon=True).start()
                _serve(child)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        child.close()
        self.pid, self.conn, self.owner = pid, parent, os.getpid()

    def call(self, timeout: float, source: Source, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        """``fn(*args)`` in the worker; ``VideoDecodeError`` (and the worker ended) if it overruns or dies."""
        try:
            self.conn.send((fn, args))
        except (BrokenPipeError, ConnectionResetError):
            code = self.stop()
            raise VideoDecodeError(source, f"decoder process died ({_exit_text(code)})") from None
        if not self.conn.poll(timeout):
            self.stop()
            raise VideoDecodeError(source, f"decode timed out after {timeout:g} s (decoder process killed)")
        try:
            status, value = self.conn.recv()
        except (EOFError, OSError):
            code = self.stop()
            raise VideoDecodeError(source, f"decoder process died ({_exit_text(code)})") from None
        if status == "error":
            raise value
        return value

    def stop(self) -> int | None:
        """Kill and reap the worker; its wait status (None when it was already reaped)."""
        self.conn.close()
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            return os.waitpid(self.pid, 0)[1]
        except ChildProcessError:
            return None


def _exit_text(status: int | None) -> str:
    if status is None:
        return "exit status unknown"
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit code {os.WEXITSTATUS(status)}"


_worker: DecodeWorker | None = None
_lock = threading.Lock()
_in_worker = False  # set inside a worker: nested guarded() calls run directly


def _after_fork_in_child() -> None:
    """A forked child (a DataLoader worker) starts with a free lock, whatever thread held it in the parent."""
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def worker_pid() -> int | None:
    """Process id of this process's live decode worker (None before the first guarded call or after a kill)."""
    return _worker.pid if _worker is not None and _worker.owner == os.getpid() and not _worker.conn.closed else None


def shutdown() -> None:
    """End this process's decode worker (the next guarded call forks a fresh one)."""
    global _worker
    with _lock:
        if _worker is not None and _worker.owner == os.getpid():
            _worker.stop()
        _worker = None


def guarded(timeout: float, source: Source, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in the decode worker under a ``timeout`` s watchdog (``timeout=0``: here, unguarded).

    Raises what ``fn`` raises, or ``VideoDecodeError`` naming ``source`` when the call overran (the worker is
    killed) or the worker died.
    """
    global _worker
    if not timeout or _in_worker:
        return fn(*args)
    with _lock:
        if _worker is None or _worker.owner != os.getpid() or _worker.conn.closed:
            _worker = DecodeWorker()  # a worker inherited through fork belongs to the parent: never used here
        return _worker.call(timeout, source, fn, args)


def with_thread_timeout(timeout: float, source: Source, fn: Callable[[], T]) -> T:
    """``fn()`` in a thread; ``VideoDecodeError`` if it has not returned after ``timeout`` s (the thread is left
    running: only for work that cannot leave this process, DALI's)."""
    if not timeout:
        return fn()
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = fn()
        except BaseException as err:  # re-raised in the caller's thread
            result["error"] = err

    thread = threading.Thread(target=run, name="pcmci-decode", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise VideoDecodeError(source, f"decode timed out after {timeout:g} s")
    if "error" in result:
        raise result["error"]
    return result["value"]
