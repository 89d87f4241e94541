"""StreamKV retrieval: ReKV's top-k with per-layer counts set by a shared cumulative-mass threshold."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from videokv.errors import ConfigError
from videokv.policies.adaptive import streamkv_counts
from videokv.policies.retrieve.base import Catalog, Query, Retriever


@dataclass(frozen=True)
class LayerAdaptive(Retriever):
    """Retrieve about `k` blocks per layer, more on layers whose scores are flat and fewer where peaked,
    the `recent` newest units inside that count.

    From StreamKV (arXiv 2511.07278). Blocks are scored as in ReKV (the question's mean pre-RoPE query ·
    the block's mean un-rotated key). The per-layer counts come from `streamkv_counts` over every block's
    score: target ``L * k``, range [`min_k`, `max_k`] (defaults ``max(k (1 - temp), 1)`` and ``k (1 +
    temp)``; StreamKV also caps at 128). A layer whose count c covers the whole catalog takes every block;
    otherwise it takes the rows of the `recent` newest units plus the best ``c - len(those)`` other blocks,
    or only the c newest of those rows when c is smaller. Pinned blocks are always added.

    Parameters
    ----------
    k : int
        Mean blocks retrieved per layer (>= 1; StreamKV ``retrieve_size``: 64).
    temp : float
        How far a layer's count may move from `k`, as a fraction of `k` (>= 0; StreamKV: 0.5).
    recent : int
        The newest units always included, inside the count (>= 0; StreamKV's ``retrieve_local_size``: 8).
    min_k, max_k : int or None
        The per-layer range: `min_k` replaces ``max(k (1 - temp), 1)``; `max_k` caps ``k (1 + temp)``
        (StreamKV's 128).

    Source: ``sou1p0wer/StreamKV``: ``model/llava_onevision_streamkv.py`` ``question_answering`` (a
    retrieval-prefill pass records every block's score; ``obtain_cdf_num`` / ``rescale_sum_match`` set
    ``retrieval_num`` per layer) and ``model/attention/kv_cache_manager.py``
    ``ContextManager._calc_block_topk`` (``retrieve_local``: the newest 8 blocks plus the top
    ``retrieval_num - 8`` of the others).
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
    def bounds(self) -> tuple[float, float]:
        """The (lowest, highest) per-layer count, as StreamKV passes them to ``rescale_sum_match``."""
        lo = float(self.min_k) if self.min_k is not None else max(self.k * (1 - self.temp), 1.0)
        hi = self.k * (1 + self.temp)
        if self.max_k is not None:
            hi = min(hi, float(self.max_k))
        return lo, hi

    def budgets(self, scores: list[torch.Tensor]) -> list[int]:
        """Per-layer counts for per-layer scores of every block (each 1-D, all of the same length)."""
        n = int(scores[0].numel()) if scores else 0
        if n == 0:
            return [0] * len(scores)
        lo, hi = self.bounds
        return streamkv_counts(scores, len(scores) * self.k, lo, hi)

    def select(self, catalog: Catalog, query: Query) -> list[list[int]]:
        recent_units = catalog.newest_units(self.recent)
        local = catalog.in_stream_order(catalog.level_rows(recent_units))
        pinned = catalog.pinned_rows()
        taken = set(local) | set(pinned) | set(catalog.unit_rows(recent_units))
        candidates = [r for r in range(catalog.n) if r not in taken]
        scores = catalog.scores(query)
        counts = self.budgets([scores[layer] for layer in range(catalog.n_layers)])
        out = []
        for layer, count in enumerate(counts):
            if catalog.n <= count:
                rows = list(range(catalog.n))
            elif count >= len(local):
                rows = local + self.top_rows(scores[layer], candidates, count - len(local))
            else:
                rows = local[len(local) - count :]
            out.append(catalog.in_stream_order(set(rows) | set(pinned)))
        return out
