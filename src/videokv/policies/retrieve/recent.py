"""The newest units only: a sliding window over the memory (the streaming baseline)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from videokv.errors import ConfigError
from videokv.policies.retrieve.base import Catalog, Query, Retriever


@dataclass(frozen=True)
class Recent(Retriever):
    """Give the question the `n` newest ingest units (plus pinned blocks), the same on every layer.

    The sliding-window baseline of ReKV ("Streaming Video Question-Answering with In-context Video KV-Cache
    Retrieval", ICLR 2025) and StreamKV (arXiv 2511.07278), whose `retrieve_local` always adds the newest
    blocks. A unit stored at several levels is read at one ("full" > "L" > "H").

    Parameters
    ----------
    n : int
        How many of the newest units to include (>= 0).
    """

    name: ClassVar[str] = "recent"
    n: int = 8

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or self.n < 0:
            raise ConfigError(f"Recent: n must be an int >= 0; got {self.n!r}")

    def select(self, catalog: Catalog, query: Query) -> list[list[int]]:
        rows = catalog.level_rows(catalog.newest_units(self.n)) + catalog.pinned_rows()
        rows = catalog.in_stream_order(rows)
        return [list(rows) for _ in range(catalog.n_layers)]
