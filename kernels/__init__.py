"""Fused ops of pcmci, importable as ``pcmci.kernels``; imports nothing from ``pcmci``.

Each op lives in one file beside its pure-PyTorch reference (the spec) and is registered as a
``torch.library.triton_op`` (``pcmci::log_sinkhorn``, ``pcmci::relation``): Triton on CUDA, the reference on
CPU, ``PCMCI_KERNELS=reference|triton`` forces one. The functions are exported under names distinct from their
modules (``log_sinkhorn`` from ``sinkhorn``, ``relation_product`` from ``relation``), so
``from pcmci.kernels import relation`` is the module. ``FVCORE_HANDLES`` maps op names to fvcore handles
(one multiply-add = one FLOP) for ``FlopCountAnalysis.set_op_handle(**FVCORE_HANDLES)``. Each op's
``launch_configs`` is the one source of its Triton launch configurations, for its launcher and for
``pcmci kernels report`` (``aot.py``, ``report.py``, ``roofline.py``: the ahead-of-time check without a GPU).
"""
from . import relation, sinkhorn
from .relation import relation_maps, relation_product, relation_reference
from .sinkhorn import log_sinkhorn, log_sinkhorn_reference

FVCORE_HANDLES = {"pcmci::log_sinkhorn": sinkhorn.fvcore_handle, "pcmci::relation": relation.fvcore_handle}

__all__ = ["FVCORE_HANDLES", "log_sinkhorn", "log_sinkhorn_reference", "relation", "relation_maps",
           "relation_product", "relation_reference", "sinkhorn"]
