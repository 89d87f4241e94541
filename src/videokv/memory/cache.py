"""A transformers `Cache` whose layers each hold their own context: the working memory of one forward.

Each `ContextLayer` holds the K/V the next forward attends to (for that layer; layers may differ in length)
and records the K/V of the tokens the last forward added, which the engine turns into memory blocks.
Updates never write into an existing tensor (they concatenate), so a cache can be forked in O(1) and a
snapshot of its tensors is a consistent rollback point.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


class ContextLayer(CacheLayerMixin):
    """One layer's context: keys/values [1, kv_heads, n, head_dim], already rotated at their positions."""

    def __init__(self, keys: torch.Tensor | None = None, values: torch.Tensor | None = None):
        super().__init__()
        self.keys, self.values = keys, values
        self.is_initialized = keys is not None
        self.new_keys: torch.Tensor | None = None
        self.new_values: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.keys = key_states[:, :, :0]
        self.values = value_states[:, :, :0]
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.new_keys, self.new_values = key_states, value_states
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return 0 if self.keys is None else int(self.keys.shape[-2])

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.keys = self.values = None
        self.is_initialized = False

    def keep(self, index: torch.Tensor) -> None:
        """Keep only the tokens at `index` (a 1-D index tensor), in that order."""
        self.keys = self.keys.index_select(-2, index)
        self.values = self.values.index_select(-2, index)

    @property
    def nbytes(self) -> int:
        if self.keys is None:
            return 0
        return self.keys.numel() * self.keys.element_size() + self.values.numel() * self.values.element_size()


class ContextCache(Cache):
    """The per-forward cache of videokv: one `ContextLayer` per decoder layer."""

    def __init__(self, num_layers: int, layers: list[ContextLayer] | None = None):
        super().__init__(layers=layers if layers is not None else [ContextLayer() for _ in range(num_layers)])

    @classmethod
    def from_tensors(cls, keys: list[torch.Tensor], values: list[torch.Tensor]) -> ContextCache:
        return cls(len(keys), [ContextLayer(k, v) for k, v in zip(keys, values)])

    def fork(self) -> ContextCache:
        """A cache sharing this one's tensors; updating the fork never changes this cache."""
        return ContextCache(
            len(self.layers), [ContextLayer(layer.keys, layer.values) for layer in self.layers]
        )

    def lengths(self) -> list[int]:
        return [layer.get_seq_length() for layer in self.layers]

    def new_kv(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The K/V the last forward added, per layer."""
        return [la.new_keys for la in self.layers], [la.new_values for la in self.layers]

    def keep(self, index: torch.Tensor) -> None:
        for layer in self.layers:
            layer.keep(index)

    @property
    def nbytes(self) -> int:
        return sum(layer.nbytes for layer in self.layers)
