"""Fused ops of pcmci, importable as ``pcmci.kernels``; imports nothing from ``pcmci``.

Each op lives in one file beside its pure-PyTorch reference (the spec)."""
from .relation import relation, relation_reference
from .sinkhorn import log_sinkhorn, log_sinkhorn_reference

__all__ = ["log_sinkhorn", "log_sinkhorn_reference", "relation", "relation_reference"]
