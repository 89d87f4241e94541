"""InfiniPot: InfiniPot-V's combined compression, a TaR share of the budget and the rest by value norm."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from videokv.errors import ConfigError
from videokv.policies.base import Unit, budget, keep_top
from videokv.policies.compress.base import ScorerCompressor
from videokv.policies.compress.knorm import check_per_head
from videokv.policies.compress.redundancy import Redundancy
from videokv.policies.compress.value_norm import ValueNorm


@dataclass(frozen=True)
class InfiniPot(ScorerCompressor):
    """InfiniPot-V's two-part selection: the temporal-redundancy (TaR) tokens first, value norm (VaN) after.

    Of the unit's budget B (``budget(n, keep, rounding)``), ``B - round((1 - tar_ratio) * B)`` tokens go to
    TaR: the newest ``max(1, floor(recent * F))`` of its F frames and the older tokens least like them (as
    `Redundancy` ranks them); the remaining ``round((1 - tar_ratio) * B)`` are the highest value norms among
    the other tokens (as `ValueNorm` scores them). Implemented as one score: the value norm, raised above
    every other token for the TaR picks, so that the top B of it are the TaR picks plus the best-norm rest.
    ``tar_ratio=0`` is `ValueNorm`; ``tar_ratio=1`` is `Redundancy`. Selection is per KV head with
    `per_head` (as InfiniPot-V), otherwise on the scores averaged over KV heads.

    Parameters
    ----------
    keep: a float in (0, 1] is the kept fraction of the unit's tokens (at least 1), an int a token count.
    tar_ratio: share of the budget chosen by TaR, in [0, 1] (InfiniPot-V: 0.5).
    recent: fraction of the unit's frames that are TaR's reference (query) frames, in (0, 1) (InfiniPot-V's
        ``query_ratio``: 0.25).
    adaptive_pooling: pool the value norms before the selection as InfiniPot-V's ``adaptive_pooling=True``
        (layer-adaptive 3-D / 2-D / 1-D average pooling, see `value_norm.adaptive_pool`); off by default, as
        in the reference (``process_kv_cache``'s default, its scripts leave it off).
    rounding: how a keep ratio becomes a count, "floor" (``int(n * keep)``) or "round".
    per_head: select per KV head, as InfiniPot-V: each KV head of each layer keeps its own tokens, every head
        the same count, and the memory block stores them per head (`KVBlock` positions [kv_heads, P, n]). Off
        by default: no preset uses this scorer, and off keeps the meaning configs and saves had before blocks
        stored heads apart (one token set per layer, the same on every head).

    Source: InfiniPot-V (Kim et al., "InfiniPot-V: Memory-Constrained KV Cache Compression for Streaming
    Video Understanding", NeurIPS 2025, arXiv 2506.15745), ``aiha-lab/InfiniPot-V`` ``kvcache_utils.py``,
    ``process_kv_cache`` with method "infinipot-v" (``attn_budget = round((1 - tar_ratio) * budget)``, the TaR
    indices' value norms set to ``max + 1``, then ``topk(budget)`` per head), the norms first pooled
    when ``adaptive_pooling``. InfiniPot-V compresses the whole vision cache whenever it fills; videokv
    applies the same selection to each unit as it is stored.
    """

    name: ClassVar[str] = "infinipot"
    keep: float | int = 0.5
    tar_ratio: float = 0.5
    recent: float = 0.25
    adaptive_pooling: bool = False
    per_head: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_per_head(self.per_head, "InfiniPot")
        t = self.tar_ratio
        if isinstance(t, bool) or not isinstance(t, int | float) or not 0.0 <= t <= 1.0:
            raise ConfigError(f"InfiniPot: tar_ratio must be in [0, 1]; got {t!r}")
        Redundancy(self.keep, recent=self.recent)  # validates `recent` with Redundancy's message
        if not isinstance(self.adaptive_pooling, bool):
            raise ConfigError(
                f"InfiniPot: adaptive_pooling must be true or false; got {self.adaptive_pooling!r}"
            )

    def tar_budget(self, n: int) -> int:
        """Tokens of an n-token unit chosen by TaR (the rest of the budget goes to value norm)."""
        b = budget(n, self.keep, self.rounding)
        return b - round((1 - self.tar_ratio) * b)

    def score(self, unit: Unit) -> torch.Tensor:
        van = ValueNorm(
            self.keep, rounding=self.rounding, adaptive_pooling=self.adaptive_pooling, per_head=self.per_head
        ).score(unit)
        k = self.tar_budget(unit.n_tokens)
        if k <= 0:
            return van
        tar = Redundancy(self.keep, recent=self.recent, rounding=self.rounding, per_head=self.per_head)
        rows_tar = tar.score(unit).reshape(-1, unit.n_tokens)
        out = van.reshape(-1, unit.n_tokens).clone()
        for row in range(out.shape[0]):  # one row per layer (and KV head)
            out[row, keep_top(rows_tar[row], k)] = out[row].max() + 1
        return out.reshape(van.shape)
