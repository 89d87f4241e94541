"""ValueNorm: keep the tokens whose values have the largest L2 norm (InfiniPot-V's VaN)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from videokv.errors import ConfigError
from videokv.policies.base import Unit
from videokv.policies.compress.base import ScorerCompressor, as_float
from videokv.policies.compress.knorm import check_per_head


@dataclass(frozen=True)
class ValueNorm(ScorerCompressor):
    """Keeps, per layer and KV head, the tokens with the largest value norm.

    score = ||v||, per KV head with `per_head` (as InfiniPot-V: each head keeps its own
    tokens, the draft's index is [kv_heads, k] per layer), else averaged over KV heads; optionally
    smoothed by a 1-D moving average of `smooth` tokens inside each frame piece (zero padding not
    counted), so that neighbouring tokens of a salient region are kept together.

    Parameters
    ----------
    keep: a float in (0, 1] is the kept fraction of the unit's tokens (at least 1), an int a token count.
    smooth: moving-average window in tokens; 0 or 1 disables it, otherwise an odd number >= 3.
    rounding: how a keep ratio becomes a count, "floor" (``int(n * keep)``) or "round".
    per_head: select per KV head (off by default: a memory block keeps one token set for all its heads, so
        the engine refuses per-head drafts until blocks store per-head positions); on, as InfiniPot-V.

    Source: InfiniPot-V (Kim et al., "InfiniPot-V: Memory-Constrained KV Cache Compression for Streaming
    Video Understanding", NeurIPS 2025, arXiv 2506.15745), Value-Norm (VaN) ranking, as in
    ``aiha-lab/InfiniPot-V`` ``kvcache_utils.py``, ``process_kv_cache`` (method "infinipot-v" with
    ``tar_ratio=0``: ``val_norm_score = value_states.norm(dim=-1)``, [kv_heads, n], ``topk`` per head).
    With ``adaptive_pooling`` InfiniPot-V pools the norms with layer-dependent 3-D/2-D/1-D windows 7/5/3 (the
    1-D one across frames, zero padding counted); `smooth` keeps only a 1-D option inside each frame, zero
    padding not counted (it works for every family without knowing the grid), so parity holds for smooth=0.
    """

    name: ClassVar[str] = "value_norm"
    keep: float | int = 0.5
    smooth: int = 0
    per_head: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_per_head(self.per_head, "ValueNorm")
        s = self.smooth
        if isinstance(s, bool) or not isinstance(s, int) or s < 0 or (s > 1 and s % 2 == 0):
            raise ConfigError(f"ValueNorm: smooth must be 0, 1 or an odd int >= 3; got {s!r}")

    def score(self, unit: Unit) -> torch.Tensor:
        scores = torch.stack([as_float(v).norm(dim=-1) for v in unit.values])  # [layers, kv_heads, n]
        if not self.per_head:
            scores = scores.mean(dim=1)
        if self.smooth <= 1:
            return scores
        flat = scores.reshape(-1, scores.shape[-1])  # [layers (* kv_heads), n]
        out = flat.clone()
        for start, end in unit.frame_spans:
            out[:, start:end] = F.avg_pool1d(
                flat[:, None, start:end],
                self.smooth,
                stride=1,
                padding=self.smooth // 2,
                count_include_pad=False,
            )[:, 0]
        return out.reshape(scores.shape)
