"""Retrievers: which stored blocks a question sees, per layer.

- `AllBlocks`: every block (the full-memory baseline).
- `Recent(n)`: the newest units (the sliding-window baseline).
- `TopK`: ReKV's per-layer top-k by query · mean key.
- `LayerAdaptive`: StreamKV's top-k with layer-adaptive counts.
- `Hierarchical`: MuKV's multi-granularity retrieval with context re-ranking.
- `BilevelReload`: Video-X²L's selective re-loading of lightly compressed units.
- `WithText`: any of them plus the text blocks matching the question's words (`TextMatch`; `text_k=N`).
"""

from __future__ import annotations

from videokv.policies.retrieve.all import AllBlocks
from videokv.policies.retrieve.base import Catalog, Query, Retriever
from videokv.policies.retrieve.bilevel_reload import BilevelReload
from videokv.policies.retrieve.hierarchical import Hierarchical
from videokv.policies.retrieve.layer_adaptive import LayerAdaptive
from videokv.policies.retrieve.recent import Recent
from videokv.policies.retrieve.text_match import TextMatch, WithText
from videokv.policies.retrieve.topk import TopK

__all__ = [
    "AllBlocks",
    "BilevelReload",
    "Catalog",
    "Hierarchical",
    "LayerAdaptive",
    "Query",
    "Recent",
    "Retriever",
    "TextMatch",
    "TopK",
    "WithText",
]
