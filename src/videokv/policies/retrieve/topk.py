"""ReKV retrieval: the top-k blocks by the question's query · block mean key, per layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from videokv.errors import ConfigError
from videokv.policies.retrieve.base import Catalog, LayerwiseForward, Query, Retriever


@dataclass(frozen=True)
class TopK(Retriever):
    """Retrieve the `k` blocks whose mean key best matches the question, independently on each layer.

    From ReKV ("Streaming Video Question-Answering with In-context Video KV-Cache Retrieval", ICLR 2025).
    A block's score on layer l is the plain inner product (fp32, not normalised) of the question's mean
    pre-RoPE query with the block's mean un-rotated key. The query is the bare question (no template, no
    options), and with `layerwise` each layer takes it from the retrieval forward in which the earlier
    layers already attended to the blocks they chose (ReKV ``question_answering``: ``set_retrieval()`` and a
    forward of ``input_text['question']``; ``kv_cache_manager.py`` ``_calc_block_topk``).
    Pinned blocks and the `recent` newest units (read
    at one level, as `AllBlocks`) are always included; `k` counts the blocks chosen beyond them. Text
    blocks compete like any other block.

    Parameters
    ----------
    k : int
        Blocks retrieved per layer beyond the pinned and recent ones (>= 0; ReKV: 64 frames).
    per_layer : bool
        True: each layer picks its own blocks (ReKV). False: one pick from the score averaged over layers,
        the same blocks on every layer.
    recent : int
        The newest units always included (>= 0; StreamKV's `retrieve_local` uses 8).
    layerwise : bool
        True (ReKV): each layer scores with the query it computes in the retrieval forward, after the
        earlier layers attended to their chosen blocks. False: every layer's query comes from one forward of
        the question against the ingest context (sinks + recent window). Needs `per_layer`.
    """

    name: ClassVar[str] = "topk"
    k: int = 64
    per_layer: bool = True
    recent: int = 0
    layerwise: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.k, int) or self.k < 0:
            raise ConfigError(f"TopK: k must be an int >= 0; got {self.k!r}")
        if not isinstance(self.recent, int) or self.recent < 0:
            raise ConfigError(f"TopK: recent must be an int >= 0; got {self.recent!r}")

    def layerwise_query(self) -> bool:
        return self.layerwise and self.per_layer

    def _always(self, catalog: Catalog) -> tuple[list[int], list[int]]:
        """(rows always included, rows excluded from the top-k: those and the rest of the recent units)."""
        recent_units = catalog.newest_units(self.recent)
        always = catalog.level_rows(recent_units) + catalog.pinned_rows()
        return always, sorted(set(always) | set(catalog.unit_rows(recent_units)))

    def select_layerwise(self, catalog: Catalog, forward: LayerwiseForward) -> list[list[int]]:
        always, excluded = self._always(catalog)
        chosen: dict[int, list[int]] = {}

        def choose(layer: int, q: torch.Tensor) -> list[int]:
            top = self.top_masked(catalog.layer_scores(layer, q), excluded, self.k)
            chosen[layer] = catalog.in_stream_order(always + top)
            return chosen[layer]

        forward(choose)
        return [chosen[layer] for layer in range(catalog.n_layers)]

    def select(self, catalog: Catalog, query: Query) -> list[list[int]]:
        recent_units = catalog.newest_units(self.recent)
        always = catalog.level_rows(recent_units) + catalog.pinned_rows()
        taken = set(always) | set(catalog.unit_rows(recent_units))
        if self.per_layer and catalog.search is not None and catalog.n > self.k + len(taken):
            # a fast index: the best k + |taken| rows per layer always hold the best k candidates
            found = catalog.search(query.q, self.k + len(taken))
            return [
                catalog.in_stream_order(always + [r for r in rows if r not in taken][: self.k])
                for rows in found
            ]
        excluded = sorted(taken)
        scores = catalog.scores(query)
        if not self.per_layer:
            rows = catalog.in_stream_order(always + self.top_masked(scores.mean(0), excluded, self.k))
            return [list(rows) for _ in range(catalog.n_layers)]
        return [
            catalog.in_stream_order(always + self.top_masked(scores[layer], excluded, self.k))
            for layer in range(catalog.n_layers)
        ]
