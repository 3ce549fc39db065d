"""The PCMCI model: frozen CLIP, TimeSformer, the causal stages ICH / ICI / IVC and the head."""
from .pcmci import PCMCI, build_model

__all__ = ["PCMCI", "build_model"]
