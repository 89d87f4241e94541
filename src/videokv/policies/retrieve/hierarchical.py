"""MuKV retrieval: over-retrieve per granularity, then re-rank frames and patches against a global context."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from videokv.errors import ConfigError
from videokv.policies.retrieve.base import Catalog, Query, Retriever

GRAINS = ("patch", "frame", "segment")


def _default_k() -> dict[str, int]:
    return {"patch": 20, "frame": 32, "segment": 12}


@dataclass(frozen=True)
class Hierarchical(Retriever):
    """Semi-hierarchical multi-granularity retrieval, the same blocks on every layer.

    From MuKV (CVPR 2026, arXiv 2605.22269). The query is the question's last token's last-layer key; a
    block's similarity is its cosine with the block's last-layer mean key (both un-rotated, or, with
    `rotated`, as the cache holds them: MuKV's). Stage 1 takes the
    ``ceil(over * k[g])`` most similar blocks of each granularity g ("patch", "frame", "segment"; other kinds,
    such as text, count as "frame"). Stage 2 forms a global context, the mean last-layer key of the
    `context_top` best segment candidates (of the best candidates overall if there are no segments), and
    re-scores frame and patch candidates as ``(1 - alpha) * sim + alpha * cos(key, context)``; each keeps
    its top ``k[g]``. Segments keep their top ``k["segment"]`` by similarity. Pinned blocks are always
    included.

    Parameters
    ----------
    k : dict of str to int
        Blocks kept per granularity (MuKV: patch 20, frame 32, segment 12); a missing granularity keeps 0.
    over : float
        Over-retrieval factor of stage 1 (>= 1; MuKV: 2).
    context_top : int
        Candidates averaged into the global context (>= 1; MuKV: 5).
    alpha : float
        Weight of the context similarity in the stage-2 score, in [0, 1] (MuKV: 0.3).
    rotated : bool
        True (MuKV, IMBALDY/MuKV ``model/mukv_rerank.py`` ``question_answering``): the keys are those the
        cache holds, rotated at their positions: the query is the key of the question's last token as the
        question's probe forward cached it (``Query.rotated_key``), a block's key the mean of its cached
        last-layer keys (``Catalog.rotated_keys``), and the global context the mean of those. Since RoPE
        makes the cosine depend on where the question sits relative to the blocks, it is meant with
        ``Independent(restart=True)``: every block is prefilled right after the sinks, and the engine probes
        the question there too, as MuKV encodes both after its initial tokens. False (default): the
        un-rotated keys (``Query.last_key``, ``Catalog.rkeys``), which do not depend on positions.
    """

    name: ClassVar[str] = "hierarchical"
    k: dict[str, int] = field(default_factory=_default_k)
    over: float = 2.0
    context_top: int = 5
    alpha: float = 0.3
    rotated: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.k, dict) or set(self.k) - set(GRAINS):
            raise ConfigError(f"Hierarchical: k must be a dict with keys among {GRAINS}; got {self.k!r}")
        for g, v in self.k.items():
            if not isinstance(v, int) or v < 0:
                raise ConfigError(f"Hierarchical: k[{g!r}] must be an int >= 0; got {v!r}")
        if not self.over >= 1:
            raise ConfigError(f"Hierarchical: over must be >= 1; got {self.over!r}")
        if not isinstance(self.context_top, int) or self.context_top < 1:
            raise ConfigError(f"Hierarchical: context_top must be an int >= 1; got {self.context_top!r}")
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"Hierarchical: alpha must be in [0, 1]; got {self.alpha!r}")
        if not isinstance(self.rotated, bool):
            raise ConfigError(f"Hierarchical: rotated must be true or false; got {self.rotated!r}")

    def similarity(self, catalog: Catalog, query: Query) -> tuple[torch.Tensor, torch.Tensor]:
        """(keys [N, D], sim [N]): each block's last-layer key and its cosine with the question's."""
        if self.rotated:
            if catalog.rotated_keys is None or query.rotated_key is None:
                raise ConfigError("Hierarchical(rotated=true) needs the cached keys of blocks and question")
            keys, q = catalog.rotated_keys.float(), query.rotated_key.float()
        else:
            keys, q = catalog.rkeys[:, -1].float(), query.last_key[-1].float()
        return keys, F.cosine_similarity(keys, q.to(keys.device)[None], dim=1, eps=1e-8)

    def select(self, catalog: Catalog, query: Query) -> list[list[int]]:
        keys, sim = self.similarity(catalog, query)
        pinned = catalog.pinned_rows()
        free = set(range(catalog.n)) - set(pinned)
        grain = [kind if kind in GRAINS else "frame" for kind in catalog.kinds]

        # Stage 1: over-retrieve each granularity by similarity (best first).
        cands = {
            g: self.top_rows(
                sim, [r for r in sorted(free) if grain[r] == g], math.ceil(self.over * self.k.get(g, 0))
            )
            for g in GRAINS
        }
        picked = cands["segment"][: self.k.get("segment", 0)]
        pool = sorted(r for g in GRAINS for r in cands[g])
        if pool:
            # Stage 2: re-rank frames and patches against the global context.
            ctx = cands["segment"][: self.context_top] or self.top_rows(sim, pool, self.context_top)
            context = keys[torch.tensor(ctx, dtype=torch.long)].mean(0)
            ctx_sim = F.cosine_similarity(keys, context[None], dim=1, eps=1e-8)
            score = (1 - self.alpha) * sim + self.alpha * ctx_sim
            for g in ("frame", "patch"):
                picked += self.top_rows(score, sorted(cands[g]), self.k.get(g, 0))
        rows = catalog.in_stream_order(picked + pinned)
        return [list(rows) for _ in range(catalog.n_layers)]
