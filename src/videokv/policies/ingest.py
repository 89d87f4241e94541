"""Ingest policies: which cached tokens a new unit attends to while it is prefilled.

Every policy keeps the attention sinks (the header prompt) plus a suffix of the most recent stream tokens;
they differ in how long that suffix is. The engine trims its ingest context to `keep_tokens(...)` after
every unit. `tokens_per_frame` is the mean token count of the frames seen so far (0 before any), so windows
given in frames follow the model's frame size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from videokv.errors import ConfigError


@dataclass(frozen=True)
class Window:
    """Sinks + the most recent `tokens` stream tokens (None: the whole stream, i.e. exact full attention).

    Parameters
    ----------
    tokens: size of the recent window in tokens, or None for no limit.
    frames: the window as a number of frames instead (converted with the model's tokens per frame: ReKV's
        15000-token window is about 77 frames of LLaVA-OV's 196 tokens). Give at most one of the two.
    batch: units prefilled in one forward (default 1: one unit per forward, the window trimmed after each).
        With batch > 1 the window is trimmed after each batch, so a unit may see up to batch - 1 more
        units than the window, as in ReKV's chunked prefill; on a CPU a forward costs about the same for 10
        tokens as for 100 (the weights are read once), so this is several times faster for small units.
        Used only where nothing is computed per unit (no summaries, no attention statistics).

    Source: StreamingLLM (Xiao et al., "Efficient Streaming Language Models with Attention Sinks", ICLR 2024),
    as ReKV (ICLR 2025) and StreamKV (arXiv 2511.07278) use it while encoding video (n_init + n_local).
    """

    name: ClassVar[str] = "window"
    tokens: int | None = None
    frames: int | None = None
    batch: int = 1

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ConfigError(f"window batch must be >= 1; got {self.batch}")
        if self.tokens is not None and self.tokens < 1:
            raise ConfigError(f"window tokens must be >= 1 or None; got {self.tokens}")
        if self.frames is not None and self.frames < 1:
            raise ConfigError(f"window frames must be >= 1 or None; got {self.frames}")
        if self.tokens is not None and self.frames is not None:
            raise ConfigError("give the window in tokens or in frames, not both")

    def keep_tokens(self, unit_tokens: list[int], tokens_per_frame: float = 0.0) -> int | None:
        if self.frames is not None:
            return max(1, round(self.frames * tokens_per_frame)) if tokens_per_frame else None
        return self.tokens

    def unit_start(self, sink_end: int) -> int | None:
        """Where a unit's positions start (None: at the stream's cursor)."""
        return None


@dataclass(frozen=True)
class Independent:
    """Every unit is prefilled seeing only the sinks: blocks are independent of each other.

    Parameters
    ----------
    restart: True (MuKV): every unit is prefilled at positions starting right after the sinks, as MuKV
        encodes each block after its `n_init` initial tokens, so a block's keys do not depend on where in
        the stream it came; blocks then share positions, and a question re-places the retrieved ones one
        after another (needs positions="compact", which MuKV's question answering does: the retrieved
        blocks are concatenated after the init tokens and the question follows them). False (default):
        positions stay those of the stream.

    Source: MuKV (CVPR 2026, arXiv 2605.22269), which prefills each block with only the initial prompt as
    context (IMBALDY/MuKV ``model/abstract_mukv.py`` block encoding; ``model/attention/mukv_attention.py``
    applies RoPE over [init | retrieved | question] at question time).
    """

    name: ClassVar[str] = "independent"
    restart: bool = False

    def keep_tokens(self, unit_tokens: list[int], tokens_per_frame: float = 0.0) -> int | None:
        return 0

    def unit_start(self, sink_end: int) -> int | None:
        """Where a unit's positions start: right after the sinks with `restart`, else the stream's cursor."""
        return sink_end if self.restart else None


@dataclass(frozen=True)
class PrevBlocks:
    """A unit sees the sinks and the previous `n` units (block-sparse chunked prefill).

    Parameters
    ----------
    n: how many previous units stay visible.

    Source: Video-XL-2 chunk-based pre-filling (`prev_blocks_num`), the prefill behind Video-X²L
    (arXiv 2506.21184).
    """

    name: ClassVar[str] = "prev_blocks"
    n: int = 3

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ConfigError(f"prev_blocks n must be >= 0; got {self.n}")

    def keep_tokens(self, unit_tokens: list[int], tokens_per_frame: float = 0.0) -> int | None:
        return sum(unit_tokens[-self.n :]) if self.n else 0

    def unit_start(self, sink_end: int) -> int | None:
        """Where a unit's positions start (None: at the stream's cursor)."""
        return None


INGEST_POLICIES = {cls.name: cls for cls in (Window, Independent, PrevBlocks)}
