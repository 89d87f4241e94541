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
    counted), so that neighbouring tokens of a salient region are kept together, or pooled as InfiniPot-V's
    layer-adaptive pooling (`adaptive_pooling`, see `adaptive_pool`).

    Parameters
    ----------
    keep: a float in (0, 1] is the kept fraction of the unit's tokens (at least 1), an int a token count.
    smooth: moving-average window in tokens; 0 or 1 disables it, otherwise an odd number >= 3.
    adaptive_pooling: pool the norms as InfiniPot-V's ``adaptive_pooling=True`` does (off by default, as
        there: its ``process_kv_cache`` default and its scripts leave it off); exclusive with `smooth`.
    rounding: how a keep ratio becomes a count, "floor" (``int(n * keep)``) or "round".
    per_head: select per KV head, as InfiniPot-V: each KV head of each layer keeps its own tokens, every head
        the same count, and the memory block stores them per head (`KVBlock` positions [kv_heads, P, n]). Off
        by default: no preset uses this scorer, and off keeps the meaning configs and saves had before blocks
        stored heads apart (one token set per layer, the same on every head).

    Source: InfiniPot-V (Kim et al., "InfiniPot-V: Memory-Constrained KV Cache Compression for Streaming
    Video Understanding", NeurIPS 2025, arXiv 2506.15745), Value-Norm (VaN) ranking, as in
    ``aiha-lab/InfiniPot-V`` ``kvcache_utils.py``, ``process_kv_cache`` (method "infinipot-v" with
    ``tar_ratio=0``: ``val_norm_score = value_states.norm(dim=-1)``, [kv_heads, n], ``topk`` per head, pooled
    first when ``adaptive_pooling``). `smooth` is videokv's own 1-D option inside each frame (zero padding
    not counted; it needs no grid).
    """

    name: ClassVar[str] = "value_norm"
    keep: float | int = 0.5
    smooth: int = 0
    adaptive_pooling: bool = False
    per_head: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_per_head(self.per_head, "ValueNorm")
        s = self.smooth
        if isinstance(s, bool) or not isinstance(s, int) or s < 0 or (s > 1 and s % 2 == 0):
            raise ConfigError(f"ValueNorm: smooth must be 0, 1 or an odd int >= 3; got {s!r}")
        if not isinstance(self.adaptive_pooling, bool):
            raise ConfigError(
                f"ValueNorm: adaptive_pooling must be true or false; got {self.adaptive_pooling!r}"
            )
        if self.adaptive_pooling and s > 1:
            raise ConfigError("ValueNorm: smooth and adaptive_pooling are exclusive; set one of them")

    def score(self, unit: Unit) -> torch.Tensor:
        scores = torch.stack([as_float(v).norm(dim=-1) for v in unit.values])  # [layers, kv_heads, n]
        if self.adaptive_pooling:
            scores = adaptive_pool(scores, unit)
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


# InfiniPot-V's layer-adaptive pooling (kvcache_utils.py: pooling_func_list, pool_size_list): per quarter of
# the layers, the pooling's dimensions and kernel size; 0 dimensions: none.
ADAPTIVE_POOLING = ((3, 7), (2, 5), (1, 3), (0, 1))


def adaptive_pooling_of(layer: int, n_layers: int) -> tuple[int, int]:
    """(dimensions, kernel size) of InfiniPot-V's pooling at `layer` of `n_layers`: the quarter index
    ``layer // max(1, n_layers // 4)`` (clamped to the last quarter where the reference would index past
    its lists, when `n_layers` is not a multiple of 4) into 3-D 7, 2-D 5, 1-D 3, none."""
    return ADAPTIVE_POOLING[min(layer // max(1, n_layers // 4), len(ADAPTIVE_POOLING) - 1)]


def adaptive_pool(scores: torch.Tensor, unit: Unit) -> torch.Tensor:
    """InfiniPot-V's layer-adaptive average pooling of per-token scores [layers, kv_heads, n] of `unit`.

    Layer l (of L = ``scores.shape[0]``) is pooled as `adaptive_pooling_of` says, with stride 1, padding
    ``k // 2`` and the zero padding counted in the mean (torch's ``count_include_pad=True``):

    - 3-D (first quarter, k = 7): over (frame, row, col) of the unit's frames, the frames stacked in order;
    - 2-D (second quarter, k = 5): over (row, col) within each frame;
    - 1-D (third quarter, k = 3): along the unit's token sequence, across frame boundaries;
    - none (last quarter).

    For 3-D and 2-D the kernel is ``min(k, F, rows, cols)`` (F = the unit's frames, for 2-D too), less 1
    if even, and no pooling if that is below 2 (a one-frame unit is not pooled); they need every frame's
    grid (`Unit.frame_grids`), all equal, otherwise the layer is not pooled; only the grid tokens (each
    span's last rows * cols, so not a video's opening token) are pooled.

    Source: InfiniPot-V (Kim et al., NeurIPS 2025, arXiv 2506.15745), ``aiha-lab/InfiniPot-V``
    ``kvcache_utils.py``, ``process_kv_cache`` with ``adaptive_pooling=True`` (method "infinipot-v"):
    ``val_norm_score`` [heads, n] reshaped to [heads, frames, height_width, -1] (height_width: the merged
    grid's rows, from the M-RoPE height ids) and pooled by ``AvgPool3d`` / ``AvgPool2d`` / ``AvgPool1d``
    before the TaR override and ``topk``. The reference pools the whole vision cache it compresses
    (F = its frames); videokv pools each unit as it is stored.
    """
    n_layers = scores.shape[0]
    out = scores.clone()
    grid_index = _grid_index(unit, scores.device)  # [F, rows, cols] token indices, or None
    for layer in range(n_layers):
        dims, size = adaptive_pooling_of(layer, n_layers)
        x = scores[layer]  # [kv_heads, n]
        if dims == 1:
            out[layer] = F.avg_pool1d(x[None], size, stride=1, padding=size // 2)[0]
        elif dims in (2, 3) and grid_index is not None:
            k = min(size, *grid_index.shape)
            if k % 2 == 0:
                k -= 1
            if k < 2:
                continue
            g = x[:, grid_index]  # [kv_heads, F, rows, cols]
            if dims == 2:
                pooled = F.avg_pool2d(g, k, stride=1, padding=k // 2)
            else:
                pooled = F.avg_pool3d(g[None], k, stride=1, padding=k // 2)[0]
            out[layer][:, grid_index.flatten()] = pooled.flatten(1)
    return out


def _grid_index(unit: Unit, device: torch.device) -> torch.Tensor | None:
    """The token index of each (frame, row, col) of the unit's frames, [F, rows, cols]; None unless every
    frame has a grid, all the same, that fits its span."""
    spans, grids = unit.frame_spans, unit.frame_grids
    if not spans or any(g is None for g in grids) or len(set(grids)) != 1:
        return None
    rows, cols = grids[0]
    m = rows * cols
    if m < 1 or any(end - start < m for start, end in spans):
        return None
    ends = torch.tensor([end for _, end in spans], device=device)
    return (ends[:, None] - m + torch.arange(m, device=device)).reshape(len(spans), rows, cols)
