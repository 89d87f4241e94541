"""What a retriever sees of the memory: the `Catalog` (one row per stored block) and the `Query` (the
question, summarised per layer). They live in memory/ because the index builds them; the retrievers
(policies/retrieve) read them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from videokv.errors import ConfigError

LEVEL_PREFERENCE = ("full", "L", "H")  # when a unit is stored at several levels, the one a plain reader takes


@dataclass
class Catalog:
    """What a retriever sees of the memory, one row per stored block (a row index is the block id).

    rkeys: [N, L, D] float32 (may be a view of [L, N, D] storage), per layer the mean of the block's
    un-rotated keys flattened over kv heads (D = kv_heads * head_dim). kinds: "frame", "segment", "patch",
    "text" or "summary". units: [N] long, the ingest unit a block came from (the levels and granularities
    of one unit share it; larger is newer). levels: "full", "L", "H", ... t0/t1: [N] float stream times.
    pinned: [N] bool, always included.
    """

    rkeys: torch.Tensor
    kinds: list[str]
    units: torch.Tensor
    levels: list[str]
    t0: torch.Tensor
    t1: torch.Tensor
    pinned: torch.Tensor
    # optional fast top-k: search(q [L, D], k) -> per layer the k best rows by q[l] . rkeys[:, l] (FAISS)
    search: Callable[[torch.Tensor, int], list[list[int]]] | None = None
    # a text block's words (None for other kinds): what `TextMatch` scores; None when not provided
    texts: list[str | None] | None = None
    # [N, L] bool: which layers a block holds tokens at (None: every block at every layer). A block absent
    # from a layer (StreamKV keeps different frames per layer) scores -inf there.
    present: torch.Tensor | None = None
    # the question's text (what `WithText` matches the text blocks' words against); "" when not given
    question: str = ""
    # [N, D] float32: per block the mean of its last-layer keys as stored, i.e. rotated at the positions the
    # block was prefilled at, flattened over kv heads (MuKV's representative vector; zeros where the block
    # holds no token at the last layer). One row per block of D floats, 1/L of `rkeys`. None: not provided.
    rotated_keys: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.rkeys.dim() != 3:
            raise ConfigError(f"Catalog: rkeys must be [N, L, D]; got shape {tuple(self.rkeys.shape)}")
        n = self.rkeys.shape[0]
        for what, size in (
            ("kinds", len(self.kinds)),
            ("units", self.units.numel()),
            ("levels", len(self.levels)),
            ("t0", self.t0.numel()),
            ("t1", self.t1.numel()),
            ("pinned", self.pinned.numel()),
            *([("texts", len(self.texts))] if self.texts is not None else []),
            *([("rotated_keys", self.rotated_keys.shape[0])] if self.rotated_keys is not None else []),
        ):
            if size != n:
                raise ConfigError(f"Catalog: {what} has {size} entries but rkeys has {n} rows")

    @property
    def n(self) -> int:
        return int(self.rkeys.shape[0])

    @property
    def n_layers(self) -> int:
        return int(self.rkeys.shape[1])

    def scores(self, query: Query) -> torch.Tensor:
        """ReKV's relevance, [L, N] fp32: per layer, the question's query · each block's rkey. When `rkeys`
        is a view of layer-major storage (as `memory.index.Index` builds it: each layer's keys contiguous,
        spare rows after them), one batched product reads each layer's keys contiguously (about 2x faster
        than over [N, L, D]: docs/SPEED.md)."""
        layer_major = self.rkeys.permute(1, 0, 2)
        d = layer_major.shape[-1]
        if layer_major.stride(-1) == 1 and (layer_major.shape[-2] <= 1 or layer_major.stride(-2) == d):
            # each layer's [N, D] keys contiguous (the index's buffers hold spare rows after them)
            scores = torch.bmm(layer_major.float(), query.q.float().unsqueeze(-1)).squeeze(-1)
        else:
            scores = torch.einsum("nld,ld->ln", self.rkeys.float(), query.q.float())
        if self.present is not None:
            scores = scores.masked_fill(~self.present.T.to(scores.device), float("-inf"))
        return scores

    def layer_scores(self, layer: int, q: torch.Tensor) -> torch.Tensor:
        """[N] fp32: layer `layer`'s query summary q [D] . each block's rkey at that layer (ReKV's score)."""
        scores = self.rkeys[:, layer].float() @ q.float()
        if self.present is not None:
            scores = scores.masked_fill(~self.present[:, layer].to(scores.device), float("-inf"))
        return scores

    def layer_rows(self, layer: int) -> list[int]:
        """The rows present at `layer` (all rows when every block is everywhere)."""
        if self.present is None:
            return list(range(self.n))
        return torch.nonzero(self.present[:, layer]).flatten().tolist()

    def in_stream_order(self, rows: Iterable[int]) -> list[int]:
        """`rows` without duplicates, sorted by start time, then row."""
        unique = sorted(set(int(r) for r in rows))
        t0 = self.t0[unique].tolist() if unique else []
        order = sorted(range(len(unique)), key=lambda i: (t0[i], unique[i]))
        return [unique[i] for i in order]

    def one_level(self, rows: list[int]) -> list[int]:
        """`rows` (order kept) with at most one level per unit: where the rows hold a unit at several levels
        (both copies of a bi-level unit), only those of its first level in "full" > "L" > "H" (then the
        first met) stay, so a context never holds the same stream tokens twice."""
        levels: dict[int, set[str]] = {}
        # the units of these rows only (a question's rows, not the whole store: no pass over every block)
        units = dict(zip(rows, self.units[list(rows)].tolist())) if len(rows) else {}
        for r in rows:
            levels.setdefault(units[r], set()).add(self.levels[r])
        if all(len(v) == 1 for v in levels.values()):
            return list(rows)
        keep: dict[int, str] = {}
        for r in rows:
            have = levels[units[r]]
            keep.setdefault(units[r], next((lv for lv in LEVEL_PREFERENCE if lv in have), self.levels[r]))
        return [r for r in rows if self.levels[r] == keep[units[r]]]

    def pinned_rows(self) -> list[int]:
        return [int(r) for r in torch.nonzero(self.pinned.bool()).flatten().tolist()]

    def unit_ids(self) -> list[int]:
        """The distinct ingest units, oldest first."""
        return sorted(set(int(u) for u in self.units.tolist()))

    def newest_units(self, n: int) -> list[int]:
        """The `n` newest ingest units (largest ids)."""
        return self.unit_ids()[-n:] if n > 0 else []

    def unit_rows(self, units: Iterable[int]) -> list[int]:
        """Every row of the given units."""
        wanted = set(int(u) for u in units)
        if not wanted:
            return []
        return [r for r, u in enumerate(self.units.tolist()) if u in wanted]

    def level_rows(
        self, units: Iterable[int] | None = None, prefer: dict[int, str] | None = None
    ) -> list[int]:
        """One level per unit: the rows a reader takes of `units` (all units when None).

        A unit's visual rows (not text, not pinned) are read at the level `prefer[unit]` when the unit has it,
        else at the first of "full" > "L" > "H" it has, else at its first row's level. Text rows are always
        taken. Pinned rows are not included (callers add them).
        """
        prefer = prefer or {}
        wanted = None if units is None else set(int(u) for u in units)
        if wanted is not None and not wanted:
            return []
        by_unit: dict[int, list[int]] = {}
        text: list[int] = []
        pinned = self.pinned.bool().tolist()
        for r, u in enumerate(self.units.tolist()):
            if wanted is not None and u not in wanted:
                continue
            if self.kinds[r] == "text":
                text.append(r)
            elif not pinned[r]:
                by_unit.setdefault(u, []).append(r)
        out = list(text)
        for u, rows in by_unit.items():
            have = [self.levels[r] for r in rows]
            level = next((lv for lv in (prefer.get(u), *LEVEL_PREFERENCE) if lv in have), have[0])
            out.extend(r for r in rows if self.levels[r] == level)
        return out


@dataclass
class Query:
    """The question, summarised for retrieval.

    q: [L, D], per layer the question's pre-RoPE queries averaged over question tokens and summed within
    each KV-head group, so ``q[l] @ rkeys[:, l]`` is ReKV's score. last_key: [L, D], per layer the un-rotated
    key of the question's last token. rotated_key: [D] float32, the question's last token's last-layer key as
    the probe forward cached it (rotated at the token's position; MuKV's query against
    `Catalog.rotated_keys`); None when not provided.
    """

    q: torch.Tensor
    last_key: torch.Tensor
    rotated_key: torch.Tensor | None = None
