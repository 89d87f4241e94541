"""Evenly spaced units: the query-agnostic uniform-sampling baseline at a fixed budget."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from videokv.errors import ConfigError
from videokv.policies.retrieve.base import Catalog, Query, Retriever


@dataclass(frozen=True)
class UniformSample(Retriever):
    """Give the question `k` visual units evenly spaced over the stream (every (N/k)-th one), plus every
    text block and pinned block, the same on every layer, whatever the question.

    This is the "uniform sampling" baseline the ReKV (ICLR 2025), StreamKV (arXiv 2511.07278) and MuKV
    (CVPR 2026) papers compare against: the same number of frames as the retrieval method, chosen without
    looking at the question.

    Parameters
    ----------
    k : int
        Visual units to keep (>= 1); with k >= the number of units, every unit.
    """

    name: ClassVar[str] = "uniform"
    k: int = 64

    def __post_init__(self) -> None:
        if not isinstance(self.k, int) or self.k < 1:
            raise ConfigError(f"UniformSample: k must be an int >= 1; got {self.k!r}")

    def select(self, catalog: Catalog, query: Query) -> list[list[int]]:
        pinned = catalog.pinned.tolist()
        visual = sorted(
            {
                u
                for u, kind, pin in zip(catalog.units.tolist(), catalog.kinds, pinned)
                if kind != "text" and not pin
            }
        )
        if len(visual) > self.k:
            picks = torch.linspace(0, len(visual) - 1, self.k).round().long().tolist()
            visual = [visual[i] for i in sorted(set(picks))]
        rows = catalog.level_rows(visual)
        rows += [r for r, kind in enumerate(catalog.kinds) if kind == "text"] + catalog.pinned_rows()
        rows = catalog.in_stream_order(rows)
        return [list(rows) for _ in range(catalog.n_layers)]
