"""Uniform segmentation: a unit every `frames` frames (ReKV stores one block per frame)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from videokv.errors import ConfigError
from videokv.models.base import Piece
from videokv.policies.segment import Segmenter, SegmenterState


@dataclass(frozen=True)
class Uniform(Segmenter):
    """Cut the stream into units of a fixed number of frames.

    ReKV ("Streaming Video Question-Answering with In-context Video KV-Cache Retrieval", ICLR 2025) keeps one
    memory block per frame, which is ``Uniform(frames=1)``. Text pieces join the open unit without counting.

    Parameters
    ----------
    frames : int
        Frame pieces per unit (>= 1). A unit closes as soon as it holds this many frames.
    """

    name: ClassVar[str] = "uniform"
    frames: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.frames, int) or self.frames < 1:
            raise ConfigError(f"Uniform: frames must be an int >= 1; got {self.frames!r}")

    def start(self) -> UniformState:
        return UniformState(self.frames)


class UniformState(SegmenterState):
    """The open unit of a `Uniform` segmentation."""

    def __init__(self, frames: int) -> None:
        super().__init__()
        self.frames = frames

    def push(self, piece: Piece) -> list[list[Piece]]:
        self.open.append(piece)
        if piece.kind == "frame" and self.open_frames >= self.frames:
            return [self._close()]
        return []
