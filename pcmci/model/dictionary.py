"""Confounder dictionaries (strata ``Z[M,D]`` with prior ``p[M]``) and the NWGM attention over them.

``kmeans`` dictionaries are fitted on features of clips drawn at random from the whole training split (cluster
centres, prior = cluster frequencies), refitted during training by the engine, and kept as buffers, so they travel
with checkpoints; ``learned`` ones are parameters with a uniform prior. A stratum stands for a part of the
population only when several features fall in it: a dictionary asked for more than ``n / MIN_PER_ATOM`` strata
(``n`` features) uses that many (the rest get prior 0) and says so once.
"""
from __future__ import annotations

import logging
import math

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)
MIN_PER_ATOM = 4  # features per stratum at least: k-means with k close to n is one stratum per feature


def kmeans(x: Tensor, k: int, iters: int = 30, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means with k-means++ seeding on ``x[n,D]`` -> (centres ``[k,D]``, counts ``[k]``).

    With fewer distinct points than ``k`` some centres repeat and end with count 0 (prior 0).
    """
    x = x.float()
    g = torch.Generator(device="cpu").manual_seed(seed)
    n = x.shape[0]
    centres = x[torch.randint(n, (1,), generator=g)]
    for _ in range(1, k):
        d2 = torch.cdist(x, centres).amin(1).pow(2)
        weights = d2 if d2.sum() > 0 else torch.ones_like(d2)
        centres = torch.cat([centres, x[torch.multinomial(weights.cpu(), 1, generator=g)]])
    for _ in range(iters):
        assign = torch.cdist(x, centres).argmin(1)
        counts = torch.bincount(assign, minlength=k).float()
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        moved = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres)
        if torch.equal(moved, centres):
            break
        centres = moved
    counts = torch.bincount(torch.cdist(x, centres).argmin(1), minlength=k).float()
    return centres, counts


class ConfounderDictionary(nn.Module):
    """Strata ``atoms[M,D]`` and prior ``prior[M]`` (sums to 1)."""

    def __init__(self, size: int, dim: int, mode: str, name: str = "dictionary") -> None:
        super().__init__()
        self.mode = mode
        if mode == "learned":
            self.atoms = nn.Parameter(torch.randn(size, dim) * dim**-0.5)
            self.register_buffer("prior", torch.full((size,), 1.0 / size))
        else:
            self.register_buffer("atoms", torch.zeros(size, dim))
            self.register_buffer("prior", torch.zeros(size))
        self.ready = mode == "learned"
        self.name = name
        self._warned = False
        self.register_load_state_dict_post_hook(lambda module, _: module._refresh_ready())

    def _refresh_ready(self) -> None:
        self.ready = self.mode == "learned" or bool(self.prior.sum() > 0)

    @torch.no_grad()
    def fit(self, features: Tensor, seed: int = 0) -> None:
        """Fit the strata by k-means on ``features[n,D]`` (no-op for learned dictionaries)."""
        if self.mode == "learned":
            return
        if features.dim() != 2 or features.shape[0] == 0 or not torch.isfinite(features).all():
            raise ValueError(f"{self.name}: k-means needs finite features [n>0, D], got {list(features.shape)}")
        size, n = self.atoms.shape[0], features.shape[0]
        k = min(size, max(1, n // MIN_PER_ATOM))
        if k < size and not self._warned:
            log.warning("%s: %d strata requested but only %d features to fit them on (%d per stratum at least); "
                        "using %d strata (raise model.dictionaries.clips or lower the dictionary size)",
                        self.name, size, n, MIN_PER_ATOM, k)
            self._warned = True
        centres, counts = kmeans(features, k, seed=seed)
        self.atoms.zero_()
        self.prior.zero_()
        self.atoms[:k].copy_(centres)
        self.prior[:k].copy_(counts / counts.sum())
        self.ready = True

    def forward(self) -> tuple[Tensor, Tensor]:
        """-> (atoms ``[M,D]``, prior ``[M]``); raises until the dictionary is fitted."""
        if not self.ready:
            raise RuntimeError(
                "confounder dictionary is not built: call model.build_dictionaries(frames_batches) on training "
                "clips first (pcmci train does this), or set dictionary=learned"
            )
        return self.atoms, self.prior


def nwgm_attention(query: Tensor, keys: Tensor, values: Tensor, prior: Tensor) -> Tensor:
    """Normalised weighted geometric mean over strata.

    ``out_n = sum_m p_m a_nm values_m / sum_m p_m a_nm`` with ``a = softmax(query keys^T / sqrt(D))``.
    query ``[B,N,D]``, keys ``[M,D]``, values ``[M,E]``, prior ``[M]`` -> ``[B,N,E]``.
    """
    attn = torch.softmax(query @ keys.t() / math.sqrt(query.shape[-1]), dim=-1)
    weighted = attn * prior
    return (weighted @ values) / weighted.sum(-1, keepdim=True).clamp_min(1e-12)
