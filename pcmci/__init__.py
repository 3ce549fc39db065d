"""pcmci: Progressive Cross-Modal Causal Intervention for long-term action recognition.

The public API::

    cfg = pcmci.load_config("tiny", ["model.stages=[ich,ivc]"])   # preset or YAML + dotted overrides
    model = pcmci.build_model(cfg.model, classes, actions)       # see pcmci.model.build_model
    model = pcmci.PCMCI.from_pretrained("runs/full/export")      # what `pcmci export` writes

Everything else lives in the layers (``pcmci.data`` -> ``pcmci.model`` -> ``pcmci.engine`` -> reports) and the
studies in ``pcmci.experiments``. The model and its torch imports load on first use of a name that needs them,
so ``import pcmci`` and the command line's ``--help`` stay fast.
"""
from __future__ import annotations

from importlib import import_module, metadata
from typing import TYPE_CHECKING, Any

from .config import load_config

if TYPE_CHECKING:
    from .model import PCMCI, build_model

__all__ = ["PCMCI", "__version__", "build_model", "load_config"]

try:
    __version__ = metadata.version("pcmci")
except metadata.PackageNotFoundError:  # a source tree on sys.path without an install
    __version__ = "0+unknown"

_LAZY = {"PCMCI": "pcmci.model", "build_model": "pcmci.model"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pcmci' has no attribute {name!r}")
