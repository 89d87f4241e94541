"""What a retriever sees (`Catalog`, `Query`) and the `Retriever` base class.

A retriever picks, per layer, the stored blocks a question attends to. It sees only a catalog of the memory
(one row per stored block: its representative keys and where it came from) and a summary of the question's
queries; it returns, for each layer, catalog rows sorted in stream order (by start time, then row).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from videokv.memory.catalog import LEVEL_PREFERENCE, Catalog, Query

__all__ = ["LEVEL_PREFERENCE", "Catalog", "LayerwiseForward", "Query", "Retriever"]

# forward(choose) runs one retrieval forward of the question in which each layer, before it attends, calls
# choose(layer, q) with its query summary q [D] and attends to the catalog rows choose returns
LayerwiseForward = Callable[[Callable[[int, torch.Tensor], list[int]]], None]


@dataclass(frozen=True)
class Retriever(ABC):
    """Base class of the retrievers: `select` returns, per layer, the catalog rows a question sees."""

    name: ClassVar[str] = "retriever"

    @abstractmethod
    def select(self, catalog: Catalog, query: Query) -> list[list[int]]:
        """For each layer, the catalog rows (block ids) the question sees, sorted in stream order."""

    def layerwise_query(self) -> bool:
        """True when the retriever chooses layer by layer inside the question's forward (ReKV's retrieval
        mode: a layer's query comes from hidden states that attended to the blocks the earlier layers chose);
        the engine then calls `select_layerwise` instead of `select`. False (the default): the query comes
        from one forward of the question against the ingest context."""
        return False

    def select_layerwise(self, catalog: Catalog, forward: LayerwiseForward) -> list[list[int]]:
        """For each layer, the rows it chose during `forward` (which may be run more than once: a first
        pass can set per-layer budgets, as StreamKV's retrieval prefill does)."""
        raise NotImplementedError(f"{type(self).__name__} does not retrieve layer by layer")

    @staticmethod
    def top_masked(scores: torch.Tensor, excluded: list[int], k: int) -> list[int]:
        """`top_rows` over every row but `excluded`, without a Python pass over the rows: the same rows,
        ties included (a tie at the k-th score goes to the lower rows)."""
        n = scores.shape[0]
        free = torch.ones(n, dtype=torch.bool, device=scores.device)
        if excluded:
            free[torch.tensor(excluded, dtype=torch.long, device=scores.device)] = False
        k = min(k, int(free.sum()))
        if k <= 0:
            return []
        s = scores.float().masked_fill(~free, float("-inf"))
        kth = torch.topk(s, k).values[-1]
        above = torch.nonzero((s > kth) & free).flatten()
        ties = torch.nonzero((s == kth) & free).flatten()[: k - above.numel()]  # nonzero: ascending rows
        rows = torch.cat([above, ties])
        pairs = sorted(zip((-s[rows]).tolist(), rows.tolist()))  # best first, then the lower row
        return [r for _, r in pairs]

    @staticmethod
    def top_rows(scores: torch.Tensor, candidates: list[int], k: int) -> list[int]:
        """The `k` candidate rows with the highest `scores` (a 1-D tensor over all rows; ties: lower row)."""
        if k <= 0 or not candidates:
            return []
        idx = torch.tensor(candidates, dtype=torch.long, device=scores.device)
        order = torch.argsort(-scores.float()[idx], stable=True)[:k]
        return idx[order].tolist()
