"""ValueNorm: keep the tokens whose values have the largest L2 norm (InfiniPot-V's VaN)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from videokv.errors import ConfigError
from videokv.policies.base import Unit
from videokv.policies.compress.base import ScorerCompressor, as_float


@dataclass(frozen=True)
class ValueNorm(ScorerCompressor):
    """Keeps, per layer, the tokens with the largest value norm (averaged over KV heads).

    score = mean_heads ||v||, optionally smoothed by a 1-D moving average of `smooth` tokens inside each frame
    piece (zero padding not counted), so that neighbouring tokens of a salient region are kept together.

    Parameters
    ----------
    keep: a float in (0, 1] is the kept fraction of the unit's tokens (at least 1), an int a token count.
    smooth: moving-average window in tokens; 0 or 1 disables it, otherwise an odd number >= 3.

    Source: InfiniPot-V (Kim et al., "InfiniPot-V: Memory-Constrained KV Cache Compression for Streaming
    Video Understanding", NeurIPS 2025, arXiv 2506.15745), Value-Norm (VaN) ranking. InfiniPot-V pools the
    norms over the 2-D (or 3-D) patch grid with layer-dependent sizes 7/5/3; this keeps only the 1-D option
    along the token axis (it works for every family without knowing the grid).
    """

    name: ClassVar[str] = "value_norm"
    keep: float | int = 0.5
    smooth: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        s = self.smooth
        if isinstance(s, bool) or not isinstance(s, int) or s < 0 or (s > 1 and s % 2 == 0):
            raise ConfigError(f"ValueNorm: smooth must be 0, 1 or an odd int >= 3; got {s!r}")

    def score(self, unit: Unit) -> torch.Tensor:
        scores = torch.stack([as_float(v).norm(dim=-1).mean(dim=0) for v in unit.values])
        if self.smooth <= 1:
            return scores
        out = scores.clone()
        for start, end in unit.frame_spans:
            seg = scores[:, None, start:end]  # [layers, 1, m]
            out[:, start:end] = F.avg_pool1d(
                seg, self.smooth, stride=1, padding=self.smooth // 2, count_include_pad=False
            )[:, 0]
        return out
