"""SegmentSummary: one pseudo-frame per memory unit, the mean of its frames (StreamKV)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from videokv.models.base import Piece


@dataclass(frozen=True)
class SegmentSummary:
    """Adds to every unit with frames a "summary" pseudo-frame: the mean of the unit's frame embeddings over
    their visual tokens (the last rows x cols of each, past the text a family writes before a frame: a
    video's opening token, a timestamp, a frame label), placed after the unit's last frame with the layout of
    that frame's visual tokens and prefilled with the unit. It becomes a block of its own that
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
        n = last.hw[0] * last.hw[1] if last.hw else last.n_tokens
        if any(f.hw != last.hw or f.grid != last.grid or f.n_tokens < n for f in frames):
            return None
        positions = last.positions[:, -n:]
        return Piece(
            torch.stack([f.embeds[-n:] for f in frames]).mean(0),
            positions + (cursor - int(positions.min())),
            "summary",
            frames[0].t0,
            last.t1,
            list(last.token_ids[-n:]),
            grid=last.grid,
            hw=last.hw,
        )
