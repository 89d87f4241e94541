"""The engine: the ingest / ask loop of one stream. Read top to bottom for the whole data flow.

1. Start: the checkpoint's chat template is cut around one user turn [video, question] (`qa.prompt_layout`);
   its header (system prompt, the user turn's opening) is prefilled; its first `sinks` tokens are the
   attention sinks.
2. Ingest: frames and timed-text events arrive in time order. The adapter embeds them into `Piece`s with
   explicit position ids, laid out as the official processor lays out a video (frames go through the
   vision tower in batches): frames join the open video, `frames_per_piece` at a time (Qwen2-VL pairs
   consecutive frames in one temporal patch; an odd frame waits in `pending` for its partner, and timed
   text arriving meanwhile waits with it in `deferred`); timed text closes the open video (its closing
   token goes first) and the next frame opens a new one.
   - Context mode (`retrieve` is None: the `full` and `window` presets): pieces are forwarded in chunks of
     `chunk_frames` frames; the context cache *is* the memory; the ingest policy trims it.
   - Memory mode (a retriever is set): the segmenter groups pieces into units; each unit is prefilled
     against the ingest context (sinks + the recent tokens the ingest policy keeps), with the statistics the
     compressor asked for (a guidance prompt's attention, the unit's own attention). Its K/V become blocks:
     text pieces whole, frames through the compressor (at one or more levels); a StreamKV summary
     pseudo-frame is added when configured. A compressor may also ask for token ranges of the unit's frames
     to be prefilled each on its own after the sinks (`Compressor.alone_ranges`: MuKV's frame and patch
     blocks), in one extra forward with the ranges masked from each other; it gets their K/V as `unit.alone`.
     Blocks go to the tiered store, their retrieval keys to the index.
3. Ask: the question never enters the stream's memory. What the question sees after the memory but is not
   in it (`_lead`: the pending frame padded as the processor pads an odd frame, deferred text, the open
   video's closing token) is prefilled with the question.
   - Context mode: the question is prefilled into a fork of the context.
   - Memory mode: the question is first prefilled against the ingest context to capture its per-layer
     queries (the retrieval forward); the retriever picks blocks per layer; the context is assembled as
     [sinks | selected blocks] with positions kept or compacted; then the question is prefilled into it.
   Then greedy decoding streams the answer, or each option of a multiple-choice question is scored by its
   likelihood. The answer carries the time spans it attended to and the memory statistics.

Every change to the stream state happens inside `transaction()`: if anything fails mid-way (a corrupt frame
in the middle of a file, a block over budget), the state is restored exactly as it was before the call.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from videokv.config import MemoryConfig
from videokv.errors import InputError
from videokv.generation import GenerationOptions
from videokv.memory.assemble import assemble, assemble_layer
from videokv.memory.attention import confine_to_new, observe_attention, separate_groups
from videokv.memory.block import KVBlock, select_tokens
from videokv.memory.cache import ContextCache
from videokv.memory.index import Index
from videokv.memory.layerwise import layerwise_forward, summarize_queries
from videokv.memory.projections import Projections, record_projections
from videokv.memory.query import capture_query
from videokv.memory.store import Store
from videokv.models.base import Adapter, Piece, piece_spans
from videokv.models.rope import unrotate
from videokv.policies.base import BlockDraft, Unit
from videokv.policies.compress.base import Compressor
from videokv.qa import (
    DEFAULT_SYSTEM,
    Answer,
    Decoder,
    Evidence,
    check_question,
    drain,
    prompt_layout,
    question_text,
)
from videokv.video.subtitles import TextEvent


@dataclass(frozen=True)
class Frame:
    """One sampled frame: its stream time (seconds) and RGB uint8 pixels [H, W, 3]."""

    t: float
    image: np.ndarray


@dataclass(frozen=True)
class BlockInfo:
    """A block of the context (context mode): one frame or text event, its time span and token range.

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

    # the scalar part of the stream state (snapshotted by `transaction`, saved by persist.py)
    SCALAR_STATE = (
        "frame_tokens",
        "cursor",
        "n_sinks",
        "header_tokens",
        "non_sink_tokens",
        "first_kept",
        "clock",
        "ingest_seconds",
        "frames_ingested",
        "frame_interval",
        "video",
        "last_interval",
    )

    def __init__(
        self,
        adapter: Adapter,
        config: MemoryConfig,
        system: str | None = DEFAULT_SYSTEM,
        frame_interval: float = 1.0,
    ):
        self.adapter = adapter
        self.config = config
        self.frame_interval = frame_interval
        self.memory_mode = config.retrieve is not None
        self.layout = prompt_layout(adapter.tokenizer, adapter.placeholder, system)
        self.decoder = Decoder(adapter, self.layout)
        # ---- stream state (everything `transaction` snapshots) ----
        self.cache = ContextCache(adapter.num_layers)  # the ingest context
        self.cursor = 0  # position id of the next token
        self.blocks: list[BlockInfo] = []  # context mode
        self.store = Store(adapter.device, config.device_bytes, config.host_bytes, config.spill_dir)
        self.index = Index(config.index)
        self.segmenter = config.segment.start()
        self.unit_tokens: list[int] = []  # tokens of each unit, for the ingest policy
        self.non_sink_tokens = 0  # header tokens past the sinks + every stream token ever ingested
        self.first_kept = 0  # offset (in non-sink tokens) of the oldest token still in the context
        self.clock = 0.0  # stream time reached (seconds)
        self.ingest_seconds = 0.0
        self.frames_ingested = 0
        self.frame_tokens = 0  # tokens of every frame ingested (for windows given in frames)
        self.video: dict | None = None  # the open video (the adapter's state of it), None between videos
        self.pending: list[Frame] = []  # frames waiting for the rest of their temporal patch
        self.deferred: list[TextEvent] = []  # timed text that arrived while a frame was pending
        self.last_interval = frame_interval  # the frame interval of the last ingest (for pending frames)
        self.trace: list[Piece] | None = None  # set to [] to record every piece forwarded into the context
        self.retrieved: list[list[int]] | None = None  # memory mode: per layer, the last question's rows
        self.context_lengths: list[int] | None = None  # per layer, the last question's context (with sinks)
        self.question_at: int | None = None  # the position the last question's context ended at
        # 1. the header: its first `sinks` tokens are the attention sinks
        with torch.no_grad():
            piece = adapter.text_piece(self.layout.header, 0, kind="prompt")
            self.header_ids = list(piece.token_ids)
            adapter.forward(piece.embeds, piece.positions, self.cache, logits="none")
        self.cursor = adapter.next_cursor(piece)
        self.header_tokens = piece.n_tokens
        self.n_sinks = piece.n_tokens if config.sinks is None else min(config.sinks, piece.n_tokens)
        self.non_sink_tokens = piece.n_tokens - self.n_sinks
        self._trim_context()

    # ---- 2. ingest ----------------------------------------------------------------------------------
    def ingest(
        self,
        items: Iterable[Frame | TextEvent],
        chunk_frames: int = 1,
        on_frames: Callable[[int], None] | None = None,
        frame_interval: float | None = None,
    ) -> int:
        """Ingest frames and text events (in stream order); returns the number of pieces added.

        A frame spans [t, t + frame_interval) (default: the engine's). All-or-nothing: on any error the
        stream state is restored and the error re-raised.
        """
        if chunk_frames < 1:
            raise InputError(f"chunk_frames must be >= 1; got {chunk_frames}")
        interval = self.frame_interval if frame_interval is None else frame_interval
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
        self.last_interval = interval
        pieces = self._pieces(items, interval)
        self.frame_tokens += sum(p.n_tokens for p in pieces if p.kind == "frame")
        self.frames_ingested += sum(p.n_frames for p in pieces)
        if self.memory_mode:
            if self._batch_units > 1:  # units prefilled together, several per forward
                units = [unit for piece in pieces for unit in self.segmenter.push(piece)]
                for i in range(0, len(units), self._batch_units):
                    self._ingest_batch(units[i : i + self._batch_units])
            else:
                for piece in pieces:
                    for unit in self.segmenter.push(piece):
                        self._ingest_unit(unit)
        else:
            self._forward_context(pieces)
        ends = [f.t + interval if isinstance(f, Frame) else f.end for f in items]
        self.clock = max([self.clock, *ends])
        self.ingest_seconds += time.perf_counter() - t_start
        n_frames = sum(isinstance(f, Frame) for f in items)
        if on_frames is not None and n_frames:
            on_frames(n_frames)
        return len(pieces)

    def _pieces(self, items: list[Frame | TextEvent], interval: float) -> list[Piece]:
        """Embed items in stream order, in the official layout: frames join the open video a temporal patch
        at a time (one vision-tower call per run of frames); a frame of another size closes the video (an
        odd frame before it is padded as the processor pads a video's last frame); text closes the video,
        or waits in `deferred` while a frame waits for its partner. Frames left over wait in `pending`."""
        fpp = self.adapter.frames_per_piece
        pieces: list[Piece] = []
        run, deferred = list(self.pending), list(self.deferred)
        for item in items:
            if isinstance(item, Frame):
                shape = list(item.image.shape)
                open_shape = list(run[0].image.shape) if run else (self.video or {}).get("shape")
                if open_shape is not None and open_shape != shape:
                    pieces += self._video(run, interval, pad=True) + self._texts(deferred)
                    run, deferred = [], []
                    close = self._close()
                    if close is not None:
                        pieces.append(close)
                run.append(item)
                if deferred and len(run) % fpp == 0:  # the patch is whole: the text waiting can follow it
                    pieces += self._video(run, interval) + self._texts(deferred)
                    run, deferred = [], []
            elif len(run) % fpp:  # a frame waits for its partner, and the text with it
                deferred.append(item)
            else:
                pieces += self._video(run, interval) + self._texts([item])
                run = []
        whole = len(run) - len(run) % fpp
        pieces += self._video(run[:whole], interval)
        self.pending, self.deferred = run[whole:], deferred
        return pieces

    def _video(self, frames: list[Frame], interval: float, pad: bool = False) -> list[Piece]:
        """Frames (a whole number of temporal patches, or `pad`ded to one by repeating the last frame, as
        the processor pads a video) as the next pieces of the open video, which opens if none is."""
        if not frames:
            return []
        images = [f.image for f in frames]
        if pad:
            images += [images[-1]] * (-len(images) % self.adapter.frames_per_piece)
        times = np.array([f.t for f in frames])
        pieces, video, self.cursor = self.adapter.video_pieces(
            np.stack(images), times, interval, self.video, self.cursor
        )
        self.video = dict(video, shape=list(frames[0].image.shape))
        return pieces

    def _close(self) -> Piece | None:
        """The open video's closing token(s) as a piece (None if no video is open); the video closes."""
        if self.video is None:
            return None
        piece = self.adapter.close_video(self.video, self.cursor)
        piece.kind, piece.t0, piece.t1 = "text", self.clock, self.clock
        self.video = None
        self.cursor = self.adapter.next_cursor(piece)
        return piece

    def _texts(self, events: list[TextEvent]) -> list[Piece]:
        """Timed-text pieces; the first closes the open video (its closing token leads the piece)."""
        pieces = []
        for event in events:
            close = self._close()
            piece = self.adapter.text_piece(format_event(event), self.cursor, "text", event.start, event.end)
            self.cursor = self.adapter.next_cursor(piece)
            pieces.append(piece if close is None else piece.prepend(close))
        return pieces

    def _lead(self) -> list[Piece]:
        """What a question sees after the memory that is not in it: the open memory unit's pieces (memory
        mode: the unit stays open, so a question never moves where units end), the pending frame padded
        into a patch, the deferred text, and the open video's closing token. The stream state is left as
        it was."""
        saved = (self.video, self.cursor)
        try:
            pieces = list(self.segmenter.open) if self.memory_mode else []
            pieces += self._video(self.pending, self.last_interval, pad=True) + self._texts(self.deferred)
            close = self._close()
            return pieces + ([close] if close is not None else [])
        finally:
            self.video, self.cursor = saved

    def question_pieces(self, question: str, choices: list[str] | None = None) -> list[Piece]:
        """The pieces a question is prefilled as after the stream's memory (the `_lead`, then the question
        text in the chat template), at the stream's positions: for inspection and tests."""
        lead = self._lead()
        cursor = self.adapter.next_cursor(lead[-1]) if lead else self.cursor
        return lead + [self.decoder.question_piece(question_text(question, choices), cursor)]

    def _forward_context(self, pieces: list[Piece]) -> None:
        """Context mode: one forward appends the pieces to the context, which is the memory."""
        if not pieces:
            return
        if self.trace is not None:
            self.trace.extend(pieces)
        embeds = torch.cat([p.embeds for p in pieces])
        positions = torch.cat([p.positions for p in pieces], dim=1)
        self.adapter.forward(embeds, positions, self.cache, logits="none")
        for p in pieces:
            self.blocks.append(
                BlockInfo(len(self.blocks), p.kind, p.t0, p.t1, self.non_sink_tokens, p.n_tokens, p.text)
            )
            self.non_sink_tokens += p.n_tokens
        self._trim_context()

    def _trim_context(self) -> None:
        """Keep the sinks and the most recent tokens the ingest policy allows; older tokens leave."""
        keep = self.config.ingest.keep_tokens(self.unit_tokens, self.tokens_per_frame)
        if keep is None or self.non_sink_tokens - self.first_kept <= keep:
            return
        drop = self.non_sink_tokens - self.first_kept - keep
        length = self.cache.lengths()[0]
        index = torch.cat([torch.arange(self.n_sinks), torch.arange(self.n_sinks + drop, length)])
        self.cache.keep(index.to(self.adapter.device))
        self.first_kept += drop

    @property
    def tokens_per_frame(self) -> float:
        return self.frame_tokens / self.frames_ingested if self.frames_ingested else 0.0

    # ---- memory mode: units -> blocks ---------------------------------------------------------------------
    def _ingest_unit(self, pieces: list[Piece]) -> None:
        """Prefill one unit against the ingest context; store its blocks; trim the context."""
        compressor = self.config.compress
        frames = [p for p in pieces if p.kind == "frame"]
        summary = self._summary_piece(frames)
        stored = pieces + ([summary] if summary is not None else [])
        guidance = None
        prompt = compressor.forward_prompt()
        if prompt is not None and frames:
            guidance = self.adapter.text_piece(prompt, self.cursor, kind="prompt")
        start = self.config.ingest.unit_start(self.n_sinks)
        if start is not None and stored:  # the ingest policy places every unit at one start (MuKV)
            delta = start - int(stored[0].positions.min())
            stored = [p.shifted(delta) for p in stored]
            guidance = guidance.shifted(delta) if guidance is not None else None
        forwarded = stored + ([guidance] if guidance is not None else [])
        n_stored = sum(p.n_tokens for p in stored)
        n_new = n_stored + (guidance.n_tokens if guidance is not None else 0)
        stats: dict[str, list] = {"guidance": [], "self": []}
        observers = contextlib.ExitStack()
        if guidance is not None and "guidance" in compressor.needs:

            def on_guidance(layer: int, w: torch.Tensor) -> None:
                stats["guidance"].append(w[0].mean(1)[:, -n_new:][:, :n_stored])  # [heads, n_stored]

            observers.enter_context(observe_attention(on_guidance, slice(n_stored, n_new)))
        if "self" in compressor.needs and frames:

            def on_self(layer: int, w: torch.Tensor) -> None:
                stats["self"].append(w[0][:, :, -n_new:][:, :, :n_stored])  # [heads, n_stored, n_stored]

            observers.enter_context(
                observe_attention(on_self, slice(0, n_stored), {self.adapter.num_layers - 1})
            )
        if guidance is not None and compressor.prompt_sees_unit:  # the prompt attends to the unit only
            observers.enter_context(confine_to_new(slice(n_stored, n_new)))
        prerope: Projections = {}
        if "guidance_qk" in compressor.needs and guidance is not None:
            prerope = observers.enter_context(record_projections(self.adapter))
        with observers:
            embeds = torch.cat([p.embeds for p in forwarded])
            positions = torch.cat([p.positions for p in forwarded], dim=1)
            self.adapter.forward(embeds, positions, self.cache, logits="none")
        new_k, new_v = self.cache.new_kv()
        if guidance is not None:  # the guidance prompt leaves the cache at once
            length = self.cache.lengths()[0]
            self.cache.keep(torch.arange(length - guidance.n_tokens, device=self.adapter.device))
        keys = [k[0, :, :n_stored] for k in new_k]
        values = [v[0, :, :n_stored] for v in new_v]
        positions = torch.cat([p.positions for p in stored], dim=1)
        spans = piece_spans(stored)
        attention = {}
        if stats["guidance"]:
            attention["guidance"] = torch.stack(stats["guidance"])
        if stats["self"]:
            attention["self"] = stats["self"][0]
        if prerope:
            attention.update(_guidance_qk(prerope, self.adapter, n_stored, guidance.n_tokens))
        alone = self._prefill_alone([p for p in stored if p.kind == "frame"])
        self._store_unit(Unit(stored, keys, values, positions, spans, attention, alone))
        self._trim_context()

    def _prefill_alone(self, frames: list[Piece]) -> list[Unit]:
        """The token ranges of the unit's frames the compressor asks for (`Compressor.alone_ranges`), each
        prefilled on its own after the sinks, all in one forward (each range masked from the others), at the
        unit start the ingest policy gives (else at their stream positions): one Unit per range, with its
        own last-layer attention if the compressor `needs` "self"."""
        compressor = self.config.compress
        ranges = compressor.alone_ranges(frames) if frames else []
        if not ranges:
            return []
        embeds = torch.cat([p.embeds for p in frames])
        positions = torch.cat([p.positions for p in frames], dim=1)
        start = self.config.ingest.unit_start(self.n_sinks)
        parts = []  # (positions forwarded at, origin)
        for a, b in ranges:
            pos = positions[:, a:b]
            shift = 0 if start is None else start - int(pos.min())
            parts.append((pos + shift, -shift))
        sizes = [b - a for a, b in ranges]
        n = sum(sizes)
        cache = ContextCache.from_tensors(  # the sinks only: a range sees nothing else but itself
            [la.keys[:, :, : self.n_sinks] for la in self.cache.layers],
            [la.values[:, :, : self.n_sinks] for la in self.cache.layers],
        )
        weights: list[torch.Tensor] = []
        with contextlib.ExitStack() as stack:
            stack.enter_context(separate_groups(sizes))
            if "self" in compressor.needs:
                stack.enter_context(
                    observe_attention(
                        lambda layer, w: weights.append(w[0][:, :, -n:]),
                        slice(0, n),
                        {self.adapter.num_layers - 1},
                    )
                )
            self.adapter.forward(
                torch.cat([embeds[a:b] for a, b in ranges]),
                torch.cat([pos for pos, _ in parts], dim=1),
                cache,
                logits="none",
            )
        new_k, new_v = cache.new_kv()
        units, offset = [], 0
        for (pos, origin), size in zip(parts, sizes):
            cut = slice(offset, offset + size)
            attention = {"self": weights[0][:, cut, cut]} if weights else {}
            units.append(
                Unit(
                    [],
                    [k[0, :, cut] for k in new_k],
                    [v[0, :, cut] for v in new_v],
                    pos,
                    [],
                    attention,
                    [],
                    origin,
                )
            )
            offset += size
        return units

    def _store_unit(self, unit: Unit) -> None:
        """Store a prefilled unit's blocks (as its drafts say) and count its tokens."""
        unit_id = len(self.unit_tokens)
        for draft in self._drafts(unit):
            self._store_block(draft, unit.keys, unit.values, unit.positions, unit_id)
        self.unit_tokens.append(unit.n_tokens)
        self.non_sink_tokens += unit.n_tokens

    @property
    def _batch_units(self) -> int:
        """Units per forward: >1 only where nothing is computed per unit (no summary pseudo-frame, no
        attention statistics for the compressor, no ranges prefilled alone) and the ingest policy allows it
        (`Window.batch`)."""
        batch = getattr(self.config.ingest, "batch", 1)
        compressor = self.config.compress
        alone = type(compressor).alone_ranges is not Compressor.alone_ranges
        if batch > 1 and self.config.summary is None and not compressor.needs and not alone:
            return batch
        return 1

    def _ingest_batch(self, units: list[list[Piece]]) -> None:
        """Prefill several units in one forward (each sees the context and the units before it), store each
        unit's blocks, then trim the context once."""
        if not units:
            return
        pieces = [p for unit in units for p in unit]
        embeds = torch.cat([p.embeds for p in pieces])
        positions = torch.cat([p.positions for p in pieces], dim=1)
        self.adapter.forward(embeds, positions, self.cache, logits="none")
        new_k, new_v = self.cache.new_kv()
        offset = 0
        for unit in units:
            n = sum(p.n_tokens for p in unit)
            keys = [k[0, :, offset : offset + n] for k in new_k]
            values = [v[0, :, offset : offset + n] for v in new_v]
            unit_positions = torch.cat([p.positions for p in unit], dim=1)
            self._store_unit(Unit(unit, keys, values, unit_positions, piece_spans(unit), {}))
            offset += n
        self._trim_context()

    def _summary_piece(self, frames: list[Piece]) -> Piece | None:
        """The unit's pseudo-block from the config's `summary` policy (None: no policy, or none for it);
        the stream cursor moves past it."""
        piece = self.config.summary.piece(frames, self.cursor) if self.config.summary is not None else None
        if piece is not None:
            self.cursor = self.adapter.next_cursor(piece)
        return piece

    def _drafts(self, unit: Unit) -> list[BlockDraft]:
        """Text pieces and the summary are kept whole; the frames go through the compressor. The summary is a
        block of its own that retrieval scores like the others (StreamKV: compression never removes it, but
        it is retrieved, not always attended)."""
        drafts: list[BlockDraft] = []
        frame_idx = [torch.arange(*s) for s, p in zip(unit.spans, unit.pieces) if p.kind == "frame"]
        n_layers = len(unit.keys)
        for (a, b), p in zip(unit.spans, unit.pieces):
            if p.kind in ("text", "summary"):
                drafts.append(
                    BlockDraft(
                        p.kind,
                        p.t0,
                        p.t1,
                        index=[torch.arange(a, b)] * n_layers,
                        text=p.text,
                    )
                )
        if frame_idx:
            idx = torch.cat(frame_idx).to(unit.positions.device)
            frame_pieces = [p for p in unit.pieces if p.kind == "frame"]
            spans = piece_spans(frame_pieces)
            attention = {}
            if "guidance" in unit.attention:
                attention["guidance"] = unit.attention["guidance"][:, :, idx]
            if "self" in unit.attention:
                attention["self"] = unit.attention["self"][:, idx][:, :, idx]
            if "prerope_k" in unit.attention:  # [layers, kv_heads, n, d]
                attention["prerope_k"] = unit.attention["prerope_k"][:, :, idx]
            if "guidance_q" in unit.attention:
                attention["guidance_q"] = unit.attention["guidance_q"]
            frames_unit = Unit(
                frame_pieces,
                [k[:, idx] for k in unit.keys],
                [v[:, idx] for v in unit.values],
                unit.positions[:, idx],
                spans,
                attention,
                unit.alone,
            )
            for d in self.config.compress.compress(frames_unit):
                if d.index is not None:  # frame indices -> unit indices (a per-head [kv_heads, k] alike)
                    d = BlockDraft(
                        d.kind,
                        d.t0,
                        d.t1,
                        index=[idx[i.to(idx.device)] for i in d.index],
                        level=d.level,
                        text=d.text,
                        pinned=d.pinned,
                    )
                drafts.append(d)
        # stream order; a summary closes its unit (StreamKV appends it after the segment's frames)
        return sorted(drafts, key=lambda d: (d.t1, 1) if d.kind == "summary" else (d.t0, 0))

    def _store_block(
        self,
        draft: BlockDraft,
        keys: list[torch.Tensor],
        values: list[torch.Tensor],
        positions: torch.Tensor,
        unit_id: int,
    ) -> None:
        if draft.index is not None:  # per layer the kept tokens: the same for every KV head, or per head
            k, v, pos = [], [], []
            for layer, i in enumerate(draft.index):
                kl, vl, pl = select_tokens(keys[layer], values[layer], positions, i)
                k.append(kl)
                v.append(vl)
                pos.append(pl)
        else:
            k, v, pos = draft.keys, draft.values, draft.positions
        rotary = self.adapter.rotary_emb
        # per layer the mean un-rotated key; a layer where the block holds no token (a frame another layer
        # kept, StreamKV) gets zeros, and the index marks the block absent there
        rkey = torch.stack(
            [
                unrotate(kl, pl, rotary).float().mean(1).reshape(-1)
                if kl.shape[1]
                else kl.new_zeros(kl.shape[0] * kl.shape[2], dtype=torch.float32)
                for kl, pl in zip(k, pos)
            ]
        )
        block = KVBlock(
            len(self.store),
            unit_id,
            draft.kind,
            draft.t0,
            draft.t1,
            [t.contiguous() for t in k],
            [t.contiguous() for t in v],
            pos,
            rkey,
            draft.level,
            draft.text,
            draft.pinned,
            origin=draft.origin if draft.index is None else 0,
        )
        self.keep(block)

    def keep(self, block: KVBlock) -> None:
        """Store and index a block, in the tier lane its compressor prefers for it."""
        self.store.add(block, cold=self.config.compress.cold(block.level, block.kind))
        self.index.add(block)

    def flush(self) -> None:
        """Memory mode: close the open unit (the stream ended, or it is saved)."""
        if not self.memory_mode:
            return
        with self.transaction(), torch.no_grad():
            for unit in self.segmenter.flush():
                self._ingest_unit(unit)

    # ---- 3. ask -----------------------------------------------------------------------------------------
    def ask(
        self,
        question: str,
        choices: list[str] | None = None,
        max_new_tokens: int = 64,
        on_token: Callable[[str], None] | None = None,
        logprobs: int = 0,
        generation: GenerationOptions | None = None,
    ) -> Answer:
        """Answer `question` from memory; the stream's memory is left exactly as it was (an open memory
        unit is seen transiently and stays open).
        `logprobs` > 0: the answer lists, per generated token, its log-probability and the `logprobs` most
        likely alternatives (`Answer.logprobs`). `generation`: sampling, repetition penalty and stop
        strings (videokv.generation; default greedy)."""
        return drain(self.ask_steps(question, choices, max_new_tokens, on_token, logprobs, generation))

    def ask_steps(
        self,
        question: str,
        choices: list[str] | None = None,
        max_new_tokens: int = 64,
        on_token: Callable[[str], None] | None = None,
        logprobs: int = 0,
        generation: GenerationOptions | None = None,
    ) -> Generator[None, None, Answer]:
        """`ask` as a generator: it yields between decoding steps, so that a scheduler can run other
        sessions' work there (the server does), and returns the Answer."""
        check_question(question, choices, max_new_tokens, logprobs, generation)
        prompt = question_text(question, choices)
        t_start = time.perf_counter()
        with torch.no_grad():
            context, cursor, evidence, lead = self._question_context(prompt, question)
            evidence = sorted(evidence + _lead_evidence(lead), key=lambda e: (e.t0, e.t1))
            retrieval_s = time.perf_counter() - t_start
            yield  # retrieval and prefill are two pieces of work: other sessions may run between them
            context_tokens = context.lengths()
            self.context_lengths = context_tokens  # for inspection: per layer, sinks included
            self.question_at = cursor  # for inspection: where the lead and the question were placed
            if choices:
                best, scores, free, stats = yield from self.decoder.pick_choice_steps(
                    context, cursor, question, choices, max_new_tokens, lead
                )
                stats["free_answer"] = free
                text = choices[best]
                if on_token is not None:
                    on_token(text)
            else:
                best, scores = None, None
                text, stats = yield from self.decoder.generate_steps(
                    context, cursor, prompt, max_new_tokens, on_token, lead, logprobs, generation
                )
        steps = stats.pop("logprobs", None)
        stats.update(self.memory_stats())
        stats["retrieval_s"] = round(retrieval_s, 4)
        stats["context_tokens"] = round(sum(context_tokens) / len(context_tokens), 1)
        return Answer(question, text, evidence, best, scores, stats, steps)

    def loglikelihood(self, question: str, continuation: str) -> tuple[float, bool]:
        """The log-probability of `continuation` as the answer to `question`, over the memory exactly as
        `ask` sees it (same retrieval, same prompt), and whether greedy decoding would produce it. The
        question may be empty; the continuation is tokenized as generated tokens are (after the
        template's tail). The memory is left as it was."""
        if not isinstance(question, str):
            raise InputError(f"the question must be a string; got {type(question).__name__}")
        if not isinstance(continuation, str) or not continuation:
            raise InputError("the continuation is empty; give the answer text to score")
        ids = self.adapter.tokenize(continuation)
        prompt = question_text(question)
        with torch.no_grad():
            context, cursor, _, lead = self._question_context(prompt, question)
            return self.decoder.continuation_logprob(context, cursor, prompt, ids, lead)

    def _question_context(
        self, prompt: str, question: str
    ) -> tuple[ContextCache, int, list[Evidence], list[Piece]]:
        """What a question is answered over: (context, cursor after it, evidence, the lead moved to follow
        it). Memory mode retrieves for `prompt`; context mode forks the whole context."""
        lead = self._lead()
        if self.memory_mode and len(self.index):
            context, cursor, evidence = self._retrieve(prompt, question, lead)
        else:
            context, cursor, evidence = self.cache.fork(), self.cursor, self.evidence()
        # the lead goes where the memory ends in this context (its positions move with it)
        lead = [p.shifted(cursor - self.cursor) for p in lead]
        return context, cursor, evidence, lead

    def _retrieve(
        self, prompt: str, question: str = "", lead: list[Piece] = ()
    ) -> tuple[ContextCache, int, list[Evidence]]:
        """Retrieval forward(s) of the bare question, block selection, and assembly of [sinks | selected
        blocks]."""
        catalog = self.index.catalog()
        catalog.question = question or prompt
        retriever = self.config.retrieve
        loaded: dict[int, KVBlock] = {}
        # what is forwarded: the lead (seen after the memory, not part of the query), then the bare question
        pieces = list(lead)
        start = self.adapter.next_cursor(lead[-1]) if lead else self.cursor
        bare = self.adapter.text_piece(question or prompt, start, kind="prompt")
        if not bare.n_tokens:  # no question text (a likelihood with an empty context): the template's turn
            bare = self.decoder.question_piece(prompt, start)
        pieces.append(bare)
        embeds = torch.cat([p.embeds for p in pieces])
        positions = torch.cat([p.positions for p in pieces], dim=1)
        if retriever.layerwise_query():
            sinks = [
                (la.keys[:, :, : self.n_sinks], la.values[:, :, : self.n_sinks]) for la in self.cache.layers
            ]

            def forward(choose: Callable[[int, torch.Tensor], list[int]]) -> None:
                def context(layer: int, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                    rows = catalog.one_level(choose(layer, q))
                    self.store.prefetch([r for r in rows if r not in loaded])
                    blocks = sorted((self._load(r, loaded) for r in rows), key=lambda b: b.index)
                    return assemble_layer(
                        *sinks[layer],
                        self.n_sinks,
                        blocks,
                        layer,
                        self.config.positions,
                        self.adapter.rotary_emb,
                        self.cursor,
                        int(positions.shape[0]),
                    )

                layerwise_forward(self.adapter, embeds, positions, bare.n_tokens, context)

            selection = retriever.select_layerwise(catalog, forward)
        else:  # one forward of the question against the ingest context (sinks + recent window)
            probe = self.cache.fork()
            unit_start = self.config.ingest.unit_start(self.n_sinks)
            if unit_start is not None:  # every unit was prefilled at one start (MuKV): the question is too
                positions = positions + (unit_start - int(positions.min()))
            query = capture_query(
                self.adapter,
                lambda: self.adapter.forward(embeds, positions, probe, logits="none"),
                bare.n_tokens,
            )
            # the question's last token's last-layer key as the probe cached it (rotated; MuKV's query)
            query.rotated_key = probe.layers[-1].keys[0, :, -1].reshape(-1).float()
            selection = retriever.select(catalog, query)
        selection = [catalog.one_level(layer) for layer in selection]  # never a unit at two levels
        self.retrieved = selection  # for inspection: the rows each layer saw at the last question
        rows = sorted({r for layer in selection for r in layer})
        self.store.prefetch([r for r in rows if r not in loaded])
        loaded = {r: self._load(r, loaded) for r in rows}
        per_layer = [sorted((loaded[r] for r in layer), key=lambda b: b.index) for layer in selection]
        sink_k = [la.keys[:, :, : self.n_sinks] for la in self.cache.layers]
        sink_v = [la.values[:, :, : self.n_sinks] for la in self.cache.layers]
        context, cursor = assemble(
            sink_k,
            sink_v,
            self.n_sinks,
            per_layer,
            self.config.positions,
            self.adapter.rotary_emb,
            self.cursor,
        )
        evidence = [
            Evidence(b.t0, b.t1, b.kind, b.level, _span_text(b.kind, b.text))
            for b in (loaded[r] for r in rows)
        ]
        return context, cursor, sorted(evidence, key=lambda e: (e.t0, e.t1))

    def _load(self, row: int, loaded: dict[int, KVBlock]) -> KVBlock:
        """Block `row` on the compute device, read once per question."""
        if row not in loaded:
            loaded[row] = self.store.get(row)
        return loaded[row]

    def evidence(self) -> list[Evidence]:
        """Context mode: time spans of the blocks in the context, adjacent blocks merged."""
        spans: list[Evidence] = []
        for b in self.blocks:
            if b.start < self.first_kept:
                continue
            last = spans[-1] if spans else None
            if last is not None and b.t0 <= last.t1 + 1e-6:
                kind = last.kind if b.kind in last.kind.split("+") else f"{last.kind}+{b.kind}"
                text = "\n".join(filter(None, (last.text, _span_text(b.kind, b.text))))
                spans[-1] = Evidence(
                    last.t0, max(last.t1, b.t1), kind, self.config.name, _span_text(kind, text)
                )
            else:
                spans.append(Evidence(b.t0, b.t1, b.kind, self.config.name, _span_text(b.kind, b.text)))
        return spans

    def memory_stats(self) -> dict:
        stats = {
            "memory": self.config.name,
            "stream_tokens": self.non_sink_tokens - (self.header_tokens - self.n_sinks),
            "frames": self.frames_ingested + len(self.pending),  # received (a pending one waits for its pair)
            "stream_seconds": round(self.clock, 3),
            "ingest_s": round(self.ingest_seconds, 4),
        }
        if self.memory_mode:
            tiers = self.store.bytes_by_tier()
            stats.update(
                {
                    "memory_tokens": self.store.n_tokens,
                    "memory_bytes": self.store.resident_bytes,
                    "offloaded_bytes": tiers["disk"],
                    "bytes_by_tier": tiers,
                    "blocks": len(self.store),
                    "units": len(self.unit_tokens),
                    "ingest_context_bytes": self.cache.nbytes,
                    "ingest_context_tokens": max(
                        0, (self.cache.lengths()[0] if self.cache.layers else 0) - self.n_sinks
                    ),
                }
            )
        else:
            stats.update(
                {
                    "memory_tokens": self.cache.lengths()[0],
                    "memory_bytes": self.cache.nbytes,
                    "blocks": len(self.blocks),
                    "blocks_in_memory": sum(b.start >= self.first_kept for b in self.blocks),
                }
            )
        return stats

    # ---- all-or-nothing changes ---------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Restore the stream state if the block raises. Tensors are never written in place, so keeping
        references is a complete snapshot of the context; the store and index are truncated back."""
        layers = [(la.keys, la.values) for la in self.cache.layers]
        scalars = {name: getattr(self, name) for name in (*self.SCALAR_STATE, "pending", "deferred")}
        n_blocks, n_units, n_stored = len(self.blocks), len(self.unit_tokens), len(self.store)
        segmenter = copy.deepcopy(self.segmenter)
        try:
            yield
        except BaseException:
            for la, (k, v) in zip(self.cache.layers, layers):
                la.keys, la.values = k, v
            for name, value in scalars.items():
                setattr(self, name, value)
            del self.blocks[n_blocks:], self.unit_tokens[n_units:]
            self.store.truncate(n_stored)
            self.index.truncate(n_stored)
            self.segmenter = segmenter
            raise


def _lead_evidence(lead: list[Piece]) -> list[Evidence]:
    """Evidence spans of the frames and text a question saw besides the memory."""
    return [
        Evidence(p.t0, p.t1, p.kind, "full", _span_text(p.kind, p.text)) for p in lead if p.n_frames or p.text
    ]


def _span_text(kind: str, text: str | None) -> str | None:
    """The lines of a text span (evidence), as written into the stream; None for any other kind."""
    return text.strip() if kind == "text" and text else None


# ---- pre-RoPE statistics for compressors that need "guidance_qk" (StreamKV's guidance score) --------------
def _guidance_qk(store: Projections, adapter: Adapter, n_stored: int, n_prompt: int) -> dict:
    """{"guidance_q": [layers, kv_heads, d]} (the prompt's pre-RoPE queries, mean over its tokens, summed
    within each KV-head group) and {"prerope_k": [layers, kv_heads, n_stored, d]} (the unit's k_proj keys)."""
    kv, d = adapter.num_kv_heads, adapter.head_dim
    qs, ks = [], []
    for i in range(adapter.num_layers):
        q = torch.cat(store[("q", i)])[-n_prompt:]
        k = torch.cat(store[("k", i)]).float()[:n_stored]
        qs.append(summarize_queries(q, kv, d).view(kv, d))
        ks.append(k.view(n_stored, kv, d).transpose(0, 1))
    return {"guidance_q": torch.stack(qs), "prerope_k": torch.stack(ks)}
