"""Video-X²L selective re-loading: the most relevant units at the low-compression level, the rest high."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from videokv.errors import ConfigError
from videokv.policies.retrieve.base import Catalog, Query, Retriever


@dataclass(frozen=True)
class BilevelReload(Retriever):
    """Read the `k_low` most relevant units at level "L" (light compression) and every other unit at "H".

    From Video-X²L (arXiv 2506.21184): every unit is stored twice, lightly ("L") and heavily ("H")
    compressed; at question time the relevant units are reloaded at "L" and the rest read at "H", merged in
    stream order. Video-X²L scores relevance with an external oracle; here it is done online from the
    question: a unit's relevance is the ReKV score (question query · mean key) of its "L" block(s),
    averaged over layers. Units stored at one level only are read at that level and do not compete; text
    and pinned blocks are always included. With `keep_ends` the stream's first and last bi-level units are
    read at "L" as well, besides the `k_low` most relevant, as Video-XL-2's bi-level decoding always
    decodes blocks 0 (its system prompt: videokv's sinks), 1 and the last at full KV
    (VectorSpaceLab/Video-XL, ``Video-XL-2/eval/lvu/w_chunk_bilevel``, ``llava_qwen.py``:
    ``indices = [0, 1, len(blocks_positions) - 1] + gt_block_idx``).

    Parameters
    ----------
    k_low : int
        Units read at level "L" (>= 0).
    per_layer : bool
        False: one choice from the layer-averaged relevance, the same on every layer. True: each layer
        ranks the units by its own score.
    keep_ends : bool
        Also read the first and the last bi-level unit at "L" (Video-XL-2; off: they compete like the rest).
    """

    name: ClassVar[str] = "bilevel_reload"
    k_low: int = 4
    per_layer: bool = False
    keep_ends: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.k_low, int) or self.k_low < 0:
            raise ConfigError(f"BilevelReload: k_low must be an int >= 0; got {self.k_low!r}")
        if not isinstance(self.keep_ends, bool):
            raise ConfigError(f"BilevelReload: keep_ends must be true or false; got {self.keep_ends!r}")

    def select(self, catalog: Catalog, query: Query) -> list[list[int]]:
        pinned = catalog.pinned_rows()
        pin = catalog.pinned.bool().tolist()
        low: dict[int, list[int]] = {}  # unit -> its "L" rows
        for r, u in enumerate(catalog.units.tolist()):
            if catalog.levels[r] == "L" and catalog.kinds[r] != "text" and not pin[r]:
                low.setdefault(u, []).append(r)
        units = sorted(low)
        scores = catalog.scores(query)  # [L, N]
        rel = torch.stack([scores[:, low[u]].mean(1) for u in units], 1) if units else None  # [L, U]

        def rows_for(relevance: torch.Tensor | None) -> list[int]:
            top: set[int] = {units[0], units[-1]} if self.keep_ends and units else set()
            if relevance is not None:
                top |= {units[i] for i in self.top_rows(relevance, list(range(len(units))), self.k_low)}
            prefer = {u: "L" if u in top else "H" for u in units}
            return catalog.in_stream_order(catalog.level_rows(prefer=prefer) + pinned)

        if not self.per_layer:
            rows = rows_for(None if rel is None else rel.mean(0))
            return [list(rows) for _ in range(catalog.n_layers)]
        return [rows_for(None if rel is None else rel[layer]) for layer in range(catalog.n_layers)]
