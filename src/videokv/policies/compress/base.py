"""The compressor protocol and the scorer helper every token-selecting compressor builds on.

A compressor turns a prefilled `Unit` (frame pieces only; the engine keeps text whole) into `BlockDraft`s.
By convention it returns one draft covering the whole unit: kind "frame" when the unit holds one frame piece
and "segment" otherwise, t0/t1 = the unit's time span. A `ScorerCompressor` only scores tokens (per layer or
once for all layers) and keeps the `budget(n, keep)` best per layer, in the style of kvpress's ScorerPress.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar

import torch

from videokv.errors import ConfigError
from videokv.models.base import Piece
from videokv.policies.base import BlockDraft, Unit, budget, check_rounding, keep_top


class Compressor(abc.ABC):
    """Base class of the compressors.

    name: the registry name used in configs (``--memory-set compress=<name>``). needs: the statistics the
    engine must put in ``unit.attention`` before calling `compress` (e.g. ``("self",)``). prompt_sees_unit:
    whether the `forward_prompt` attends only to the unit (and causally to itself), the ingest context before
    the unit hidden from it (StreamKV's encode prompt); False: it sees the context too, like the unit.
    """

    name: ClassVar[str] = ""
    needs: ClassVar[tuple[str, ...]] = ()
    prompt_sees_unit: ClassVar[bool] = False

    @abc.abstractmethod
    def compress(self, unit: Unit) -> list[BlockDraft]:
        """The drafts (kept tokens or transformed K/V, per layer) of a prefilled unit."""

    def cold(self, level: str, kind: str) -> bool:
        """Whether a block of this `level` and `kind` waits in slower memory (the store's cold lane: host RAM
        beside an accelerator, disk on a CPU-only machine) and is loaded only when a question retrieves it;
        False (the default): it takes the fastest tier the budgets allow, like every other block."""
        return False

    def alone_ranges(self, frames: list[Piece]) -> list[tuple[int, int]]:
        """Token ranges, within the unit's frame pieces laid end to end, that the engine also prefills each on
        its own, in one extra forward: a range sees only the sinks (not the ingest context, not the unit's
        other tokens), placed where the ingest policy places a unit (`unit_start`; else at its stream
        positions). The compressor receives them as ``unit.alone`` (one Unit per range, in order). MuKV
        encodes each frame and each quarter-frame block so, after the init tokens. Default: none."""
        return []

    def forward_prompt(self) -> str | None:
        """Text the engine forwards right after the unit, in the same pass, whose statistics the compressor
        `needs` ("guidance", "guidance_qk"); its K/V leave the cache at once. None: nothing is added."""
        return None


def unit_kind(unit: Unit) -> str:
    """ "frame" for a unit with one frame piece, "segment" otherwise."""
    return "frame" if sum(p.kind == "frame" for p in unit.pieces) == 1 else "segment"


def whole_unit_draft(unit: Unit, **fields) -> BlockDraft:
    """One draft covering the whole unit, with the conventional kind and time span."""
    return BlockDraft(kind=unit_kind(unit), t0=unit.t0, t1=unit.t1, **fields)


def check_keep(keep: object, owner: str) -> None:
    """Raise ConfigError unless `keep` is a ratio in (0, 1] (float) or a token count >= 1 (int)."""
    if isinstance(keep, bool) or not isinstance(keep, int | float):
        raise ConfigError(f"{owner}: keep must be a float ratio in (0, 1] or an int count; got {keep!r}")
    if isinstance(keep, float) and not 0.0 < keep <= 1.0:
        raise ConfigError(
            f"{owner}: a keep ratio must be in (0, 1]; got {keep} (give an int for a token count)"
        )
    if isinstance(keep, int) and keep < 1:
        raise ConfigError(f"{owner}: a keep count must be >= 1; got {keep}")


def as_float(x: torch.Tensor) -> torch.Tensor:
    """`x` in at least float32 (half precision is upcast; float64 stays float64)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def minmax(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Min-max normalisation to [0, 1] (a constant tensor becomes zeros)."""
    if x.numel() == 0:
        return x
    return (x - x.min()) / (x.max() - x.min() + eps)


def keep_top_rows(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Per row of a 2-D [rows, n] tensor, the sorted indices of its `k` highest scores: [rows, k]."""
    return torch.stack([keep_top(row, k) for row in scores])


@dataclass(frozen=True)
class ScorerCompressor(Compressor):
    """Keeps, per layer (and per KV head when the score has one), the `budget(n, keep, rounding)` tokens with
    the highest `score` (ties: the earlier token).

    Parameters
    ----------
    keep: a float in (0, 1] is the kept fraction of the unit's tokens (at least 1 token), an int the number
        of tokens kept.
    rounding: how a keep ratio becomes a count: "floor" (``int(n * keep)``, kvpress and MuKV) or "round".

    Subclasses implement `score(unit)`, returning [layers, kv_heads, n] (per layer and KV head: each head
    keeps its own tokens, kvpress-style; the draft's index is then [kv_heads, k] per layer), [layers, n]
    (one score per layer and token) or [n] (the same score, hence the same kept tokens, for every layer).
    """

    keep: float | int = 0.5
    rounding: str = "floor"

    def __post_init__(self) -> None:
        check_keep(self.keep, type(self).__name__)
        check_rounding(self.rounding, type(self).__name__)

    @abc.abstractmethod
    def score(self, unit: Unit) -> torch.Tensor:
        """Token scores, [layers, kv_heads, n], [layers, n] or [n]; higher is kept first."""

    def compress(self, unit: Unit) -> list[BlockDraft]:
        n, layers = unit.n_tokens, len(unit.keys)
        k = budget(n, self.keep, self.rounding)
        scores = self.score(unit)
        if scores.dim() == 1:
            index = [keep_top(scores, k)] * layers
        elif scores.dim() == 2:
            index = [keep_top(scores[layer], k) for layer in range(layers)]
        else:
            index = [keep_top_rows(scores[layer], k) for layer in range(layers)]
        return [whole_unit_draft(unit, index=index, level="full")]
