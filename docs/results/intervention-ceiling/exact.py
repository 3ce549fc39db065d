"""The generator's own confounding rule, shared by the scripts of this folder: ``P(y|bg,d)`` for each clip."""
import torch


def label_distribution(confounders: list[tuple[int, int]], confound: float, k: int,
                       joint: bool = False) -> torch.Tensor:
    """``P(y|bg_i,d_i)`` for every class, [n, k], with a uniform ``P(y)``: each confounder is the class's own with
    probability ``confound + (1 - confound) / k``, any other with ``(1 - confound) / k``, independently — or,
    ``joint``, one draw shared by both (``bg == d``), so only the background's id carries information."""
    own, other = confound + (1 - confound) / k, (1 - confound) / k
    lik = torch.tensor([[(own if b == y else other) * (1.0 if joint else (own if d == y else other)) for y in range(k)]
                        for b, d in confounders])
    return lik / lik.sum(1, keepdim=True)


def label_probability(confounders: list[tuple[int, int]], labels: torch.Tensor, confound: float, k: int,
                      joint: bool = False) -> torch.Tensor:
    """``P(y_i|bg_i,d_i)`` of each clip's own label (see :func:`label_distribution`)."""
    return label_distribution(confounders, confound, k, joint)[torch.arange(len(confounders)), labels]
