"""The layer-wise retrieval forward (ReKV's "retrieval mode"): one forward of the question in which every
layer, just before it attends, chooses its own blocks with the query it has just computed.

So layer l's query comes from hidden states that attended to the blocks layers 0..l-1 chose, as in ReKV's
`question_answering` (``set_retrieval()``, then a forward of the bare question over the cache manager,
whose `get_retrieved_kv` picks each layer's blocks from that layer's ``h_q``). It is built on public
extension points only: a forward hook on each layer's ``q_proj`` records the pre-RoPE queries, and a
`ContextLayer` whose context is chosen lazily, on the layer's first `update` (which transformers calls right
after the q/k/v projections of that layer), supplies [sinks | chosen blocks] to the layer's attention.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from videokv.memory.cache import ContextCache, ContextLayer
from videokv.memory.projections import record_projections
from videokv.models.base import Adapter

# choose(layer, q) -> (keys, values) [1, kv_heads, n, d]: the context this layer's question attends to,
# where q [kv_heads * head_dim] is the layer's query summary (see `summarize_queries`)
Choose = Callable[[int, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def summarize_queries(q: torch.Tensor, kv_heads: int, head_dim: int) -> torch.Tensor:
    """[n, heads * d] pre-RoPE queries -> [kv_heads * d]: the mean over tokens, summed within each KV-head
    group, so that ``summary @ mean_key`` equals ReKV's inner product of the mean query (all heads) with the
    GQA-repeated mean key of a block."""
    n = q.shape[0]
    return q.float().view(n, kv_heads, -1, head_dim).sum(2).mean(0).reshape(kv_heads * head_dim)


class ChoosingLayer(ContextLayer):
    """A context layer that asks `choose` for its context the first time the layer updates."""

    def __init__(self, layer: int, choose: Callable[[int], tuple[torch.Tensor, torch.Tensor]]):
        super().__init__()
        self.layer, self.choose = layer, choose

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.keys, self.values = self.choose(self.layer)
            self.is_initialized = True
        return super().update(key_states, value_states, *args, **kwargs)


def layerwise_forward(
    adapter: Adapter, embeds: torch.Tensor, positions: torch.Tensor, n_query: int, choose: Choose
) -> None:
    """Forward `embeds` at `positions` [P, n] (the question's last `n_query` tokens define the query; tokens
    before them, if any, are context the question sees after the memory); each layer's context comes from
    ``choose(layer, query_summary)``. Nothing is kept: the caller records what `choose` chose."""

    def at_layer(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        q = summarize_queries(captured[("q", i)][-1][-n_query:], adapter.num_kv_heads, adapter.head_dim)
        return choose(i, q)

    cache = ContextCache(adapter.num_layers, [ChoosingLayer(i, at_layer) for i in range(adapter.num_layers)])
    with record_projections(adapter, ("q",)) as captured:
        adapter.forward(embeds, positions, cache, logits="none")
