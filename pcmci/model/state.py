"""What flows through the causal stages: one immutable record, so every stage has the same signature."""
from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class StageState(NamedTuple):
    """``texts[B,L,D]`` the label texts (t), ``video[B,N,D]`` the video tokens (v), ``frames[B,F,D]`` the frozen
    CLIP frame embeddings VP (None when no stage reads them), ``losses`` auxiliary losses by name.

    A stage returns ``state._replace(...)`` with what it changed (a NamedTuple: ``torch.compile`` traces it
    without a graph break).
    """

    texts: Tensor
    video: Tensor
    frames: Tensor | None
    losses: dict[str, Tensor]
