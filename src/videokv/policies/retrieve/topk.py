"""ReKV retrieval: the top-k blocks by the question's query · block mean key, per layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from videokv.errors import ConfigError
from videokv.policies.retrieve.base import Catalog, Query, Retriever


@dataclass(frozen=True)
class TopK(Retriever):
    """Retrieve the `k` blocks whose mean key best matches the question, independently on each layer.

    From ReKV ("Streaming Video Question-Answering with In-context Video KV-Cache Retrieval", ICLR 2025).
    A block's score on layer l is the plain inner product (fp32, not normalised) of the question's mean
    pre-RoPE query with the block's mean un-rotated key. Pinned blocks and the `recent` newest units (read
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
    """

    name: ClassVar[str] = "topk"
    k: int = 64
    per_layer: bool = True
    recent: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.k, int) or self.k < 0:
            raise ConfigError(f"TopK: k must be an int >= 0; got {self.k!r}")
        if not isinstance(self.recent, int) or self.recent < 0:
            raise ConfigError(f"TopK: recent must be an int >= 0; got {self.recent!r}")

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
