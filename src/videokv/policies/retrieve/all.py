"""Every stored block: the no-retrieval baseline (full memory, one level per unit)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from videokv.policies.retrieve.base import Catalog, Query, Retriever


@dataclass(frozen=True)
class AllBlocks(Retriever):
    """Give the question every stored block, on every layer.

    The baseline every retrieval method is measured against (the whole memory in context, as a plain
    long-context model would see it). When a unit is stored at several levels, one level is read per unit,
    preferring "full", then "L", then "H" (otherwise the unit's first level). Text and pinned blocks are
    always included.
    """

    name: ClassVar[str] = "all"

    def select(self, catalog: Catalog, query: Query) -> list[list[int]]:
        rows = catalog.in_stream_order(catalog.level_rows() + catalog.pinned_rows())
        return [list(rows) for _ in range(catalog.n_layers)]
