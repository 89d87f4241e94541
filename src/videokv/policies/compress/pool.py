"""Pool: average-pool each frame's K/V along the token axis (Video-XL-2 / Video-X²L high-compression KV)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from videokv.errors import ConfigError
from videokv.policies.base import BlockDraft, Unit
from videokv.policies.compress.base import Compressor, as_float, whole_unit_draft


@dataclass(frozen=True)
class Pool(Compressor):
    """Within each frame piece, averages K and V over consecutive windows of `stride` tokens.

    Windows never cross frame boundaries. With ``partial="drop"`` (Video-XL-2: ``F.avg_pool1d`` with kernel
    = stride and no ceil mode) a frame of m tokens becomes floor(m / stride) pooled tokens and the last m
    mod stride tokens are dropped; a frame shorter than `stride` (where the reference's avg_pool1d fails)
    becomes one token, the mean of all of it. With ``partial="keep"`` it becomes ceil(m / stride) pooled
    tokens, the last window shorter. A pooled token sits at the position (all P rows) of its window's first
    token, so its key is the mean of keys rotated at nearby positions and is not re-rotated. Means are taken
    in at least float32 and cast back to the K/V dtype. The draft carries keys/values/positions (no index),
    at level "H".

    Parameters
    ----------
    stride: window length in tokens (>= 1; 1 copies the frame tokens unchanged).
    partial: "drop" (Video-XL-2) or "keep" the shorter last window of a frame.

    Source: Video-X²L (Qin et al., arXiv 2506.21184) high-ratio H-KVs, as in the public Video-XL-2 code
    (``VectorSpaceLab/Video-XL``, ``eval/lvu/w_chunk_bilevel``): visual K/V average-pooled along the sequence
    with stride ``compression`` (4 there); ``videoxl2/model/language_model/llava_qwen.py``,
    ``LlavaQwenForCausalLM.pooling_kvs`` (``F.avg_pool1d(kernel_size=step, stride=step)`` over the visual
    tokens of a frame group; here windows stay inside each frame, the same when `stride` divides the frame).
    """

    name: ClassVar[str] = "pool"
    stride: int = 4
    partial: str = "drop"

    def __post_init__(self) -> None:
        if isinstance(self.stride, bool) or not isinstance(self.stride, int) or self.stride < 1:
            raise ConfigError(f"Pool: stride must be an int >= 1; got {self.stride!r}")
        if self.partial not in ("drop", "keep"):
            raise ConfigError(f"Pool: partial must be 'drop' or 'keep'; got {self.partial!r}")

    def compress(self, unit: Unit) -> list[BlockDraft]:
        device = unit.positions.device
        tokens, groups, firsts = [], [], []
        n_groups = 0
        for start, end in unit.frame_spans:
            if self.partial == "drop" and end - start >= self.stride:
                end -= (end - start) % self.stride
            length = end - start
            tokens.append(torch.arange(start, end, device=device))
            groups.append(torch.arange(length, device=device) // self.stride + n_groups)
            firsts.append(torch.arange(start, end, self.stride, device=device))
            n_groups += -(-length // self.stride)
        empty = torch.zeros(0, dtype=torch.long, device=device)
        tokens_t = torch.cat(tokens) if tokens else empty
        groups_t = torch.cat(groups) if groups else empty
        firsts_t = torch.cat(firsts) if firsts else empty
        counts = torch.bincount(groups_t, minlength=n_groups).clamp(min=1)

        def pool(x: torch.Tensor) -> torch.Tensor:  # [heads, n, dim] -> [heads, n_groups, dim]
            sel = as_float(x[:, tokens_t.to(x.device)])
            out = torch.zeros(x.shape[0], n_groups, x.shape[2], dtype=sel.dtype, device=x.device)
            out.index_add_(1, groups_t.to(x.device), sel)
            return (out / counts.to(x.device)[None, :, None]).to(x.dtype)

        positions = unit.positions[:, firsts_t]
        return [
            whole_unit_draft(
                unit,
                keys=[pool(k) for k in unit.keys],
                values=[pool(v) for v in unit.values],
                positions=[positions] * len(unit.keys),
                level="H",
            )
        ]
