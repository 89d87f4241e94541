"""KeyNorm: keep the tokens whose keys have the smallest L2 norm (kvpress KnormPress)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from videokv.policies.base import Unit
from videokv.policies.compress.base import ScorerCompressor, as_float


def key_norm_score(unit: Unit) -> torch.Tensor:
    """-(mean over KV heads of ||k||), per layer and token: [layers, n]."""
    return torch.stack([-as_float(k).norm(dim=-1).mean(dim=0) for k in unit.keys])


@dataclass(frozen=True)
class KeyNorm(ScorerCompressor):
    """Keeps, per layer, the tokens with the lowest key norm (averaged over KV heads).

    Low-norm keys tend to receive high attention, so score = -mean_heads ||k||. Query-agnostic and free: it
    needs no attention statistics.

    Parameters
    ----------
    keep: a float in (0, 1] is the kept fraction of the unit's tokens (at least 1), an int a token count.

    Source: Devoto et al., "A Simple and Effective L2 Norm-Based Strategy for KV Cache Compression",
    EMNLP 2024 (arXiv 2406.11430); kvpress ``KnormPress``.
    """

    name: ClassVar[str] = "knorm"
    keep: float | int = 0.5

    def score(self, unit: Unit) -> torch.Tensor:
        return key_norm_score(unit)
