"""Semantic segmentation (StreamKV): cut at scene changes, bound the unit length by merging similar frames."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch
import torch.nn.functional as F

from videokv.errors import ConfigError
from videokv.models.base import Piece
from videokv.policies.segment import Segmenter, SegmenterState


def _visual(piece: Piece) -> slice:
    """A frame piece's visual tokens: its last rows x cols (`Piece.hw`); text a family writes before them (a
    video's opening token, Qwen3-VL's timestamp, InternVL's frame label) is not the frame's content."""
    n = piece.hw[0] * piece.hw[1] if piece.hw else piece.n_tokens
    return slice(piece.n_tokens - n, None)


def _feature(piece: Piece) -> torch.Tensor:
    """A frame's feature: the mean of its visual tokens' embeddings (fp32)."""
    return piece.embeds[_visual(piece)].detach().float().mean(0)


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a, b, dim=0, eps=1e-8))


@dataclass(frozen=True)
class Semantic(Segmenter):
    """Cut the stream where consecutive frames stop looking alike, with a minimum and maximum unit length.

    From StreamKV (arXiv 2511.07278). A frame's feature is the mean of its visual tokens' embeddings (the
    text a family writes before a frame left out). Before a frame is added, the open unit is closed if it
    already holds `min_len` frames and the cosine similarity between this frame's feature and the previous
    frame's is below `threshold`. When a unit would exceed `max_len` frames, its most similar pair of
    adjacent frames is merged into one frame piece (visual token embeddings averaged element-wise; the text
    before them, positions, token ids and start time of the first, end time of the second), so a
    unit never holds more than `max_len` frames. If that pair cannot be merged (different token counts, or
    no two frames are adjacent), the unit is closed instead. Text pieces join the open unit.

    Parameters
    ----------
    threshold : float
        Cosine similarity in [-1, 1] below which two consecutive frames mark a scene change (StreamKV: 0.99).
    min_len : int
        Frames a unit must hold before a scene change may close it (>= 1; StreamKV: 4).
    max_len : int
        Most frames a unit holds (>= min_len; StreamKV: 64).
    """

    name: ClassVar[str] = "semantic"
    threshold: float = 0.99
    min_len: int = 4
    max_len: int = 64

    def __post_init__(self) -> None:
        if not -1.0 <= float(self.threshold) <= 1.0:
            raise ConfigError(f"Semantic: threshold is a cosine similarity in [-1, 1]; got {self.threshold}")
        if not isinstance(self.min_len, int) or self.min_len < 1:
            raise ConfigError(f"Semantic: min_len must be an int >= 1; got {self.min_len!r}")
        if not isinstance(self.max_len, int) or self.max_len < self.min_len:
            raise ConfigError(
                f"Semantic: max_len must be an int >= min_len ({self.min_len}); got {self.max_len!r}"
            )

    def start(self) -> SemanticState:
        return SemanticState(self.threshold, self.min_len, self.max_len)


class SemanticState(SegmenterState):
    """The open unit of a `Semantic` segmentation, its frame features, and the previous frame's feature."""

    def __init__(self, threshold: float, min_len: int, max_len: int) -> None:
        super().__init__()
        self.threshold = threshold
        self.min_len = min_len
        self.max_len = max_len
        self.features: list[torch.Tensor | None] = []  # aligned with self.open; None for text pieces
        self.previous: torch.Tensor | None = None

    def push(self, piece: Piece) -> list[list[Piece]]:
        if piece.kind != "frame":
            self.open.append(piece)
            self.features.append(None)
            return []
        done: list[list[Piece]] = []
        feature = _feature(piece)
        if (
            self.previous is not None
            and self.open_frames >= self.min_len
            and _cos(feature, self.previous) < self.threshold
        ):
            done.append(self._close())
        self.previous = feature
        self.open.append(piece)
        self.features.append(feature)
        if self.open_frames > self.max_len and not self._merge_most_similar():
            self.open.pop()
            self.features.pop()
            done.append(self._close())
            self.open.append(piece)
            self.features.append(feature)
        return done

    def _close(self) -> list[Piece]:
        self.features = []
        return super()._close()

    def _merge_most_similar(self) -> bool:
        """Merge the most similar adjacent pair of frame pieces; False if that pair cannot be merged."""
        best, best_sim = None, -float("inf")
        for i in range(len(self.open) - 1):
            a, b = self.features[i], self.features[i + 1]
            if a is None or b is None:
                continue
            sim = _cos(a, b)
            if sim > best_sim:
                best, best_sim = i, sim
        if best is None:
            return False
        first, second = self.open[best], self.open[best + 1]
        if first.embeds.shape != second.embeds.shape:
            return False
        embeds = first.embeds.clone()  # the first frame's text (a timestamp, a label), the two frames' mean
        visual = _visual(first)
        mean = (first.embeds[visual].float() + second.embeds[visual].float()) / 2
        embeds[visual] = mean.to(first.embeds.dtype)
        merged = replace(first, embeds=embeds, t1=second.t1, token_ids=list(first.token_ids))
        self.open[best : best + 2] = [merged]
        self.features[best : best + 2] = [_feature(merged)]
        return True
