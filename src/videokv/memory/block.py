"""KVBlock: one unit of memory (a frame, a segment, a patch, a text event) with its per-layer K/V.

Keys are stored as the attention layers produced them: rotated at the positions in `positions`. Layers may
keep different tokens (a per-layer compressor), so every per-layer field is a list over layers; the KV heads
of a layer may keep different tokens too (a per-head compressor, kvpress-style), every head the same count,
and the layer's positions then have a leading head axis. `rkey` is the retrieval key: per layer, the mean
of the block's *un-rotated* keys, flattened over KV heads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class KVBlock:
    """A memory block.

    index: the block's id in its session (unique, increasing with stream order; versions of one unit at
    several levels share `unit`). kind: "frame", "segment", "patch", "text", "summary". level: "full",
    "L"/"H" (bi-level), or a granularity tag. keys/values: per layer [kv_heads, n_l, head_dim]. positions:
    per layer [P, n_l] (P = 3 for M-RoPE) when every KV head holds the same tokens, or [kv_heads, P, n_l]
    when each head keeps its own (per-head selection: row h of keys/values holds the tokens at
    positions[h], each head the same count n_l, in stream order); a block may mix the two over layers.
    Positions are bookkeeping (not in `nbytes`). rkey: [layers, kv_heads * head_dim] (float32). origin:
    what to add to `positions` to get the tokens' positions in their unit (0 but for a block prefilled
    apart from its unit, right after the sinks: MuKV's frame and patch blocks); `unit_positions` is what
    tells the same stream token in two blocks of one unit.
    """

    index: int
    unit: int
    kind: str
    t0: float
    t1: float
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    positions: list[torch.Tensor]
    rkey: torch.Tensor
    level: str = "full"
    text: str = ""
    pinned: bool = False  # never evicted from retrieval (e.g. segment summaries)
    meta: dict = field(default_factory=dict)
    origin: int = 0

    def unit_positions(self, layer: int) -> torch.Tensor:
        """The tokens' positions ([P, n_l] or per head [kv_heads, P, n_l]) on `layer` in their unit's layout
        (`positions` + `origin`)."""
        return self.positions[layer] + self.origin if self.origin else self.positions[layer]

    def per_head(self, layer: int) -> bool:
        """Whether the KV heads of `layer` keep their own tokens (positions [kv_heads, P, n_l])."""
        return self.positions[layer].dim() == 3

    @property
    def num_layers(self) -> int:
        return len(self.keys)

    def tokens(self, layer: int = 0) -> int:
        return int(self.keys[layer].shape[-2])

    @property
    def nbytes(self) -> int:
        """Bytes of K/V held (positions and retrieval keys are bookkeeping, counted separately)."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    @property
    def device(self) -> torch.device:
        return self.keys[0].device

    def to(self, device: torch.device | str, non_blocking: bool = False, pin: bool = False) -> KVBlock:
        """A copy of the block's K/V on `device` (pinned host memory when `pin` and CUDA is available)."""

        pinned = pin and torch.device(device).type == "cpu" and torch.cuda.is_available()

        def move(t: torch.Tensor) -> torch.Tensor:
            if not pinned:
                return t.to(device, non_blocking=non_blocking)
            if t.device.type == "cpu" and t.is_pinned():
                return t
            # one copy straight into page-locked memory (not a pageable copy, then a pinned one)
            return torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=True).copy_(t)

        return KVBlock(
            self.index,
            self.unit,
            self.kind,
            self.t0,
            self.t1,
            [move(k) for k in self.keys],
            [move(v) for v in self.values],
            self.positions,
            self.rkey,
            self.level,
            self.text,
            self.pinned,
            dict(self.meta),
            self.origin,
        )


def head_positions(positions: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """Positions as per-head positions [kv_heads, P, n]: per-head ones as they are, shared ones [P, n]
    repeated for every head."""
    return positions if positions.dim() == 3 else positions.expand(kv_heads, -1, -1)


def select_tokens(
    keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor, index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keys/values [kv_heads, n, d] and their positions ([P, n] or [kv_heads, P, n]) at the tokens `index`:
    1-D [k] (the same tokens for every head) or per head [kv_heads, k] (row h: the tokens head h keeps; the
    positions come out per head)."""
    if index.dim() == 1:
        i = index.to(keys.device)
        return (
            keys.index_select(1, i),
            values.index_select(1, i),
            positions.index_select(-1, i.to(positions.device)),
        )
    heads = index.shape[0]
    i = index.to(keys.device)[..., None]
    pos = head_positions(positions, heads)
    rows = index.to(pos.device)[:, None, :].expand(-1, pos.shape[1], -1)
    return (
        keys.gather(1, i.expand(-1, -1, keys.shape[-1])),
        values.gather(1, i.to(values.device).expand(-1, -1, values.shape[-1])),
        pos.gather(2, rows),
    )
