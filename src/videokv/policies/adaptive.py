"""Layer-adaptive budgets (StreamKV, arXiv 2511.07278): how many items each layer keeps or retrieves.

StreamKV gives every layer the same *information mass* rather than the same count: per layer the scores are
z-normalised and softmaxed, and a layer keeps the fewest top items whose cumulative mass reaches a threshold
p shared by all layers. A layer whose scores are peaked reaches p with few items; a layer whose scores are
flat needs many. p is found by binary search so that the counts add up to `L * target`; the counts are then
rescaled into [target (1 - temp), target (1 + temp)] keeping that sum. The same routine sets the per-layer
frame budgets of the guidance compressor and the per-layer retrieval counts of `LayerAdaptive`.
"""

from __future__ import annotations

import math

import torch

from videokv.errors import ConfigError


def _cumulative_mass(scores: torch.Tensor) -> torch.Tensor:
    """Cumulative softmax mass of the z-normalised scores, sorted descending ([n], ends at ~1)."""
    s = scores.detach().float().flatten().cpu()
    if s.numel() > 1:
        std = s.std()
        z = (s - s.mean()) / std if bool(std > 0) and bool(torch.isfinite(std)) else torch.zeros_like(s)
    else:
        z = torch.zeros_like(s)
    return torch.softmax(z, dim=0).sort(descending=True).values.cumsum(0)


def _counts_at(cums: list[torch.Tensor], p: float) -> list[int]:
    """Per layer, the number of sorted items needed for the cumulative mass to reach `p` (at least 1)."""
    out = []
    for c in cums:
        i = int(torch.searchsorted(c, torch.tensor([p], dtype=c.dtype)).item())
        out.append(min(max(i + 1, 1), c.numel()))
    return out


def _rescale(
    counts: list[int], goal: int, lo: list[int], hi: list[int], lo_f: float, hi_f: float
) -> list[int]:
    """Map `counts` linearly onto [lo_f, hi_f], scale to sum `goal`, round, clamp to [lo, hi], fix the sum."""
    c = torch.tensor(counts, dtype=torch.float64)
    if c.numel() == 0:
        return []
    span = float(c.max() - c.min())
    if span == 0:
        scaled = torch.full_like(c, goal / c.numel())
    else:
        scaled = (c - c.min()) / span * (hi_f - lo_f) + lo_f
        total = float(scaled.sum())
        if total > 0:
            scaled = scaled * (goal / total)
    lo_t = torch.tensor(lo, dtype=torch.float64)
    hi_t = torch.tensor(hi, dtype=torch.float64)
    mapped = torch.minimum(torch.maximum(scaled.round(), lo_t), hi_t).long().tolist()
    # Hand out (or take back) the rounding/clamping difference one item at a time: the smallest counts
    # grow first, the largest shrink first, always within each layer's bounds.
    diff = goal - sum(mapped)
    while diff != 0:
        moved = False
        order = sorted(range(len(mapped)), key=lambda i: mapped[i], reverse=diff < 0)
        for i in order:
            if diff > 0 and mapped[i] < hi[i]:
                mapped[i] += 1
                diff -= 1
                moved = True
            elif diff < 0 and mapped[i] > lo[i]:
                mapped[i] -= 1
                diff += 1
                moved = True
            if diff == 0:
                break
        if not moved:
            break
    return mapped


def adaptive_counts(scores: list[torch.Tensor], target: int, temp: float) -> list[int]:
    """Per-layer counts with a shared cumulative-mass threshold (StreamKV's layer-adaptive budget).

    Parameters
    ----------
    scores : list of torch.Tensor
        One 1-D tensor per layer: the score of each candidate item (frame, block) on that layer. Layers may
        have different numbers of items, but none may be empty.
    target : int
        The mean count per layer; the counts add up to ``sum(min(target, len(scores[l])))``, i.e. ``L *
        target`` when every layer has at least `target` items.
    temp : float
        How far a layer may move from `target`: every count lies in ``[target (1 - temp), target (1 +
        temp)]`` (and in ``[1, len(scores[l])]``). 0 gives every layer exactly `target`.

    Returns
    -------
    list of int
        The number of items each layer keeps: peaked layers (mass concentrated on few items) get fewer,
        flat layers more.
    """
    if target < 1:
        raise ConfigError(f"adaptive_counts: target must be >= 1; got {target}")
    if temp < 0:
        raise ConfigError(f"adaptive_counts: temp must be >= 0; got {temp}")
    if not scores:
        return []
    sizes = [int(s.numel()) for s in scores]
    if min(sizes) == 0:
        raise ConfigError("adaptive_counts: every layer needs at least one score")
    goal = sum(min(target, n) for n in sizes)
    cums = [_cumulative_mass(s) for s in scores]

    # Binary search for the shared mass threshold whose counts add up closest to the goal
    # (the total count is non-decreasing in p).
    lo_p, hi_p = 0.0, 1.0
    best = _counts_at(cums, 1.0)
    for _ in range(60):
        mid = (lo_p + hi_p) / 2
        counts = _counts_at(cums, mid)
        total = sum(counts)
        if abs(total - goal) < abs(sum(best) - goal):
            best = counts
        if total == goal:
            break
        if total > goal:
            hi_p = mid
        else:
            lo_p = mid

    lo_f = max(1.0, target * (1 - temp))
    hi_f = max(lo_f, target * (1 + temp))
    lo = [min(n, max(1, math.ceil(lo_f - 1e-9))) for n in sizes]
    hi = [min(n, max(lo_i, math.floor(hi_f + 1e-9))) for n, lo_i in zip(sizes, lo)]
    return _rescale(best, goal, lo, hi, lo_f, hi_f)
