"""The stage registry: every causal stage is built here from its name and implements ``forward(state) -> state``.

A stage module also answers ``reads_frames`` (whether ``forward`` reads the CLIP frames), ``dictionary_features
(state)`` (the features its k-means dictionary is fitted on, or None) and ``maps(state)`` (the intermediate maps
``pcmci diagnose`` draws). Ablation variants of a stage are config choices its constructor reads (``model.ich.adjust``,
``model.ivc.static`` ...), never branches in ``PCMCI.forward``.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from torch import nn

from ..config import STAGE_NAMES, ModelConfig
from .ich import ICH
from .ici import ICI
from .ivc import IVC


class StageSizes(NamedTuple):
    """What a stage's shapes depend on: the joint dim D and the video tokens N."""

    dim: int
    tokens: int


STAGES: dict[str, Callable[[ModelConfig, StageSizes], nn.Module]] = {
    "ich": lambda cfg, s: ICH(cfg.ich, s.dim),
    "ici": lambda cfg, s: ICI(cfg.ici, s.dim),
    "ivc": lambda cfg, s: IVC(cfg.ivc, s.dim, s.tokens, cfg.ici.mlp_ratio),
}
assert tuple(STAGES) == STAGE_NAMES, "the registry and config.STAGE_NAMES must list the same stages"


def build_stage(name: str, cfg: ModelConfig, sizes: StageSizes) -> nn.Module:
    """The stage ``name`` (one of ``config.STAGE_NAMES``) configured by ``cfg``."""
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; registered stages: {', '.join(STAGES)}")
    return STAGES[name](cfg, sizes)
