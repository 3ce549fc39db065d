"""Renamed parameters: a state dict saved under a module's former attribute names still loads.

The causal stages and the head once named their layers by symbols (``w_q``, ``m_u``, ``omega``, ``q`` ...); they
now carry role names (``query_proj``, ``mediator_query_proj``, ``base_logits`` ...) with the symbol beside them in
a comment. Checkpoints and exports written before keep the former keys: each module lists its ``{former: current}``
names and :func:`accept_former_names` rewrites such keys as the state dict is loaded (``load_state_dict``,
``safetensors.torch.load_model``). Parameter order is unchanged, so optimiser states load as they are.
"""
from __future__ import annotations

from typing import Any

from torch import nn


def rename_keys(state_dict: dict[str, Any], prefix: str, renames: dict[str, str]) -> None:
    """In place: every ``prefix + former`` key (the entry itself, or ``former.`` + a sub-key) under its current
    name ``prefix + renames[former]``."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        head, dot, rest = key[len(prefix):].partition(".")
        if head in renames:
            state_dict[prefix + renames[head] + dot + rest] = state_dict.pop(key)


def accept_former_names(module: nn.Module, renames: dict[str, str]) -> None:
    """Let ``module`` load state dicts that name its children or parameters by their ``renames`` keys."""

    def hook(target: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
        rename_keys(state_dict, prefix, renames)

    module.register_load_state_dict_pre_hook(hook)
