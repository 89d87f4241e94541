"""The question's retrieval query: its pre-RoPE queries and keys, per layer, captured with forward hooks.

The question is prefilled once against the ingest context (sinks + recent window), as ReKV's "retrieval
forward" does; forward hooks on each attention layer's q_proj / k_proj (a public PyTorch extension point;
no forward is replaced) record the projections before RoPE. The query of layer l is the mean over question
tokens of its queries, summed within each KV-head group, so that `q[l] @ rkey` equals ReKV's inner product
of the GQA-repeated query with the block's mean key.
"""

from __future__ import annotations

import torch

from videokv.memory.catalog import Query
from videokv.memory.layerwise import summarize_queries
from videokv.memory.projections import record_projections
from videokv.models.base import Adapter


def capture_query(adapter: Adapter, run, n_query: int | None = None) -> Query:
    """Call `run()` (a forward ending with the question) and return the Query its projections define: over
    the last `n_query` tokens (all tokens when None; earlier tokens are context, not query)."""
    with record_projections(adapter) as captured:
        run()
    kv, d = adapter.num_kv_heads, adapter.head_dim
    q_rows, k_rows = [], []
    for i in range(adapter.num_layers):
        q = captured[("q", i)][-1]  # [n, heads * d]
        q_rows.append(summarize_queries(q if n_query is None else q[-n_query:], kv, d))
        k_rows.append(captured[("k", i)][-1][-1].float())  # last question token, [kv * d]
    return Query(q=torch.stack(q_rows), last_key=torch.stack(k_rows))
