"""The decode watchdog: run a decode in a thread and give up on it after ``timeout`` seconds (one module that
``decode.py`` and ``dali.py`` both import, so neither imports the other for it)."""

from __future__ import annotations

import threading
from typing import Callable, TypeVar

from pcmci.data.records import Source, VideoDecodeError

DECODE_TIMEOUT = 60.0  # seconds; 0 disables the watchdog
T = TypeVar("T")


def with_timeout(timeout: float, source: Source, fn: Callable[[], T]) -> T:
    """``fn()`` in a watchdog thread; ``VideoDecodeError`` if it has not returned after ``timeout`` s."""
    if not timeout:
        return fn()
    result: dict[str, T | BaseException] = {}

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
