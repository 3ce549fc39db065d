"""What the code before the training-loop split and the stage renames wrote (``fixtures/pre_split_formats.json``,
recorded by running that code): model state-dict keys and shapes, checkpoint structure, metrics record keys; and
saved configs from before the backdoor weights' keys left ``model.ivc`` for their own ``backdoor`` section."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from torch import Tensor

FIXTURE = Path(__file__).parent / "fixtures" / "pre_split_formats.json"
# Fixture key -> the overrides that build what the former code built for it (its IVC default was mediator-only).
VARIANTS = {
    "tiny": ["model.ivc.mediator_only=true"],
    "tiny model.ivc.mediator_only=false model.ich.adjust=posterior model.ici.layers=2": [
        "model.ivc.mediator_only=false", "model.ich.adjust=posterior", "model.ici.layers=2"],
}


def pre_split_formats() -> dict[str, Any]:
    return json.loads(FIXTURE.read_text())


def with_former_names(state: dict[str, Tensor], variant: str) -> dict[str, Tensor]:
    """The model state dict ``state`` under the keys the former code wrote for ``variant``, matched by position:
    the shapes must agree at every position, since optimiser states (saved by parameter index) rely on that order."""
    former = pre_split_formats()["state_dict"][variant]
    assert len(former) == len(state)
    for (old, shape), (new, tensor) in zip(former.items(), state.items()):
        assert list(tensor.shape) == shape, f"{old} {shape} vs {new} {list(tensor.shape)}"
    return dict(zip(former, state.values()))


def with_former_config_keys(config: dict[str, Any]) -> dict[str, Any]:
    """A saved config (``to_dict``) as the code before the ``backdoor`` section wrote it: the fields that moved under
    ``model.ivc``, where ``reweight`` was a bool that took effect only with the IVC stage; the section's newer
    fields absent (at their defaults)."""
    from pcmci.config import MOVED_KEYS, BackdoorConfig

    former = copy.deepcopy(config)
    backdoor = former.pop("backdoor")
    for key in MOVED_KEYS:
        name = key.rsplit(".", 1)[1]
        former["model"]["ivc"][name] = backdoor.pop(name)
    if former["model"]["ivc"]["reweight"] is None:
        former["model"]["ivc"]["reweight"] = True
    assert all(value == getattr(BackdoorConfig(), name) for name, value in backdoor.items()), backdoor
    return former
