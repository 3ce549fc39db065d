"""Profiling reports (``pcmci profile``): parameters, FLOPs with fvcore (cross-checked against
``torch.utils.flop_counter`` and closed forms), latency per stage, peak memory, clips/s, and the paper budget."""
import warnings

with warnings.catch_warnings():
    # fvcore.nn's focal-loss module runs torch.jit.script at import, which torch 2.x deprecates with a FutureWarning
    # on every command that profiles; nothing here uses that module, and the user cannot act on the warning.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    import fvcore.nn  # noqa: F401

from .profiler import ProfileOptions, profile_model, run_profile
from .report import write_report

__all__ = ["ProfileOptions", "profile_model", "run_profile", "write_report"]
