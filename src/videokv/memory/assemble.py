"""Assemble a question's context: [sinks | selected blocks in stream order], per layer, as a ContextCache.

Positions follow the PositionPolicy:
- "keep": every key keeps the rotation it was computed with; the question continues at the stream cursor.
- "length": every key keeps its rotation, and the question starts at the context's length (sinks + the
  assembled tokens; the longest layer's), as Video-XL-2's bi-level decoding places it: the question stays
  inside the trained length however long the stream, at the price of a gap between its positions and the
  stored keys'.
- "compact": the selected blocks are moved next to each other (ReKV, StreamKV) so the context stays inside
  the trained length: with 1-D RoPE every kept token takes the next position; with M-RoPE a block keeps its
  internal (t, h, w) offsets and is shifted to start right after the previous block. Layers may hold
  different amounts, so each layer's blocks are right-aligned to end just before the question. Keys are
  re-rotated exactly (models/rope.py), all of a layer's blocks in one rotation; layers whose blocks move
  by the same offsets (the usual case: one selection for every layer) share the rotation angles.

Blocks kept per KV head (`KVBlock.per_head`: each head its own tokens, every head the same count) are
assembled head by head: under "compact" each KV head of a layer is a sequence of its own, compacted by the
same rule and right-aligned to end just before the question (with 1-D RoPE every head gets the same
positions, since every head keeps the same count; with M-RoPE a frame's offsets are those of the tokens the
head kept). A layer that mixes per-head and shared blocks (text is kept whole) treats the shared ones as
the same tokens on every head.
"""

from __future__ import annotations

import dataclasses

import torch

from videokv.errors import VideoKVError
from videokv.memory.block import KVBlock, head_positions, select_tokens
from videokv.memory.cache import ContextCache
from videokv.models.rope import angles, apply_rotation

POSITION_POLICIES = ("keep", "compact", "length")


def distinct_tokens(blocks: list[KVBlock], layer: int) -> list[KVBlock]:
    """`blocks` with every stream token at most once on `layer`: where blocks of one unit overlap (MuKV's
    patch, frame and segment blocks keep tokens of the same frames), a later block drops the tokens an
    earlier one already holds (a token is known by its position in its unit, `KVBlock.unit_positions`: a
    block prefilled apart from its unit, MuKV's, is stored at other positions). Blocks of distinct units
    pass untouched (the usual case, at no cost). Where a unit has a per-head block on `layer`, tokens are
    told apart head by head; a block that would then keep different counts on different heads cannot be
    stored as one tensor and raises VideoKVError (no compressor of videokv makes overlapping per-head
    blocks)."""
    units = [b.unit for b in blocks]
    if len(set(units)) == len(units):
        return blocks
    per_head = [b.keys[layer].shape[0] for b in blocks if b.per_head(layer) and units.count(b.unit) > 1]
    heads = per_head[0] if per_head else 1
    seen: dict[int, list[set[tuple[int, ...]]]] = {}
    out = []
    for b in blocks:
        if units.count(b.unit) == 1:
            out.append(b)
            continue
        have = seen.setdefault(b.unit, [set() for _ in range(heads)])
        pos = head_positions(b.unit_positions(layer), heads)
        fresh = []
        for h in range(heads):
            cols = [tuple(c) for c in pos[h].T.tolist()]
            fresh.append([i for i, c in enumerate(cols) if c not in have[h]])
            have[h].update(cols)
        n = pos.shape[-1]
        if all(len(f) == n for f in fresh):
            out.append(b)
            continue
        if not any(fresh):
            continue
        if len({len(f) for f in fresh}) != 1:
            raise VideoKVError(
                f"block {b.index} shares tokens with another block of unit {b.unit} on layer {layer}, and "
                "its KV heads would keep different numbers of tokens: per-head selection cannot be combined "
                "with overlapping blocks of one unit; set the compressor's per_head=false"
            )
        device = b.keys[layer].device
        if all(f == fresh[0] for f in fresh) and not b.per_head(layer):
            idx = torch.tensor(fresh[0], dtype=torch.long, device=device)
        else:
            idx = torch.tensor(fresh, dtype=torch.long, device=device)
        keys, values, positions = list(b.keys), list(b.values), list(b.positions)
        keys[layer], values[layer], positions[layer] = select_tokens(
            b.keys[layer], b.values[layer], b.positions[layer], idx
        )
        out.append(dataclasses.replace(b, keys=keys, values=values, positions=positions))
    return out


def compact_positions(positions: list[torch.Tensor], start: int) -> tuple[list[torch.Tensor], int]:
    """New positions for blocks ([P, n] each) placed one after another from `start`; returns (positions,
    next start)."""
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


def compact_layer(positions: list[torch.Tensor], start: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """`compact_positions` of one layer's blocks, head by head where a block is per head: (the blocks' new
    positions, the next start) where the next start is a 0-d tensor, or [kv_heads, 1, 1] (one per head, and
    the new positions [kv_heads, P, n]) when any block is per head."""
    heads = next((int(p.shape[0]) for p in positions if p.dim() == 3), None)
    if heads is None:
        new, end = compact_positions(positions, start)
        return new, torch.tensor(end)
    full = [head_positions(p, heads) for p in positions]
    per_head = [compact_positions([p[h] for p in full], start) for h in range(heads)]
    new = [torch.stack([placed[i] for placed, _ in per_head]) for i in range(len(positions))]
    return new, torch.tensor([end for _, end in per_head]).view(heads, 1, 1)


def _old_positions(blocks: list[KVBlock], layer: int, like: torch.Tensor) -> torch.Tensor:
    """The blocks' stored positions on `layer`, end to end, on `like`'s device (per head if any block is)."""
    pos = [b.positions[layer].to(like.device) for b in blocks]
    heads = next((int(p.shape[0]) for p in pos if p.dim() == 3), None)
    if heads is not None:
        pos = [head_positions(p, heads) for p in pos]
    return torch.cat(pos, dim=-1)


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
    selection = [distinct_tokens(blocks, layer) for layer, blocks in enumerate(selection)]
    keys, values = [], []
    if policy in ("keep", "length"):
        for layer, blocks in enumerate(selection):
            keys.append(torch.cat([sink_keys[layer], *(b.keys[layer][None] for b in blocks)], dim=-2))
            values.append(torch.cat([sink_values[layer], *(b.values[layer][None] for b in blocks)], dim=-2))
        at = cursor if policy == "keep" else max(k.shape[-2] for k in keys)
        return ContextCache.from_tensors(keys, values), at
    if policy != "compact":
        raise ValueError(f"unknown position policy {policy!r}; choose one of {POSITION_POLICIES}")
    placed = [
        compact_layer([b.positions[layer] for b in blocks], sink_end)
        for layer, blocks in enumerate(selection)
    ]
    question_at = max(int(end.max()) for _, end in placed)
    last: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # (offsets, cos, sin) of a layer
    for layer, blocks in enumerate(selection):
        new_positions, end = placed[layer]
        layer_keys = [sink_keys[layer]]
        if blocks:
            k = torch.cat([b.keys[layer] for b in blocks], dim=-2)
            shift = question_at - end.to(k.device)  # right-align this layer's blocks (each head's)
            old = _old_positions(blocks, layer, k)
            offsets = torch.cat([p.to(k.device) for p in new_positions], dim=-1) + shift - old
            if last is None or not torch.equal(last[0], offsets):
                last = (offsets, *angles(rotary, offsets, k))
            layer_keys.append(apply_rotation(k, last[1], last[2])[None])
        keys.append(torch.cat(layer_keys, dim=-2))
        values.append(torch.cat([sink_values[layer], *(b.values[layer][None] for b in blocks)], dim=-2))
    return ContextCache.from_tensors(keys, values), question_at


def assemble_layer(
    sink_keys: torch.Tensor,
    sink_values: torch.Tensor,
    sink_end: int,
    blocks: list[KVBlock],
    layer: int,
    policy: str,
    rotary: torch.nn.Module,
    cursor: int,
    rows: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's [sinks | blocks] for a question that starts at `cursor` (the retrieval forward, where each
    layer assembles its own context as it runs).

    "keep": keys as stored; the question is at the stream cursor. "compact": the sinks at 0..sink_end-1 and
    the blocks right after them, the question right after the blocks, as ReKV rotates its retrieved context;
    since the question's positions are fixed before the forward (`cursor`), the whole context is shifted by
    the same offset instead (RoPE sees only relative positions, per row for M-RoPE; exact). rows: P, the rows
    of the question's position ids (3 for M-RoPE)."""
    blocks = distinct_tokens(blocks, layer)
    k = torch.cat([sink_keys, *(b.keys[layer][None] for b in blocks)], dim=-2)
    v = torch.cat([sink_values, *(b.values[layer][None] for b in blocks)], dim=-2)
    if policy == "keep":
        return k, v
    if policy == "length":
        raise ValueError(
            "positions='length' places the question after the whole assembled context, which a "
            "layer-by-layer retrieval forward does not know beforehand; use 'keep' or 'compact' with a "
            "layerwise retriever"
        )
    if policy != "compact":
        raise ValueError(f"unknown position policy {policy!r}; choose one of {POSITION_POLICIES}")
    placed, end = compact_layer([b.positions[layer] for b in blocks], sink_end)
    shift = cursor - end.to(k.device)  # per head where a block is per head (each head's blocks end there)
    n_sinks = sink_keys.shape[-2]
    offsets = [torch.zeros((rows, n_sinks), dtype=torch.long, device=k.device) + shift]
    if blocks:
        new = torch.cat([p.to(k.device) for p in placed], dim=-1)
        offsets.append(new + shift - _old_positions(blocks, layer, k))
    offset = torch.cat(offsets, dim=-1)
    if not bool((offset == 0).all()):
        k = apply_rotation(k[0], *angles(rotary, offset, k))[None]
    return k, v
