"""StreamKV retrieval: ReKV's top-k with per-layer counts set by a shared cumulative-mass threshold."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from videokv.errors import ConfigError
from videokv.policies.adaptive import adaptive_counts
from videokv.policies.retrieve.base import Catalog, Query, Retriever


@dataclass(frozen=True)
class LayerAdaptive(Retriever):
    """Retrieve about `k` blocks per layer, more on layers whose scores are flat and fewer where peaked.

    From StreamKV (arXiv 2511.07278). Blocks are scored as in ReKV (the question's mean pre-RoPE query ·
    the block's mean un-rotated key). The per-layer counts come from `adaptive_counts`: every layer takes
    the fewest top blocks whose softmaxed (z-normalised) score mass reaches one threshold shared by all
    layers, chosen so that the counts add up to about ``L * k``, rescaled into [k (1 - temp), k (1 + temp)]
    and clamped to [`min_k`, `max_k`]. The `recent` newest units and pinned blocks are always included;
    `k` counts the blocks chosen beyond them.

    Parameters
    ----------
    k : int
        Mean blocks retrieved per layer (>= 1; StreamKV: 64).
    temp : float
        How far a layer's count may move from `k`, as a fraction of `k` (>= 0; StreamKV: 0.5).
    recent : int
        The newest units always included (>= 0; StreamKV's `retrieve_local`: 8).
    min_k, max_k : int or None
        Clamp of the per-layer count; None means ``k (1 - temp)`` and ``k (1 + temp)`` (StreamKV also caps
        at 128).
    """

    name: ClassVar[str] = "layer_adaptive"
    k: int = 64
    temp: float = 0.5
    recent: int = 8
    min_k: int | None = None
    max_k: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.k, int) or self.k < 1:
            raise ConfigError(f"LayerAdaptive: k must be an int >= 1; got {self.k!r}")
        if not self.temp >= 0:
            raise ConfigError(f"LayerAdaptive: temp must be >= 0; got {self.temp!r}")
        if not isinstance(self.recent, int) or self.recent < 0:
            raise ConfigError(f"LayerAdaptive: recent must be an int >= 0; got {self.recent!r}")
        for what, v in (("min_k", self.min_k), ("max_k", self.max_k)):
            if v is not None and (not isinstance(v, int) or v < 0):
                raise ConfigError(f"LayerAdaptive: {what} must be None or an int >= 0; got {v!r}")
        lo, hi = self.bounds
        if lo > hi:
            raise ConfigError(f"LayerAdaptive: the count range is empty (min_k {lo} > max_k {hi})")

    @property
    def bounds(self) -> tuple[int, int]:
        """The (lowest, highest) per-layer count."""
        lo = self.min_k if self.min_k is not None else max(0, math.ceil(self.k * (1 - self.temp) - 1e-9))
        hi = self.max_k if self.max_k is not None else math.floor(self.k * (1 + self.temp) + 1e-9)
        return lo, hi

    def budgets(self, scores: list[torch.Tensor]) -> list[int]:
        """Per-layer counts for per-layer candidate scores (each 1-D, all of the same length)."""
        n = int(scores[0].numel()) if scores else 0
        if n == 0:
            return [0] * len(scores)
        lo, hi = self.bounds
        return [min(n, max(lo, min(hi, c))) for c in adaptive_counts(scores, self.k, self.temp)]

    def select(self, catalog: Catalog, query: Query) -> list[list[int]]:
        recent_units = catalog.newest_units(self.recent)
        always = catalog.level_rows(recent_units) + catalog.pinned_rows()
        taken = set(always) | set(catalog.unit_rows(recent_units))
        candidates = [r for r in range(catalog.n) if r not in taken]
        scores = catalog.scores(query)
        idx = torch.tensor(candidates, dtype=torch.long)
        counts = self.budgets([scores[layer, idx] for layer in range(catalog.n_layers)])
        return [
            catalog.in_stream_order(always + self.top_rows(scores[layer], candidates, counts[layer]))
            for layer in range(catalog.n_layers)
        ]
