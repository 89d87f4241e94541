"""SegmentSummary: one pseudo-frame per memory unit, the mean of its frames (StreamKV)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from videokv.models.base import Piece


@dataclass(frozen=True)
class SegmentSummary:
    """Adds to every unit with frames a "summary" pseudo-frame: the mean of the unit's frame embeddings over
    their visual tokens (the last `n` of each, past a video's opening token), placed after the unit's last
    frame with that frame's position layout and prefilled with the unit. It becomes a block of its own that
    retrieval scores like the others (compression never removes it; it is retrieved, not always attended).

    From StreamKV (arXiv 2511.07278, sou1p0wer/StreamKV ``abstract_streamkv.py``: the segment's mean frame
    feature appended as one more frame). No parameters. Units whose frames differ in size or grid get none.
    """

    name: ClassVar[str] = "segment_summary"

    def piece(self, frames: list[Piece], cursor: int) -> Piece | None:
        """The pseudo-frame of a unit's `frames`, starting at stream position `cursor`; None without one."""
        if not frames:
            return None
        last = frames[-1]
        n = last.n_tokens
        if any(f.n_tokens not in (n, n + 1) or f.grid != last.grid for f in frames):
            return None
        shift = cursor - int(last.positions.min())
        return Piece(
            torch.stack([f.embeds[-n:] for f in frames]).mean(0),
            last.positions + shift,
            "summary",
            frames[0].t0,
            last.t1,
            list(last.token_ids),
            grid=last.grid,
            hw=last.hw,
        )
