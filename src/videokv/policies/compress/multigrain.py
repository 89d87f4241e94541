"""MultiGrain: store every unit at three granularities (patch, frame, segment), each dual-signal compressed
(MuKV)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from videokv.errors import ConfigError, VideoKVError
from videokv.models.base import Piece, piece_spans
from videokv.policies.base import BlockDraft, Unit, budget, check_rounding, keep_top
from videokv.policies.compress.base import Compressor, check_keep
from videokv.policies.compress.dual_signal import DualSignal

GRAINS = ("patch", "frame", "segment")


def _default_keep() -> dict[str, float]:
    return {"patch": 0.1, "frame": 0.1, "segment": 0.8}


def _default_alpha() -> dict[str, float]:
    return {"patch": 0.5, "frame": 0.7, "segment": 0.8}


def raster_slices(start: int, end: int, parts: int) -> list[tuple[int, int]]:
    """`[start, end)` cut into `parts` consecutive slices of near-equal size (the first ones one token
    longer when it does not divide evenly, as ``torch.tensor_split``); empty slices are dropped."""
    n = end - start
    size, extra = divmod(n, parts)
    out, a = [], start
    for i in range(parts):
        b = a + size + (i < extra)
        if b > a:
            out.append((a, b))
        a = b
    return out


def sub_unit(unit: Unit, a: int, b: int) -> Unit:
    """Tokens `[a, b)` of `unit` as a Unit of their own: K/V, positions and the self-attention among these
    tokens only (rows and columns `a:b`). It carries no pieces: only what `DualSignal.score` reads."""
    attention = {}
    if "self" in unit.attention:
        attention["self"] = unit.attention["self"][..., a:b, a:b]
    return Unit(
        [],
        [k[:, a:b] for k in unit.keys],
        [v[:, a:b] for v in unit.values],
        unit.positions[:, a:b],
        [],
        attention,
    )


@dataclass(frozen=True)
class MultiGrain(Compressor):
    """Stores every unit at up to three granularities, each sub-block compressed by MuKV's dual signal.

    For a (frames-only) unit the sub-blocks are:

    - ``segment``: the whole unit (in MuKV, 4 frames = 784 tokens), one draft;
    - ``frame``: each frame piece, one draft per frame;
    - ``patch``: each frame's tokens cut into `patches` consecutive *raster* slices (MuKV's 49-token
      quarter-frame slices, not spatial tiles), one draft per non-empty slice, with its frame's times.

    With `alone` (MuKV), every frame and patch sub-block is prefilled on its own right after the sinks, as
    MuKV encodes each block of every granularity after its init tokens (`alone_ranges` declares them; the
    engine forwards them and hands their K/V back as ``unit.alone``); the segment is the unit's own prefill.
    Each sub-block of granularity g is scored on its own by `DualSignal` with ``keep[g]``, ``alpha[g]`` and
    ``beta = 1 - alpha[g]``: the attention signal is the sub-block's own last-layer attention (that of its
    own prefill; for the segment, or without `alone`, the unit's last-layer self-attention restricted to the
    sub-block's rows and columns), the frequency signal runs over the sub-block's own last-layer keys. The
    ``budget(len, keep[g], rounding)`` best tokens are kept, the same on every layer. Drafts have kind
    "patch", "frame" or "segment", level "full", the sub-block's t0/t1, and the kept tokens: sorted indices
    into the unit (the segment; every sub-block without `alone`), or the kept K/V of the sub-block's own
    prefill at the positions it was prefilled at, with the `origin` that maps them back into the unit. A
    token usually appears in several drafts (one per granularity); a question's context holds it once. A
    one-frame unit still gives a segment draft.

    Parameters
    ----------
    keep: per granularity, a float in (0, 1] is the kept fraction of a sub-block's tokens (at least 1), an
        int a token count. MuKV ships patch 0.1, frame 0.1, segment 0.8.
    alpha: per granularity, the attention weight in [0, 1]; the frequency weight is ``1 - alpha``. MuKV
        ships patch 0.5, frame 0.7, segment 0.8.
    frequency: the frequency signal, "fft" or "diff" (see `DualSignal`).
    patches: raster slices per frame for the patch granularity (>= 1; MuKV: 4).
    granularities: the granularities stored, a non-empty subset of ("patch", "frame", "segment"); `keep`
        and `alpha` must have an entry for each.
    rounding: how a keep ratio becomes a count: "floor" (MuKV: ``target_k = int(actual_seq_len *
        keep_ratio)``, e.g. 4 of 49 and 19 of 196 tokens at 0.1) or "round" (5 and 20).
    alone: True (MuKV): frame and patch sub-blocks are prefilled each on its own after the sinks (one extra
        forward per unit of twice its frame tokens, the ranges masked from each other). False: they are cut
        from the unit's prefill, so their attention is a restriction of the unit's (rows normalised over the
        whole causal prefix) and their keys carry the unit's earlier frames and positions; no extra forward.

    Differences from MuKV: a question's context holds a token kept at several granularities once (MuKV
    concatenates every retrieved block).

    Source: MuKV (Xiao et al., CVPR 2026, arXiv 2605.22269), multi-granularity KV cache with dual-signal
    compression (``model/mukv_multigrain_kvcache.py``, ``model/mukv_dualsignal_compression.py``).
    """

    name: ClassVar[str] = "multigrain"
    needs: ClassVar[tuple[str, ...]] = ("self",)
    keep: dict[str, float] = field(default_factory=_default_keep)
    alpha: dict[str, float] = field(default_factory=_default_alpha)
    frequency: str = "fft"
    patches: int = 4
    granularities: tuple[str, ...] = GRAINS
    rounding: str = "floor"
    alone: bool = True

    def __post_init__(self) -> None:
        check_rounding(self.rounding, "MultiGrain")
        if not isinstance(self.alone, bool):
            raise ConfigError(f"MultiGrain: alone must be true or false; got {self.alone!r}")
        grains = self.granularities
        if not isinstance(grains, tuple | list) or not grains or set(grains) - set(GRAINS):
            raise ConfigError(
                f"MultiGrain: granularities must be a non-empty tuple among {GRAINS}; got {grains!r}"
            )
        if len(set(grains)) != len(grains):
            raise ConfigError(f"MultiGrain: granularities has duplicates: {grains!r}")
        for label, d in (("keep", self.keep), ("alpha", self.alpha)):
            if not isinstance(d, dict) or set(d) - set(GRAINS):
                raise ConfigError(f"MultiGrain: {label} must be a dict with keys among {GRAINS}; got {d!r}")
            missing = [g for g in grains if g not in d]
            if missing:
                raise ConfigError(f"MultiGrain: {label} has no entry for {', '.join(missing)}")
        for g, k in self.keep.items():
            check_keep(k, f"MultiGrain keep[{g!r}]")
        for g, a in self.alpha.items():
            if (
                isinstance(a, bool)
                or not isinstance(a, int | float)
                or not math.isfinite(a)
                or not 0 <= a <= 1
            ):
                raise ConfigError(f"MultiGrain: alpha[{g!r}] must be a number in [0, 1]; got {a!r}")
        if isinstance(self.patches, bool) or not isinstance(self.patches, int) or self.patches < 1:
            raise ConfigError(f"MultiGrain: patches must be an int >= 1; got {self.patches!r}")
        if self.frequency not in ("fft", "diff"):
            raise ConfigError(f"MultiGrain: frequency must be 'fft' or 'diff'; got {self.frequency!r}")

    def scorer(self, grain: str) -> DualSignal:
        """The dual-signal scorer of granularity `grain`."""
        alpha = float(self.alpha[grain])
        return DualSignal(
            keep=self.keep[grain],
            alpha=alpha,
            beta=1.0 - alpha,
            frequency=self.frequency,
            rounding=self.rounding,
        )

    def sub_blocks(self, unit: Unit) -> list[tuple[str, int, int, float, float]]:
        """(granularity, start, end, t0, t1) of every sub-block of `unit`, in `granularities` order."""
        frames = [(s, p) for s, p in zip(unit.spans, unit.pieces) if p.kind == "frame"]
        out: list[tuple[str, int, int, float, float]] = []
        for grain in self.granularities:
            if grain == "segment":
                if unit.n_tokens:
                    out.append((grain, 0, unit.n_tokens, unit.t0, unit.t1))
            elif grain == "frame":
                out += [(grain, a, b, p.t0, p.t1) for (a, b), p in frames if b > a]
            else:
                for (a, b), p in frames:
                    out += [(grain, c, d, p.t0, p.t1) for c, d in raster_slices(a, b, self.patches)]
        return out

    def alone_ranges(self, frames: list[Piece]) -> list[tuple[int, int]]:
        """With `alone`: the frame and patch sub-blocks of a unit of these frame pieces, in `sub_blocks`
        order (each prefilled on its own by the engine)."""
        if not self.alone:
            return []
        unit = Unit(frames, [], [], torch.zeros(1, sum(p.n_tokens for p in frames)), piece_spans(frames))
        return [(a, b) for grain, a, b, _, _ in self.sub_blocks(unit) if grain != "segment"]

    def compress(self, unit: Unit) -> list[BlockDraft]:
        n, layers = unit.n_tokens, len(unit.keys)
        subs = self.sub_blocks(unit)
        apart = [s for s in subs if s[0] != "segment"] if self.alone else []
        if self.alone and (
            len(unit.alone) != len(apart)
            or any(u.n_tokens != b - a for u, (_, a, b, _, _) in zip(unit.alone, apart))
        ):
            raise VideoKVError(
                f"MultiGrain(alone=True) needs unit.alone: its {len(apart)} frame and patch "
                f"sub-blocks each prefilled on its own (got {len(unit.alone)}); the engine prefills the "
                "ranges `alone_ranges` declares"
            )
        alone = iter(unit.alone if self.alone else [])  # in `sub_blocks` order, the segment left out
        attention = unit.attention.get("self")
        if attention is None and any(self.alpha[g] > 0 for g in self.granularities):
            raise VideoKVError(
                "MultiGrain needs unit.attention['self'] (the unit's last-layer self-attention); "
                "the engine must compute it for compressors whose `needs` include 'self'"
            )
        if attention is not None and attention.shape[-2:] != (n, n):
            raise VideoKVError(
                f"MultiGrain: unit.attention['self'] must be [heads, {n}, {n}]; got {tuple(attention.shape)}"
            )
        scorers = {g: self.scorer(g) for g in self.granularities}
        drafts = []
        for grain, a, b, t0, t1 in subs:
            own = next(alone) if self.alone and grain != "segment" else None
            if own is not None:  # prefilled on its own: keep tokens of its own K/V
                keep = keep_top(scorers[grain].score(own), budget(b - a, self.keep[grain], self.rounding))
                drafts.append(
                    BlockDraft(
                        kind=grain,
                        t0=t0,
                        t1=t1,
                        keys=[k[:, keep] for k in own.keys],
                        values=[v[:, keep] for v in own.values],
                        positions=[own.positions[:, keep.to(own.positions.device)]] * layers,
                        level="full",
                        origin=own.origin,
                    )
                )
                continue
            scores = scorers[grain].score(sub_unit(unit, a, b))
            index = keep_top(scores, budget(b - a, self.keep[grain], self.rounding)) + a
            drafts.append(BlockDraft(kind=grain, t0=t0, t1=t1, index=[index] * layers, level="full"))
        return drafts
