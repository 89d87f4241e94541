"""Segmenters: how the stream of frame and text pieces is cut into memory units.

A segmenter is a frozen dataclass of parameters; it carries no state. `start()` returns a fresh, independent
`SegmenterState` (one per session) whose `push(piece)` returns the units completed by that piece and whose
`flush()` returns the open unit, if any. A unit is a list of pieces forwarded together. Text pieces (any
kind other than "frame") join the open unit without counting as frames and never cause a cut by themselves.

- `Uniform(frames)`: a unit every `frames` frames (ReKV: one frame per unit).
- `Semantic(threshold, min_len, max_len)`: StreamKV's scene-change segmentation with bounded length.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from videokv.models.base import Piece


class SegmenterState(ABC):
    """The mutable state of one session's segmentation: the open unit and whatever the rule needs."""

    def __init__(self) -> None:
        self.open: list[Piece] = []

    @property
    def open_frames(self) -> int:
        """Frame pieces in the open unit."""
        return sum(p.kind == "frame" for p in self.open)

    @abstractmethod
    def push(self, piece: Piece) -> list[list[Piece]]:
        """Add `piece` to the stream; return the units it completes (oldest first, often none)."""

    def flush(self) -> list[list[Piece]]:
        """Close the open unit (end of stream, or a question arrives); return it, or nothing if empty."""
        return [self._close()] if self.open else []

    def _close(self) -> list[Piece]:
        unit, self.open = self.open, []
        return unit


@dataclass(frozen=True)
class Segmenter(ABC):
    """Base class of the segmenters: parameters only; `start()` makes a session's state."""

    name: ClassVar[str] = "segmenter"

    @abstractmethod
    def start(self) -> SegmenterState:
        """A fresh segmentation state for a new session."""


from videokv.policies.segment.semantic import Semantic  # noqa: E402
from videokv.policies.segment.uniform import Uniform  # noqa: E402

__all__ = ["Segmenter", "SegmenterState", "Semantic", "Uniform"]
