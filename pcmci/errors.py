"""The project's error types: failures caused by what the user gave (a config, a dataset, weights, a checkpoint).

``pcmci`` prints a ``PcmciError`` as one line, ``pcmci: error: <message>``; any other exception is a bug and is
reported as one, with its type and the hint to rerun with ``--debug`` for the traceback. Each type also
subclasses the built-in error that callers caught before it existed (``ValueError`` for a bad value,
``RuntimeError`` for a file that cannot be used, ``OSError`` for one that cannot be written or found), so
``except ValueError`` around ``load_config`` keeps working.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["CheckpointError", "CheckpointNotFoundError", "CheckpointWriteError", "ConfigError", "DataError",
           "PcmciError", "VideoDecodeError", "WeightsError"]


class PcmciError(Exception):
    """Base of every error that names a problem in the user's input rather than in pcmci."""


class ConfigError(PcmciError, ValueError):
    """A config file, override or command-line option that does not match the schema or its constraints."""


class DataError(PcmciError, ValueError):
    """A dataset file (manifest, labels, annotations) or data setting that cannot be read as documented."""


class VideoDecodeError(PcmciError, RuntimeError):
    """A video that cannot give the requested frames; ``path`` and ``cause`` name what and why."""

    def __init__(self, path: str | Path | bytes, cause: str) -> None:
        self.path = f"<{len(path)} bytes>" if isinstance(path, bytes) else str(path)
        self.cause = cause
        super().__init__(f"cannot decode {self.path}: {cause}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # pickles across the decode worker's pipe
        return (VideoDecodeError, (self.path, self.cause))


class WeightsError(PcmciError, ValueError):
    """Pretrained weights that are missing or do not fit the configured towers."""


class CheckpointError(PcmciError, RuntimeError):
    """A checkpoint that is unreadable, corrupt, unsafe to unpickle or not written by ``pcmci train``."""


class CheckpointNotFoundError(PcmciError, FileNotFoundError):
    """A checkpoint path that names no file."""


class CheckpointWriteError(PcmciError, OSError):
    """A checkpoint (or run folder) that could not be written; the previous checkpoint is left as it was."""
