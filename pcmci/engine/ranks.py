"""Which process this is in a ``torchrun`` launch, read from the environment alone (no torch import), so the
command line can set up logging before it knows whether the command needs torch."""
from __future__ import annotations

import os


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main_process() -> bool:
    """Rank 0 of a ``torchrun`` launch, or the only process: the one that logs progress and prints results."""
    return int(os.environ.get("RANK", "0")) == 0
