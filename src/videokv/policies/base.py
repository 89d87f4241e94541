"""The policy protocols. Each policy is a small frozen dataclass in its own file; a preset combines them.

The engine calls them in this order (see engine.py):

- `Segmenter.push(piece)` for every frame/text piece (embedded, positioned, not yet forwarded); it returns
  the units that are complete. A unit is a list of pieces forwarded together; its frame pieces become the
  unit's visual blocks, each text piece its own text block.
- `IngestPolicy` decides which cached tokens a unit attends to while it is prefilled.
- `Compressor.compress(unit)` turns a prefilled unit into `BlockDraft`s (K/V kept per layer, at a level).
- `Retriever.select(query)` picks, per layer, which stored blocks a question sees.

Shapes: K/V per layer are [kv_heads, n, head_dim], rotated at `positions` [P, n] (P = 3 for M-RoPE).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from videokv.errors import ConfigError
from videokv.models.base import Piece


@dataclass
class Unit:
    """A prefilled memory unit: its pieces and the K/V of their tokens, per layer.

    spans[i] = (start, end) token range of pieces[i] within the unit. attention: statistics requested by
    the compressor, e.g. {"guidance": [layers, heads, unit_tokens]} (attention each unit token received
    from the guidance prompt's queries, averaged over those queries) or {"self": [heads, n, n]} (the unit's
    own attention among its tokens at the last layer).

    alone: where the compressor declares token ranges to prefill on their own (`Compressor.alone_ranges`),
    one Unit per range, in order: the range forwarded by itself right after the sinks, with its K/V, the
    positions it was forwarded at and (if the compressor `needs` "self") its own last-layer attention.
    origin: what to add to `positions` to get the tokens' positions in the unit they were cut from (0 for a
    unit prefilled in place; a range prefilled alone after the sinks sits elsewhere than in its unit).
    """

    pieces: list[Piece]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    positions: torch.Tensor
    spans: list[tuple[int, int]]
    attention: dict[str, torch.Tensor] = field(default_factory=dict)
    alone: list[Unit] = field(default_factory=list)
    origin: int = 0

    @property
    def n_tokens(self) -> int:
        return int(self.positions.shape[1])

    @property
    def frame_spans(self) -> list[tuple[int, int]]:
        return [s for s, p in zip(self.spans, self.pieces) if p.kind == "frame"]

    @property
    def frame_grids(self) -> list[tuple[int, int] | None]:
        """Per frame span, its visual tokens' (rows, cols) raster grid (they are the span's last rows * cols
        tokens), or None where the adapter gave none (`Piece.hw`)."""
        return [p.hw for p in self.pieces if p.kind == "frame"]

    @property
    def t0(self) -> float:
        return min(p.t0 for p in self.pieces)

    @property
    def t1(self) -> float:
        return max(p.t1 for p in self.pieces)


@dataclass
class BlockDraft:
    """What a compressor keeps of (part of) a unit: per-layer kept token indices into the unit, or
    already-transformed K/V (pooling). Exactly one of `index` or (`keys`, `values`, `positions`) is set.

    index[layer] is 1-D [k] (the same tokens for every KV head) or 2-D [kv_heads, k] (per-head selection, as
    kvpress and InfiniPot-V do: each row, sorted, holds the tokens that head keeps). origin (explicit K/V
    only): what to add to `positions` to get the tokens' positions in their unit (`Unit.origin` of the
    prefill the K/V came from), so that a block prefilled apart is still known as the same stream tokens."""

    kind: str
    t0: float
    t1: float
    index: list[torch.Tensor] | None = None  # per layer, sorted token indices into the unit
    keys: list[torch.Tensor] | None = None
    values: list[torch.Tensor] | None = None
    positions: list[torch.Tensor] | None = None
    level: str = "full"
    text: str = ""
    pinned: bool = False
    origin: int = 0


def keep_top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Sorted indices of the `k` highest scores of a 1-D tensor (ties: the earlier token)."""
    k = max(0, min(int(k), scores.numel()))
    order = torch.argsort(-scores.float(), stable=True)[:k]
    return order.sort().values


ROUNDINGS = ("floor", "round")


def budget(n: int, keep: float | int, rounding: str = "round") -> int:
    """Tokens to keep of `n`: a float in (0, 1] is a ratio (at least 1 token), an int a count (at most n).

    rounding: how a ratio becomes a count. "floor" is ``int(n * keep)``, what kvpress (``ScorerPress``:
    ``int(k_len * (1 - compression_ratio))``) and MuKV (``target_k = int(actual_seq_len * keep_ratio)``)
    compute; "round" is ``round(n * keep)`` (Python's round, half to even). Either way at least 1 token.
    """
    if keep <= 0:
        raise ValueError(f"keep must be > 0; got {keep}")
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}; got {rounding!r}")
    if isinstance(keep, float):
        if keep > 1:
            raise ValueError(f"a keep ratio must be in (0, 1]; got {keep} (give an int for a token count)")
        count = int(n * keep) if rounding == "floor" else round(n * keep)
        return max(1, min(n, count))
    return min(n, int(keep))


def check_rounding(rounding: object, owner: str) -> None:
    """Raise ConfigError unless `rounding` is one of ROUNDINGS."""
    if rounding not in ROUNDINGS:
        raise ConfigError(f"{owner}: rounding must be one of {ROUNDINGS}; got {rounding!r}")
