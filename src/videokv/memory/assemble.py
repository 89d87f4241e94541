"""Assemble a question's context: [sinks | selected blocks in stream order], per layer, as a ContextCache.

Positions follow the PositionPolicy:
- "keep": every key keeps the rotation it was computed with; the question continues at the stream cursor.
- "compact": the selected blocks are moved next to each other (ReKV, StreamKV) so the context stays inside
  the trained length: with 1-D RoPE every kept token takes the next position; with M-RoPE a block keeps its
  internal (t, h, w) offsets and is shifted to start right after the previous block. Layers may hold
  different amounts, so each layer's blocks are right-aligned to end just before the question. Keys are
  re-rotated exactly (models/rope.py), all of a layer's blocks in one rotation; layers whose blocks move
  by the same offsets (the usual case: one selection for every layer) share the rotation angles.
"""

from __future__ import annotations

import torch

from videokv.memory.block import KVBlock
from videokv.memory.cache import ContextCache
from videokv.models.rope import angles, apply_rotation

POSITION_POLICIES = ("keep", "compact")


def compact_positions(positions: list[torch.Tensor], start: int) -> tuple[list[torch.Tensor], int]:
    """New positions for blocks placed one after another from `start`; returns (positions, next start)."""
    out = []
    for pos in positions:
        if pos.shape[1] == 0:
            out.append(pos)
            continue
        if pos.shape[0] == 1 or bool((pos == pos[:1]).all()):  # 1-D RoPE, or text under M-RoPE
            new = torch.arange(start, start + pos.shape[1], device=pos.device).expand(pos.shape[0], -1)
        else:
            new = pos - pos.min() + start
        out.append(new)
        start = int(new.max()) + 1
    return out, start


def assemble(
    sink_keys: list[torch.Tensor],
    sink_values: list[torch.Tensor],
    sink_end: int,
    selection: list[list[KVBlock]],
    policy: str,
    rotary: torch.nn.Module,
    cursor: int,
) -> tuple[ContextCache, int]:
    """The question's cache and the position the question starts at.

    sink_keys/values: per layer [1, kv_heads, n_sinks, d] (positions 0..sink_end-1). selection: per layer,
    the blocks that layer sees, in stream order. cursor: the stream's next position (for "keep").
    """
    keys, values = [], []
    if policy == "keep":
        for layer, blocks in enumerate(selection):
            keys.append(torch.cat([sink_keys[layer], *(b.keys[layer][None] for b in blocks)], dim=-2))
            values.append(torch.cat([sink_values[layer], *(b.values[layer][None] for b in blocks)], dim=-2))
        return ContextCache.from_tensors(keys, values), cursor
    if policy != "compact":
        raise ValueError(f"unknown position policy {policy!r}; choose one of {POSITION_POLICIES}")
    placed = [
        compact_positions([b.positions[layer] for b in blocks], sink_end)
        for layer, blocks in enumerate(selection)
    ]
    question_at = max(end for _, end in placed)
    last: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # (offsets, cos, sin) of a layer
    for layer, blocks in enumerate(selection):
        new_positions, end = placed[layer]
        layer_keys = [sink_keys[layer]]
        if blocks:
            shift = question_at - end  # right-align this layer's blocks
            k = torch.cat([b.keys[layer] for b in blocks], dim=-2)
            old = torch.cat([b.positions[layer].to(k.device) for b in blocks], dim=1)
            offsets = torch.cat([p.to(k.device) for p in new_positions], dim=1) + shift - old
            if last is None or not torch.equal(last[0], offsets):
                last = (offsets, *angles(rotary, offsets, k))
            layer_keys.append(apply_rotation(k, last[1], last[2])[None])
        keys.append(torch.cat(layer_keys, dim=-2))
        values.append(torch.cat([sink_values[layer], *(b.values[layer][None] for b in blocks)], dim=-2))
    return ContextCache.from_tensors(keys, values), question_at
