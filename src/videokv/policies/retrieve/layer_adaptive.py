"""StreamKV retrieval: ReKV's top-k with per-layer counts set by a shared cumulative-mass threshold."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from videokv.errors import ConfigError
from videokv.policies.adaptive import streamkv_counts
from videokv.policies.retrieve.base import Catalog, LayerwiseForward, Query, Retriever


@dataclass(frozen=True)
class LayerAdaptive(Retriever):
    """Retrieve about `k` blocks per layer, more on layers whose scores are flat and fewer where peaked,
    the `recent` newest blocks inside that count.

    From StreamKV (arXiv 2511.07278). Blocks are frames (and segment summaries, and timed text here) and
    are scored as in ReKV: the bare question's mean pre-RoPE query . the block's mean un-rotated key, each
    layer with the query it computes in the retrieval forward (`layerwise`). A first forward takes `k`
    blocks per layer and records every block's score; the per-layer counts come from `streamkv_counts`
    over those scores (target ``L * k``, range [`min_k`, `max_k`]: defaults ``max(k (1 - temp), 1)`` and
    ``k (1 + temp)``, StreamKV caps at 128); a second forward takes each layer's count. A layer holding
    at most c blocks takes them all; otherwise its `recent` newest blocks plus the best ``c - recent``
    others, or only its c newest when c < `recent`. A layer sees only the blocks present there (Guidance
    keeps different frames per layer). Pinned blocks are always added.

    Parameters
    ----------
    k : int
        Mean blocks retrieved per layer (>= 1; StreamKV ``retrieve_size``: 64).
    temp : float
        How far a layer's count may move from `k`, as a fraction of `k` (>= 0; StreamKV: 0.5).
    recent : int
        The newest blocks always included, inside the count (>= 0; StreamKV's ``retrieve_local_size``: 8).
    min_k, max_k : int or None
        The per-layer range: `min_k` replaces ``max(k (1 - temp), 1)``; `max_k` caps ``k (1 + temp)``
        (StreamKV's 128).
    layerwise : bool
        True (StreamKV, ReKV): per-layer queries from the retrieval forward. False: from one forward of the
        question against the ingest context, and one pass.

    Source: ``sou1p0wer/StreamKV``: ``model/llava_onevision_streamkv.py`` ``question_answering`` (a
    retrieval-prefill forward of ``input_text['question']`` records ``layer_retrieval_score``;
    ``obtain_cdf_num`` / ``rescale_sum_match`` set ``retrieval_num``; a second forward retrieves) and
    ``model/attention/kv_cache_manager.py`` ``ContextManager._calc_block_topk`` (``retrieve_local``).
    """

    name: ClassVar[str] = "layer_adaptive"
    k: int = 64
    temp: float = 0.5
    recent: int = 8
    min_k: int | None = None
    max_k: int | None = None
    layerwise: bool = True

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
        """Per-layer counts for per-layer scores of every block (each 1-D)."""
        if not scores or min(int(s.numel()) for s in scores) == 0:
            return [0] * len(scores)
        lo, hi = self.bounds
        return streamkv_counts(scores, len(scores) * self.k, lo, hi)

    def layer_rows(self, catalog: Catalog, layer: int, scores: torch.Tensor, count: int) -> list[int]:
        """`_calc_block_topk` with ``retrieve_local``: the rows layer `layer` takes with `count` blocks."""
        pinned = set(catalog.pinned_rows())
        rows = [r for r in catalog.layer_rows(layer) if r not in pinned]  # store order: newest last
        if len(rows) <= count:
            chosen = rows
        elif count >= self.recent:
            local = rows[len(rows) - self.recent :]
            others = rows[: len(rows) - self.recent]
            chosen = local + self.top_rows(scores, others, count - self.recent)
        else:
            chosen = rows[len(rows) - count :]
        return catalog.in_stream_order(set(chosen) | pinned)

    def layerwise_query(self) -> bool:
        return self.layerwise

    def select_layerwise(self, catalog: Catalog, forward: LayerwiseForward) -> list[list[int]]:
        first: dict[int, torch.Tensor] = {}

        def prefill(layer: int, q: torch.Tensor) -> list[int]:
            first[layer] = catalog.layer_scores(layer, q)
            return self.layer_rows(catalog, layer, first[layer], self.k)

        forward(prefill)
        counts = self._counts(catalog, [first[layer] for layer in range(catalog.n_layers)])
        chosen: dict[int, list[int]] = {}

        def retrieve(layer: int, q: torch.Tensor) -> list[int]:
            chosen[layer] = self.layer_rows(catalog, layer, catalog.layer_scores(layer, q), counts[layer])
            return chosen[layer]

        forward(retrieve)
        return [chosen[layer] for layer in range(catalog.n_layers)]

    def select(self, catalog: Catalog, query: Query) -> list[list[int]]:
        scores = catalog.scores(query)
        counts = self._counts(catalog, list(scores))
        return [self.layer_rows(catalog, layer, scores[layer], c) for layer, c in enumerate(counts)]

    def _counts(self, catalog: Catalog, scores: list[torch.Tensor]) -> list[int]:
        """Budgets from each layer's scores over the blocks present there (not pinned)."""
        pinned = set(catalog.pinned_rows())
        present = [
            s[[r for r in catalog.layer_rows(layer) if r not in pinned]] for layer, s in enumerate(scores)
        ]
        return self.budgets(present)
