"""Layer-adaptive budgets (StreamKV, arXiv 2511.07278): how many items each layer keeps or retrieves.

StreamKV gives every layer the same *information mass* rather than the same count. Per layer the scores are
z-normalised (unbiased std) and softmaxed, sorted descending and summed cumulatively; a layer's count at a
threshold p is the number of items whose cumulative mass is strictly below p (at least 1). p is found by
bisection on [0, 1] until the total count is within `tolerance` (5) of the target, or the interval is
narrower than 1e-6 (then the last midpoint's counts are used). The counts are then mapped linearly onto
[lo, hi], rescaled to the *searched* sum, rounded half to even, clipped to [lo, hi], and the rounding
difference is handed out (or taken back) in one pass, smallest counts first (largest first when taking).

Source: ``sou1p0wer/StreamKV`` ``model/abstract_streamkv.py``, ``obtain_cdf_num`` and
``rescale_sum_match``; used in ``Abstract_StreamKV._encode_video_chunk`` (frame budgets: target
``int(L * F * compression_ratio)``, range ``[max(1, int(F r (1 - temp))), min(F, int(F r (1 + temp)))]``)
and ``LlavaOneVision_StreamKV.question_answering`` (retrieval counts: target ``L * retrieve_size``, range
``[max(k (1 - temp), 1), min(k (1 + temp), 128)]``). The routine is written here from that description.
"""

from __future__ import annotations

import numpy as np
import torch

from videokv.errors import ConfigError

TOLERANCE = 5  # StreamKV stops the bisection once |total - target| < 5


def cumulative_mass(scores: torch.Tensor) -> torch.Tensor:
    """Cumulative softmax mass of the z-normalised scores, sorted descending, in float32 ([n], ends at ~1).

    A single item, or scores with zero spread, get a uniform softmax (StreamKV divides by a zero or NaN std
    there)."""
    s = scores.detach().flatten().cpu().float()
    std = s.std() if s.numel() > 1 else torch.tensor(float("nan"))
    if bool(torch.isfinite(std)) and bool(std > 0):
        z = (s - s.mean()) / std
    else:
        z = torch.zeros_like(s)
    return torch.softmax(z, dim=0).sort(descending=True).values.cumsum(0)


def cdf_counts(scores: list[torch.Tensor], target: int, tolerance: int = TOLERANCE) -> list[int]:
    """Per layer, how many items to take at the shared mass threshold found by bisection (StreamKV's
    ``obtain_cdf_num``): the number of items whose cumulative mass is strictly below p, at least 1."""
    if not scores:
        return []
    if min(int(s.numel()) for s in scores) == 0:
        raise ConfigError("cdf_counts: every layer needs at least one score")
    cums = [cumulative_mass(s) for s in scores]

    def counts_at(p: float) -> list[int]:
        p32 = torch.tensor([p], dtype=torch.float32)
        return [max(1, int(torch.searchsorted(c, p32, right=False).item())) for c in cums]

    left, right, mid = 0.0, 1.0, 0.0
    while right - left > 1e-6:
        mid = (left + right) / 2.0
        total = sum(counts_at(mid))
        if abs(total - target) < tolerance:
            break
        if total > target:
            right = mid
        else:
            left = mid
    return counts_at(mid)


def rescale_sum_match(counts: list[int], lo: float, hi: float) -> list[int]:
    """StreamKV's ``rescale_sum_match``: map `counts` linearly onto [lo, hi], scale to their own sum, round
    half to even, clip to [lo, hi], then hand out the rounding difference one pass, one item each. Equal
    counts are returned unchanged (not clipped), as there."""
    arr = np.asarray(counts, dtype=float)
    if arr.size == 0:
        return []
    total = arr.sum()
    amin, amax = arr.min(), arr.max()
    if amin == amax:
        return [int(c) for c in arr]
    scaled = (arr - amin) / (amax - amin) * (hi - lo) + lo
    mapped = np.clip(np.round(scaled * (total / scaled.sum())), lo, hi)
    diff = int(round(total - mapped.sum()))
    if diff != 0:
        order = np.argsort(mapped) if diff > 0 else np.argsort(-mapped)
        step = 1 if diff > 0 else -1
        for i in order:
            if (step > 0 and mapped[i] < hi) or (step < 0 and mapped[i] > lo):
                mapped[i] += step
                diff -= step
                if diff == 0:
                    break
    return [int(c) for c in mapped.astype(np.int32)]


def streamkv_counts(scores: list[torch.Tensor], target: int, lo: float, hi: float) -> list[int]:
    """Per-layer counts: `cdf_counts` towards `target` (the total over layers), then `rescale_sum_match`
    onto [lo, hi]; counts below 1 become 1 (as StreamKV's ``reserved_nums[reserved_nums < 1] = 1``).

    Parameters
    ----------
    scores : list of torch.Tensor
        One 1-D tensor per layer: the score of each candidate item (frame, block) on that layer.
    target : int
        The wanted total over layers (StreamKV: ``int(L * F * ratio)`` frames, ``L * k`` blocks).
    lo, hi : float
        The per-layer range of the rescale.
    """
    if target < 1:
        raise ConfigError(f"streamkv_counts: target must be >= 1; got {target}")
    if not lo <= hi:
        raise ConfigError(f"streamkv_counts: the range is empty (lo {lo} > hi {hi})")
    counts = rescale_sum_match(cdf_counts(scores, target), lo, hi)
    return [max(1, c) for c in counts]
