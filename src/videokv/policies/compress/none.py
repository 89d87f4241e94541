"""NoCompression: store every token of the unit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from videokv.policies.base import BlockDraft, Unit
from videokv.policies.compress.base import Compressor, whole_unit_draft


@dataclass(frozen=True)
class NoCompression(Compressor):
    """Keeps every token of the unit on every layer (index = 0 .. n-1).

    The uncompressed baseline: the memory of ReKV (ICLR 2025) and StreamKV (arXiv 2511.07278), which store
    the full KV of every frame and only select at question time.

    Parameters
    ----------
    offload: keep every block (frames, text, summaries) in the store's cold lane, loaded only when a question
        retrieves it: ReKV's economy (the whole video KV in CPU memory, the retrieved blocks copied to the
        accelerator per question), which on a CPU-only machine puts the blocks on disk. Default False.
    """

    name: ClassVar[str] = "none"
    offload: bool = False

    def cold(self, level: str, kind: str) -> bool:
        return self.offload

    def compress(self, unit: Unit) -> list[BlockDraft]:
        device = unit.keys[0].device if unit.keys else unit.positions.device
        index = torch.arange(unit.n_tokens, device=device)
        return [whole_unit_draft(unit, index=[index] * len(unit.keys), level="full")]
