"""KeyNorm: keep the tokens whose keys have the smallest L2 norm (kvpress KnormPress)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from videokv.errors import ConfigError
from videokv.policies.base import Unit
from videokv.policies.compress.base import ScorerCompressor, as_float


def key_norm_score(unit: Unit, per_head: bool = False) -> torch.Tensor:
    """-||k|| per layer, KV head and token ([layers, kv_heads, n]) or, when not `per_head`, its mean over KV
    heads ([layers, n])."""
    norms = torch.stack([-as_float(k).norm(dim=-1) for k in unit.keys])  # [layers, kv_heads, n]
    return norms if per_head else norms.mean(dim=1)


def check_per_head(per_head: object, owner: str) -> None:
    if not isinstance(per_head, bool):
        raise ConfigError(f"{owner}: per_head must be true or false; got {per_head!r}")


@dataclass(frozen=True)
class KeyNorm(ScorerCompressor):
    """Keeps, per layer and KV head, the tokens with the lowest key norm.

    Low-norm keys tend to receive high attention, so score = -||k||. With `per_head` (as
    kvpress), each KV head of each layer keeps its own ``int(n * keep)`` tokens (the draft's index is
    [kv_heads, k] per layer); without it the norm is averaged over KV heads and a layer keeps one token set.
    Query-agnostic and free: it needs no attention statistics.

    Parameters
    ----------
    keep: a float in (0, 1] is the kept fraction of the unit's tokens (at least 1), an int a token count.
    rounding: "floor" (kvpress: ``n_kept = int(k_len * (1 - compression_ratio))``) or "round".
    per_head: select per KV head, as kvpress: each KV head of each layer keeps its own tokens, every head the
        same count, and the memory block stores them per head (`KVBlock` positions [kv_heads, P, n]). Off by
        default: no preset uses this scorer, and off keeps the meaning configs and saves had before blocks
        stored heads apart (one token set per layer, the same on every head).

    Source: Devoto et al., "A Simple and Effective L2 Norm-Based Strategy for KV Cache Compression",
    EMNLP 2024 (arXiv 2406.11430); kvpress ``kvpress/presses/knorm_press.py`` (``KnormPress.score`` =
    ``-keys.norm(dim=-1)``, [batch, kv_heads, n]) with ``scorer_press.py`` (``ScorerPress.compress``: top
    ``n_kept`` per KV head, gathered along the sequence).
    """

    name: ClassVar[str] = "knorm"
    keep: float | int = 0.5
    per_head: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_per_head(self.per_head, "KeyNorm")

    def score(self, unit: Unit) -> torch.Tensor:
        return key_norm_score(unit, self.per_head)
