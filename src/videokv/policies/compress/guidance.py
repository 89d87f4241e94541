"""Guidance-prompt compression (StreamKV): keep the frames a generic instruction attends to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from videokv.errors import ConfigError
from videokv.policies.adaptive import streamkv_counts
from videokv.policies.base import BlockDraft, Unit
from videokv.policies.compress.base import Compressor, as_float, check_keep, whole_unit_draft

DEFAULT_PROMPT = (
    "Watch this part of the video carefully and remember what matters: the important objects and people "
    "and what they look like, the actions and interactions taking place, any visible text or numbers, "
    "and every change, event or surprising moment, so that later questions about it can be answered."
)


@dataclass(frozen=True)
class Guidance(Compressor):
    """Keep, per layer, the whole frames of a unit that a guidance prompt's queries match best.

    From StreamKV (arXiv 2511.07278). The engine appends a fixed, question-agnostic instruction after the
    unit in the same forward pass, the prompt attending only to the unit and to itself (`prompt_sees_unit`:
    StreamKV's encode prompt sees the current segment, its summary included, not the context before it; the
    unit itself attends to the context as usual), and records, per layer, the prompt's pre-RoPE queries
    averaged over its tokens and summed within each KV-head group (``unit.attention["guidance_q"]``,
    [layers, kv_heads, d]) and the unit tokens' pre-RoPE keys (``unit.attention["prerope_k"]``,
    [layers, kv_heads, n, d]); the prompt's own K/V is discarded. A frame's score on a layer is the inner
    product of that query with the frame's mean pre-RoPE key, summed over KV heads (= StreamKV's mean prompt
    query . the frame block's GQA-repeated mean key). Each kept frame is a block of its own (present at the
    layers that kept it). The number of frames each layer keeps comes from `streamkv_counts`: target
    ``int(L * F * keep)`` over the L layers, range ``[max(1, int(F keep (1 - temp))), min(F, int(F keep
    (1 + temp)))]``; each layer keeps its top-scoring frames whole.

    Parameters
    ----------
    prompt : str
        The guidance instruction (a generic request to attend to objects, people, actions, text and changes).
    keep : float or int
        A float in (0, 1] is the kept fraction of the unit's frames, an int a frame count (StreamKV: 0.6).
    temp : float
        How far a layer's frame count may move from ``F * keep``, as a fraction of it (>= 0; StreamKV: 1).

    Source: ``sou1p0wer/StreamKV``: ``model/attention/kv_cache_manager.py`` ``ContextManager.calculate_score``
    (mean over prompt tokens of the pre-RoPE ``h_q``, dot the per-frame ``block_k``, i.e. the mean of the
    frame's pre-RoPE keys repeated per GQA group) and ``compress_kv`` (top ``reserved_num`` frames per
    layer), with the budgets of ``model/abstract_streamkv.py`` ``_encode_video_chunk``; the prompt's
    attention: ``model/attention/streamkv_attention.py`` (the compression branch: the prompt's queries
    against the chunk's own keys only, RoPE over the chunk, ``sliding_window=n_local``).
    """

    name: ClassVar[str] = "guidance"
    needs: ClassVar[tuple[str, ...]] = ("guidance_qk",)
    prompt_sees_unit: ClassVar[bool] = True
    prompt: str = DEFAULT_PROMPT
    keep: float | int = 0.6
    temp: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ConfigError("Guidance: prompt must be a non-empty string")
        check_keep(self.keep, "Guidance")
        if not self.temp >= 0:
            raise ConfigError(f"Guidance: temp must be >= 0; got {self.temp!r}")

    def forward_prompt(self) -> str:
        return self.prompt

    def frame_scores(self, unit: Unit) -> torch.Tensor:
        """[layers, frames]: the prompt's mean pre-RoPE query . each frame's mean pre-RoPE key."""
        q, k = unit.attention.get("guidance_q"), unit.attention.get("prerope_k")
        layers, kv_heads = len(unit.keys), unit.keys[0].shape[0]
        if (
            q is None
            or k is None
            or q.dim() != 3
            or k.dim() != 4
            or tuple(q.shape[:2]) != (layers, kv_heads)
            or tuple(k.shape[:3]) != (layers, kv_heads, unit.n_tokens)
        ):
            shapes = [None if t is None else tuple(t.shape) for t in (q, k)]
            raise ConfigError(
                f"Guidance needs unit.attention['guidance_q'] [layers, kv_heads, d] and ['prerope_k'] "
                f"[layers, kv_heads, {unit.n_tokens}, d] (its needs include 'guidance_qk'); "
                f"got {shapes[0]}, {shapes[1]}"
            )
        q, k = as_float(q), as_float(k)
        means = torch.stack([k[:, :, s:e].mean(2) for s, e in self._spans(unit)], 2)  # [L, kv, F, d]
        return torch.einsum("lhfd,lhd->lf", means, q.to(means.dtype))

    def budgets(self, scores: torch.Tensor) -> list[int]:
        """Frames kept per layer for frame scores [layers, F] (StreamKV's ``reserved_nums``)."""
        layers, n_frames = scores.shape
        if n_frames == 1:
            return [1] * layers
        ratio = float(self.keep) if isinstance(self.keep, float) else min(self.keep, n_frames) / n_frames
        mean = n_frames * ratio
        target = max(1, int(layers * n_frames * ratio))
        lo = max(1, int(mean * (1 - self.temp)))
        hi = max(lo, min(n_frames, int(mean * (1 + self.temp))))
        return [min(n_frames, c) for c in streamkv_counts(list(scores), target, lo, hi)]

    def compress(self, unit: Unit) -> list[BlockDraft]:
        """One block per frame, as StreamKV's blocks are frames: a frame's K/V is kept at the layers whose
        budget it made, and is empty (0 tokens) at the others, so each layer holds its own frames."""
        spans = self._spans(unit)
        scores = self.frame_scores(unit)
        counts = self.budgets(scores)
        kept = [
            set(torch.argsort(-scores[layer], stable=True)[:c].tolist()) for layer, c in enumerate(counts)
        ]
        frames = [p for p in unit.pieces if p.kind == "frame"]
        if len(frames) != len(spans):  # no frame pieces: the whole unit is one block
            index = [torch.cat([torch.arange(*spans[f]) for f in sorted(k)]) for k in kept]
            return [whole_unit_draft(unit, index=index, level="full")]
        empty = torch.zeros(0, dtype=torch.long, device=scores.device)
        drafts = []
        for f, ((a, b), piece) in enumerate(zip(spans, frames)):
            if not any(f in k for k in kept):
                continue
            index = [torch.arange(a, b, device=scores.device) if f in k else empty for k in kept]
            drafts.append(BlockDraft("frame", piece.t0, piece.t1, index=index, level="full"))
        return drafts

    @staticmethod
    def _spans(unit: Unit) -> list[tuple[int, int]]:
        """The token spans of the unit's frames (the whole unit if it holds no frame piece)."""
        return [(s, e) for s, e in unit.frame_spans if e > s] or [(0, unit.n_tokens)]
