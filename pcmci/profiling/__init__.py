"""Profiling reports (``pcmci profile``): parameters, FLOPs with fvcore (cross-checked against
``torch.utils.flop_counter`` and closed forms), latency per stage, peak memory, clips/s, and the paper budget."""
from .profiler import ProfileOptions, profile_model, run_profile
from .report import write_report

__all__ = ["ProfileOptions", "profile_model", "run_profile", "write_report"]
