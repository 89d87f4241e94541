"""Redundancy: drop older tokens that repeat the newest frames (InfiniPot-V's TaR)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from videokv.errors import ConfigError
from videokv.policies.base import Unit
from videokv.policies.compress.base import ScorerCompressor, as_float
from videokv.policies.compress.knorm import check_per_head, key_norm_score

_RECENT_SCORE = 2.0  # above any -cos, so the recent frames fill the budget first


@dataclass(frozen=True)
class Redundancy(ScorerCompressor):
    """Temporal-axis redundancy (TaR): keeps the newest frames and the older tokens least like them.

    The newest ``max(1, floor(recent * F))`` of the unit's F frames (at most F - 1) are the reference
    frames; their tokens rank first, so they are all kept whenever the budget allows it. Every token of an
    older frame is scored, per layer and KV head, by -cos(its key, the key at the same spatial slot (same
    index within its frame) of each reference frame), averaged over the reference frames; the rest of the
    budget goes to the highest-scoring (least redundant) older tokens. With `per_head` (as
    InfiniPot-V) every KV head keeps its own tokens (the draft's index is [kv_heads, k] per layer); without
    it the score is averaged over KV heads and a layer keeps one token set. The budget is a hard cap: if it
    is smaller than the reference frames, only their earliest tokens are kept (InfiniPot-V fails there).

    Fallback: when the unit has a single frame or frames of different token counts (slots are undefined),
    every token is scored as in `KeyNorm` (-||k||) and no frame is protected.

    Parameters
    ----------
    keep: a float in (0, 1] is the kept fraction of the unit's tokens (at least 1), an int a token count.
    recent: fraction of the unit's frames used as the always-kept reference, in (0, 1).
    rounding: how a keep ratio becomes a count, "floor" (``int(n * keep)``) or "round".
    per_head: select per KV head, as InfiniPot-V: each KV head of each layer keeps its own tokens, every head
        the same count, and the memory block stores them per head (`KVBlock` positions [kv_heads, P, n]). Off
        by default: no preset uses this scorer, and off keeps the meaning configs and saves had before blocks
        stored heads apart (one token set per layer, the same on every head).

    Source: InfiniPot-V (Kim et al., NeurIPS 2025, arXiv 2506.15745), Temporal-axis Redundancy (TaR), as in
    ``aiha-lab/InfiniPot-V`` ``kvcache_utils.py``, ``process_kv_cache`` (method "infinipot-v" with
    ``tar_ratio=1``: ``key_score`` = -mean over the ``int(F * query_ratio)`` newest frames of the per-head
    cosine at the same slot, ``topk`` per head, the newest frames' tokens always kept; ``query_ratio`` 0.25).
    """

    name: ClassVar[str] = "redundancy"
    keep: float | int = 0.5
    recent: float = 0.25
    per_head: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_per_head(self.per_head, "Redundancy")
        r = self.recent
        if isinstance(r, bool) or not isinstance(r, int | float) or not 0.0 < r < 1.0:
            raise ConfigError(f"Redundancy: recent must be a fraction of frames in (0, 1); got {r!r}")

    def score(self, unit: Unit) -> torch.Tensor:
        spans = unit.frame_spans
        sizes = {end - start for start, end in spans}
        if len(spans) < 2 or len(sizes) != 1:
            return key_norm_score(unit, self.per_head)
        n_frames, size = len(spans), sizes.pop()
        n_recent = min(max(1, int(self.recent * n_frames)), n_frames - 1)
        device = unit.keys[0].device
        starts = torch.tensor([start for start, _ in spans], device=device)
        slots = starts[:, None] + torch.arange(size, device=device)  # [F, size] token index of each slot
        older, recent = slots[:-n_recent].flatten(), slots[-n_recent:].flatten()
        out = []
        for k in unit.keys:
            kf = F.normalize(as_float(k)[:, slots], dim=-1, eps=1e-9)  # [heads, F, size, dim]
            ref = kf[:, -n_recent:].mean(dim=1)  # mean unit key of each slot over the reference frames
            cos = (kf[:, :-n_recent] * ref[:, None]).sum(dim=-1)  # [heads, F - n_recent, size]
            score = torch.zeros(cos.shape[0], unit.n_tokens, dtype=cos.dtype, device=device)
            score[:, older] = -cos.flatten(1)
            score[:, recent] = _RECENT_SCORE
            out.append(score if self.per_head else score.mean(dim=0))
        return torch.stack(out)
