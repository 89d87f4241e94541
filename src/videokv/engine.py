"""The engine: the ingest / ask loop of one stream. Read top to bottom for the whole data flow.

1. Start: the chat template's header (system prompt, the user turn's opening) is prefilled; its tokens are
   the attention sinks.
2. Ingest: frames and timed-text events arrive in time order. Every `chunk_frames` frames, the buffered
   items become `Piece`s (the adapter embeds frames with the vision tower and gives every token explicit
   position ids), and one forward of the language model appends their K/V to the context cache. Each piece
   is recorded as a block (kind, time span, token range). The memory policy then trims the context
   (`window`: sinks + the most recent N tokens; `full`: nothing).
3. Ask: the question is prefilled into a *fork* of the context (the stream's memory never holds it), then
   greedy decoding streams the answer, or each option of a multiple-choice question is scored by its
   likelihood. The answer carries the time spans it attended to and the memory statistics.

Every change to the stream state happens inside `transaction()`: if anything fails mid-way (a corrupt frame
in the middle of a file, a bad array), the state is restored exactly as it was before the call.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from videokv.config import MemoryConfig
from videokv.errors import InputError
from videokv.memory.attention import use_videokv_attention
from videokv.memory.cache import ContextCache
from videokv.models.base import Adapter, Piece
from videokv.qa import DEFAULT_SYSTEM, Answer, Decoder, Evidence, question_text, split_template
from videokv.video.subtitles import TextEvent


@dataclass(frozen=True)
class Frame:
    """One sampled frame: its stream time (seconds) and RGB uint8 pixels [H, W, 3]."""

    t: float
    image: np.ndarray


@dataclass(frozen=True)
class BlockInfo:
    """A memory block: the tokens of one frame or one text event, with its stream time span.

    start is the block's offset in the sequence of non-sink tokens (header tokens past the sinks, then the
    stream), so a block is in the context when its range is at or after `first_kept`.
    """

    index: int
    kind: str
    t0: float
    t1: float
    start: int
    n_tokens: int
    text: str = ""


def format_event(event: TextEvent) -> str:
    """How a timed-text event is written into the stream: `[12.0s] text` on its own line."""
    return f"[{event.start:.1f}s] {event.text.strip()}\n"


class Engine:
    """Owns the adapter, the memory configuration and the state of one stream."""

    def __init__(
        self,
        adapter: Adapter,
        config: MemoryConfig,
        system: str = DEFAULT_SYSTEM,
        frame_interval: float = 1.0,
    ):
        self.adapter = adapter
        self.config = config
        self.frame_interval = frame_interval
        use_videokv_attention(adapter.model)
        header, tail = split_template(adapter.tokenizer, system)
        self.decoder = Decoder(adapter, tail)
        # ---- stream state (everything `transaction` snapshots) ----
        self.cache = ContextCache(adapter.num_layers)
        self.cursor = 0  # position id of the next token
        self.blocks: list[BlockInfo] = []
        self.non_sink_tokens = 0  # header tokens past the sinks + every stream token ever ingested
        self.first_kept = 0  # offset (in non-sink tokens) of the oldest token still in the context
        self.clock = 0.0  # stream time reached (seconds)
        self.ingest_seconds = 0.0
        self.frames_ingested = 0
        # 1. the header: its first `sinks` tokens are the attention sinks
        with torch.no_grad():
            piece = adapter.text_piece(header, 0, kind="prompt")
            adapter.forward(piece.embeds, piece.positions, self.cache, logits="none")
        self.cursor = adapter.next_cursor(piece)
        self.header_tokens = piece.n_tokens
        self.n_sinks = piece.n_tokens if config.sinks is None else min(config.sinks, piece.n_tokens)
        self.non_sink_tokens = piece.n_tokens - self.n_sinks
        self._apply_window()

    # ---- 2. ingest ----------------------------------------------------------------------------------
    def ingest(
        self,
        items: Iterable[Frame | TextEvent],
        chunk_frames: int = 1,
        on_frames: Callable[[int], None] | None = None,
        frame_interval: float | None = None,
    ) -> int:
        """Ingest frames and text events (in stream order); returns the number of blocks added.

        A frame's block spans [t, t + frame_interval) (default: the engine's). All-or-nothing: on any error
        the stream state is restored and the error re-raised.
        """
        interval = self.frame_interval if frame_interval is None else frame_interval
        if chunk_frames < 1:
            raise InputError(f"chunk_frames must be >= 1; got {chunk_frames}")
        added = 0
        with self.transaction(), torch.no_grad():
            buffer: list[Frame | TextEvent] = []
            n_frames = 0
            for item in items:
                buffer.append(item)
                n_frames += isinstance(item, Frame)
                if n_frames >= chunk_frames:
                    added += self._ingest_chunk(buffer, on_frames, interval)
                    buffer, n_frames = [], 0
            if buffer:
                added += self._ingest_chunk(buffer, on_frames, interval)
        return added

    def _ingest_chunk(
        self, items: list[Frame | TextEvent], on_frames: Callable[[int], None] | None, interval: float
    ) -> int:
        t_start = time.perf_counter()
        pieces = self._pieces(items, interval)
        embeds = torch.cat([p.embeds for p in pieces])
        positions = torch.cat([p.positions for p in pieces], dim=1)
        self.adapter.forward(embeds, positions, self.cache, logits="none")
        for p in pieces:
            self.blocks.append(
                BlockInfo(len(self.blocks), p.kind, p.t0, p.t1, self.non_sink_tokens, p.n_tokens, p.text)
            )
            self.non_sink_tokens += p.n_tokens
            self.clock = max(self.clock, p.t1)
        self._apply_window()
        n_frames = sum(p.kind == "frame" for p in pieces)
        self.frames_ingested += n_frames
        self.ingest_seconds += time.perf_counter() - t_start
        if on_frames is not None and n_frames:
            on_frames(n_frames)
        return len(pieces)

    def _pieces(self, items: list[Frame | TextEvent], interval: float) -> list[Piece]:
        """Embed items in order; runs of same-sized frames go through the vision tower together."""
        pieces: list[Piece] = []
        i = 0
        while i < len(items):
            item = items[i]
            if isinstance(item, TextEvent):
                pieces.append(
                    self.adapter.text_piece(format_event(item), self.cursor, "text", item.start, item.end)
                )
                self.cursor = self.adapter.next_cursor(pieces[-1])
                i += 1
                continue
            j = i
            while j < len(items) and isinstance(items[j], Frame) and items[j].image.shape == item.image.shape:
                j += 1
            run = items[i:j]
            frames = np.stack([f.image for f in run])
            new = self.adapter.frame_pieces(frames, np.array([f.t for f in run]), self.cursor, interval)
            pieces.extend(new)
            self.cursor = self.adapter.next_cursor(new[-1])
            i = j
        return pieces

    def _apply_window(self) -> None:
        """`window`: keep the sinks and the most recent `window` tokens; older tokens leave the context."""
        window = self.config.window
        if window is None or self.non_sink_tokens - self.first_kept <= window:
            return
        drop = self.non_sink_tokens - self.first_kept - window
        length = self.cache.lengths()[0]
        index = torch.cat([torch.arange(self.n_sinks), torch.arange(self.n_sinks + drop, length)])
        self.cache.keep(index.to(self.adapter.device))
        self.first_kept += drop

    # ---- 3. ask -----------------------------------------------------------------------------------------
    def ask(
        self,
        question: str,
        choices: list[str] | None = None,
        max_new_tokens: int = 64,
        on_token: Callable[[str], None] | None = None,
    ) -> Answer:
        """Answer `question` from memory; the stream's memory is left exactly as it was."""
        if not isinstance(question, str) or not question.strip():
            raise InputError("the question is empty; ask something about the stream")
        if choices is not None:
            if len(choices) < 2 or any(not isinstance(c, str) or not c.strip() for c in choices):
                raise InputError("choices must be at least two non-empty strings")
        if max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1; got {max_new_tokens}")
        context = self.cache.fork()
        prompt = question_text(question, choices)
        with torch.no_grad():
            if choices:
                best, scores, stats = self.decoder.score_choices(context, self.cursor, prompt, choices)
                text = choices[best]
                if on_token is not None:
                    on_token(text)
            else:
                best, scores = None, None
                text, stats = self.decoder.generate(context, self.cursor, prompt, max_new_tokens, on_token)
        stats.update(self.memory_stats())
        return Answer(question, text, self.evidence(), best, scores, stats)

    def evidence(self) -> list[Evidence]:
        """Time spans of the blocks in the context, adjacent blocks merged."""
        spans: list[Evidence] = []
        for b in self.blocks:
            if b.start < self.first_kept:
                continue
            last = spans[-1] if spans else None
            if last is not None and b.t0 <= last.t1 + 1e-6:
                kind = last.kind if b.kind in last.kind.split("+") else f"{last.kind}+{b.kind}"
                spans[-1] = Evidence(last.t0, max(last.t1, b.t1), kind, self.config.name)
            else:
                spans.append(Evidence(b.t0, b.t1, b.kind, self.config.name))
        return spans

    def memory_stats(self) -> dict:
        return {
            "memory": self.config.name,
            "memory_tokens": self.cache.lengths()[0],
            "memory_bytes": self.cache.nbytes,
            "stream_tokens": self.non_sink_tokens - (self.header_tokens - self.n_sinks),
            "blocks": len(self.blocks),
            "blocks_in_memory": sum(b.start >= self.first_kept for b in self.blocks),
            "frames": self.frames_ingested,
            "stream_seconds": round(self.clock, 3),
            "ingest_s": round(self.ingest_seconds, 4),
        }

    # ---- all-or-nothing changes ---------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Restore the stream state if the block raises. Tensors are never written in place, so keeping
        references is a complete snapshot."""
        layers = [(la.keys, la.values) for la in self.cache.layers]
        scalars = (
            self.cursor,
            self.non_sink_tokens,
            self.first_kept,
            self.clock,
            self.ingest_seconds,
            self.frames_ingested,
        )
        n_blocks = len(self.blocks)
        try:
            yield
        except BaseException:
            for la, (k, v) in zip(self.cache.layers, layers):
                la.keys, la.values = k, v
            (
                self.cursor,
                self.non_sink_tokens,
                self.first_kept,
                self.clock,
                self.ingest_seconds,
                self.frames_ingested,
            ) = scalars
            del self.blocks[n_blocks:]
            raise
