"""Bilevel: store every unit twice, at a low and a high compression ratio (Video-X²L)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

from videokv.errors import ConfigError
from videokv.policies.base import BlockDraft, Unit
from videokv.policies.compress.base import Compressor
from videokv.policies.compress.none import NoCompression
from videokv.policies.compress.pool import Pool


def _default_high() -> Compressor:
    return Pool(stride=8)


@dataclass(frozen=True)
class Bilevel(Compressor):
    """Compresses the unit twice: the `low` drafts get level "L", the `high` drafts level "H".

    A retriever then reloads the L copy of the most relevant units and uses the small H copy for the rest,
    merged in temporal order.

    Parameters
    ----------
    low: the compressor of the L copy. Default `NoCompression()`: as in Video-XL-2's public bi-level code,
        the reloaded chunks are exact (full KV).
    high: the compressor of the H copy. Default `Pool(stride=8)`: between Video-XL-2's stride 4 and the
        ~32x H ratio reported for Video-X²L, so that H blocks stay cheap but keep coarse content.
    offload_low: the exact copies (the L blocks, and text kept whole) wait in the store's cold lane while the
        compact H copy of every unit stays in the fastest tier: X²L's economy (H-KV on the accelerator, L-KV
        in CPU memory, reloaded for the chosen chunks only). Default False (every block in the fastest tier
        the budgets allow).

    Source: Video-X²L (Qin et al., arXiv 2506.21184), bi-level KV compression with selective re-loading;
    code reference ``VectorSpaceLab/Video-XL``, ``Video-XL-2/eval/lvu/w_chunk_bilevel``.
    """

    name: ClassVar[str] = "bilevel"
    low: Compressor = field(default_factory=NoCompression)
    high: Compressor = field(default_factory=_default_high)
    offload_low: bool = False

    def cold(self, level: str, kind: str) -> bool:
        return self.offload_low and (level == "L" or kind == "text")

    def __post_init__(self) -> None:
        for label, c in (("low", self.low), ("high", self.high)):
            if not isinstance(c, Compressor):
                raise ConfigError(f"Bilevel: {label} must be a compressor; got {c!r}")
            if isinstance(c, Bilevel):
                raise ConfigError(
                    f"Bilevel: {label} cannot itself be Bilevel (its levels would be overwritten)"
                )

    @property
    def needs(self) -> tuple[str, ...]:  # type: ignore[override]
        """The statistics either level needs (an instance property: it depends on `low` and `high`)."""
        return tuple(dict.fromkeys(self.low.needs + self.high.needs))

    def forward_prompt(self) -> str | None:
        """The levels' prompt (one forward serves both; two different prompts are refused)."""
        prompts = {p for p in (self.low.forward_prompt(), self.high.forward_prompt()) if p is not None}
        if len(prompts) > 1:
            raise ConfigError("Bilevel: low and high need different forward prompts; give them the same one")
        return prompts.pop() if prompts else None

    @property
    def prompt_sees_unit(self) -> bool:  # type: ignore[override]
        """Whether the levels' forward prompt sees only the unit (the levels that forward one must agree)."""
        scopes = {c.prompt_sees_unit for c in (self.low, self.high) if c.forward_prompt() is not None}
        if len(scopes) > 1:
            raise ConfigError("Bilevel: low and high want their forward prompt to see different context")
        return scopes.pop() if scopes else False

    def compress(self, unit: Unit) -> list[BlockDraft]:
        low = [dataclasses.replace(d, level="L") for d in self.low.compress(unit)]
        high = [dataclasses.replace(d, level="H") for d in self.high.compress(unit)]
        return low + high
