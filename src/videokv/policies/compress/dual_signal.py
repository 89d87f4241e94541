"""DualSignal: attention received + high-frequency key content (MuKV)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from videokv.errors import ConfigError, VideoKVError
from videokv.policies.base import Unit
from videokv.policies.compress.base import ScorerCompressor, as_float, minmax


def attention_signal(attention: torch.Tensor) -> torch.Tensor:
    """Attention each token receives: [heads, n, n] averaged over heads, summed over query rows -> [n]."""
    a = as_float(attention)
    if a.dim() == 2:
        a = a[None]
    return a.mean(dim=0).sum(dim=0)


def frequency_signal(keys: torch.Tensor, method: str) -> torch.Tensor:
    """Per-token high-frequency content of `keys` [heads, n, dim] (averaged over heads) -> [n]."""
    x = as_float(keys).mean(dim=0)  # [n, dim]
    if method == "diff":
        return torch.diff(x, dim=0, prepend=x[:1]).norm(dim=-1)
    spectrum = torch.fft.rfft(x, dim=0)  # [n // 2 + 1, dim]
    spectrum[: max(1, spectrum.shape[0] // 2)] = 0  # drop DC and the lower half of the frequencies
    return torch.fft.irfft(spectrum, n=x.shape[0], dim=0).abs().mean(dim=-1)


@dataclass(frozen=True)
class DualSignal(ScorerCompressor):
    """Scores tokens by alpha * attention + beta * frequency and keeps the same tokens on every layer.

    attention: the unit's self-attention at the last layer (``unit.attention["self"]``, [heads, n, n]),
    averaged over heads and summed over query rows, i.e. the attention each token receives; min-max
    normalised. frequency: from the last layer's cached keys (rotated at the unit's positions, as MuKV
    reads them from ``past_key_values``) averaged over KV heads, x [n, dim]. "fft" zeroes the
    lower half of the rFFT spectrum along the token axis (DC included), inverts it and takes the mean
    absolute value over dim per token; "diff" is ||x_i - x_(i-1)|| (0 for the first token). Min-max
    normalised. The attention statistic is only read when alpha > 0.

    Parameters
    ----------
    keep: a float in (0, 1] is the kept fraction of the unit's tokens (at least 1), an int a token count.
        MuKV ships 0.1 for 49- and 196-token blocks, 0.8 for 784-token blocks.
    alpha: weight of the attention signal (>= 0); MuKV uses 0.5 / 0.7 / 0.8 for 49 / 196 / 784 tokens.
    beta: weight of the frequency signal (>= 0); MuKV uses 0.5 / 0.3 / 0.2.
    frequency: "fft" or "diff".
    rounding: how a keep ratio becomes a count: "floor" (MuKV: ``target_k = int(actual_seq_len *
        keep_ratio)``) or "round".

    Source: MuKV (Xiao et al., CVPR 2026, arXiv 2605.22269), dual-signal token compression,
    ``IMBALDY/MuKV`` ``model/mukv_dualsignal_compression.py``: ``_compute_token_importance`` (attention
    strategy "last": ``attentions[-1].mean(0).mean(0).sum(0)`` over the block's key columns, min-max),
    ``_compute_fft_importance`` (on ``kv_layers[-1][0]``, the block's rotated last-layer keys, mean over
    heads; "fft" keeps the rFFT bins from ``max(1, bins // 2)`` on), and
    ``_encode_granularity_chunk_with_compression`` (``target_k = int(n * keep_ratio)``, top-k, the same
    indices on every layer). The last question token's (rotated) last-layer key is MuKV's *retrieval*
    query, not part of this score (see `Hierarchical`). The optional near-duplicate filter of MuKV (off in
    its shipped script, ``DEDUP_ENABLED="false"``) is not included.
    """

    name: ClassVar[str] = "dual_signal"
    needs: ClassVar[tuple[str, ...]] = ("self",)
    keep: float | int = 0.1
    alpha: float = 0.5
    beta: float = 0.5
    frequency: str = "fft"

    def __post_init__(self) -> None:
        super().__post_init__()
        for label, w in (("alpha", self.alpha), ("beta", self.beta)):
            if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w < 0:
                raise ConfigError(f"DualSignal: {label} must be a finite number >= 0; got {w!r}")
        if self.alpha == 0 and self.beta == 0:
            raise ConfigError("DualSignal: alpha and beta are both 0; give at least one a positive weight")
        if self.frequency not in ("fft", "diff"):
            raise ConfigError(f"DualSignal: frequency must be 'fft' or 'diff'; got {self.frequency!r}")

    def score(self, unit: Unit) -> torch.Tensor:
        n, device = unit.n_tokens, unit.keys[-1].device
        score = torch.zeros(n, dtype=torch.float32, device=device)
        if self.beta > 0:
            freq = minmax(frequency_signal(unit.keys[-1], self.frequency))
            score = score.to(freq.dtype) + self.beta * freq
        if self.alpha > 0:
            attention = unit.attention.get("self")
            if attention is None:
                raise VideoKVError(
                    "DualSignal needs unit.attention['self'] (the unit's last-layer self-attention); "
                    "the engine must compute it for compressors whose `needs` include 'self'"
                )
            if attention.shape[-2:] != (n, n):
                raise VideoKVError(
                    f"DualSignal: unit.attention['self'] must be [heads, {n}, {n}]; "
                    f"got {tuple(attention.shape)}"
                )
            score = score + self.alpha * minmax(attention_signal(attention)).to(device, score.dtype)
        return score
