"""Guidance-prompt compression (StreamKV): keep the frames a generic instruction attends to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from videokv.errors import ConfigError
from videokv.policies.adaptive import adaptive_counts
from videokv.policies.base import BlockDraft, Unit, budget
from videokv.policies.compress.base import Compressor, as_float, check_keep, whole_unit_draft

DEFAULT_PROMPT = (
    "Watch this part of the video carefully and remember what matters: the important objects and people "
    "and what they look like, the actions and interactions taking place, any visible text or numbers, "
    "and every change, event or surprising moment, so that later questions about it can be answered."
)


@dataclass(frozen=True)
class Guidance(Compressor):
    """Keep, per layer, the whole frames of a unit that a guidance prompt attends to most.

    From StreamKV (arXiv 2511.07278). The engine appends a fixed, question-agnostic instruction after the
    unit in the same forward pass and records the attention each unit token receives from the prompt's
    queries (``unit.attention["guidance"]``, [layers, heads, n], averaged over prompt tokens); the prompt's
    own K/V is discarded. A frame's score on a layer is that attention averaged over heads and over the
    frame's tokens. The number of frames each layer keeps comes from `adaptive_counts` (layer-adaptive
    budgets around ``budget(n_frames, keep)``); each layer keeps its top-scoring frames whole.

    Parameters
    ----------
    prompt : str
        The guidance instruction (a generic request to attend to objects, people, actions, text and changes).
    keep : float or int
        A float in (0, 1] is the kept fraction of the unit's frames (at least 1), an int a frame count
        (StreamKV: 0.6).
    temp : float
        How far a layer's frame count may move from the mean, as a fraction of it (>= 0; StreamKV: 1).
    """

    name: ClassVar[str] = "guidance"
    needs: ClassVar[tuple[str, ...]] = ("guidance",)
    prompt: str = DEFAULT_PROMPT
    keep: float | int = 0.6
    temp: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ConfigError("Guidance: prompt must be a non-empty string")
        check_keep(self.keep, "Guidance")
        if not self.temp >= 0:
            raise ConfigError(f"Guidance: temp must be >= 0; got {self.temp!r}")

    def frame_scores(self, unit: Unit) -> torch.Tensor:
        """[layers, frames]: the guidance attention of each frame, averaged over heads and its tokens."""
        att = unit.attention.get("guidance")
        if att is None or att.dim() != 3 or att.shape[-1] != unit.n_tokens:
            got = None if att is None else tuple(att.shape)
            raise ConfigError(
                f"Guidance needs unit.attention['guidance'] of shape [layers, heads, {unit.n_tokens}]; "
                f"got {got}"
            )
        per_token = as_float(att).mean(1)  # [layers, n]
        return torch.stack([per_token[:, s:e].mean(1) for s, e in self._spans(unit)], 1)

    def compress(self, unit: Unit) -> list[BlockDraft]:
        spans = self._spans(unit)
        scores = self.frame_scores(unit)
        layers = scores.shape[0]
        counts = adaptive_counts(list(scores), budget(len(spans), self.keep), self.temp)
        index = []
        for layer in range(layers):
            order = torch.argsort(-scores[layer], stable=True)[: counts[layer]].sort().values
            index.append(torch.cat([torch.arange(*spans[f], device=scores.device) for f in order.tolist()]))
        return [whole_unit_draft(unit, index=index, level="full")]

    @staticmethod
    def _spans(unit: Unit) -> list[tuple[int, int]]:
        """The token spans of the unit's frames (the whole unit if it holds no frame piece)."""
        return [(s, e) for s, e in unit.frame_spans if e > s] or [(0, unit.n_tokens)]
