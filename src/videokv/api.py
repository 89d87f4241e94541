"""The public API: `VideoQA` (a model + a memory configuration) and `Session` (one stream)."""

from __future__ import annotations

import contextlib
import heapq
import math
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from videokv.config import MemoryConfig
from videokv.engine import Engine, Frame
from videokv.errors import InputError
from videokv.generation import GenerationOptions
from videokv.models.base import Adapter
from videokv.models.registry import TINY_MODELS, adapter_for, check_model_name, load_model
from videokv.persist import (
    MANIFEST as SAVE_MANIFEST_NAME,
)
from videokv.persist import (
    SaveError,
    load_config,
    read_manifest,
    read_save,
    restore_engine,
    save_engine,
)
from videokv.presets import resolve_memory
from videokv.qa import (
    DEFAULT_SYSTEM,
    STREAM_SYSTEM,
    Answer,
    check_question,
    drain,
    kv_memory,
    kv_text,
    matches,
    normalize,
    question_text,
)
from videokv.video.decode import iter_frames, probe
from videokv.video.frames import validate_frames
from videokv.video.subtitles import TextEvent, events_from_pairs, load_subtitles

__all__ = [
    "DEFAULT_SYSTEM",
    "STREAM_SYSTEM",
    "Answer",
    "Frame",
    "GenerationOptions",
    "SaveError",
    "Session",
    "TextEvent",
    "VideoQA",
    "TINY_MODELS",
    "check_model_name",
    "check_question",
    "kv_memory",
    "kv_text",
    "matches",
    "normalize",
    "question_text",
    "video_items",
]

_QA_SYSTEM = object()  # Session's system prompt: the VideoQA's own


class VideoQA:
    """A video-LLM with a long-term memory configuration; opens `Session`s (one per stream).

    tokenizer: the checkpoint's tokenizer or its transformers processor. Frames are preprocessed with the
    checkpoint's video-processor settings (`video_processor`: a config dict or checkpoint folder; by default
    read from the processor or the folder the tokenizer came from). frame_tokens (optional) caps the visual
    tokens per temporal patch for Qwen2-VL-family models below the checkpoint's own limit (LLaVA-OneVision's
    count is fixed by its vision tower). system: a system prompt (default: the chat template's own). The
    model is shared by every session it opens.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        memory: str | MemoryConfig = "full",
        memory_set: list[str] | None = None,
        frame_tokens: int | None = None,
        system: str | None = DEFAULT_SYSTEM,
        video_processor: object = None,
    ):
        self.adapter: Adapter = adapter_for(model, tokenizer, video_processor, frame_tokens=frame_tokens)
        self.memory = resolve_memory(memory, memory_set)
        self.system = system

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, dtype: torch.dtype | None = None, device: str | None = None, **kwargs
    ) -> VideoQA:
        """Load a checkpoint: a folder written by `model.save_pretrained` + `processor.save_pretrained`
        (weights, tokenizer, chat template, video-processor config; every preprocessing setting is read from
        it), a hub id (where a hub is reachable), "offline" (the offline real-weights model), or
        "tiny-<family>" (tiny random models: `TINY_MODELS`). A name that cannot load fails at once
        (`check_model_name`), and so does a bad `memory` / `memory_set`, before any weights are read."""
        resolve_memory(kwargs.get("memory", "full"), kwargs.get("memory_set"))  # bad presets fail first
        model, tokenizer = load_model(name_or_path, dtype=dtype, device=device)  # checks the name first
        return cls(model, tokenizer, **kwargs)

    @classmethod
    def from_model(cls, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, **kwargs) -> VideoQA:
        """Wrap a model already loaded (Qwen2-VL, Qwen2.5-VL or LLaVA-OneVision) with its processor (or its
        tokenizer and `video_processor=`). The model is left as it was: videokv switches its attention
        function only inside its own forwards."""
        return cls(model, tokenizer, **kwargs)

    def session(
        self,
        memory: str | MemoryConfig | None = None,
        memory_set: list[str] | None = None,
        fps: float = 1.0,
        system: str | None | object = _QA_SYSTEM,
    ) -> Session:
        """A new stream. memory/memory_set override this VideoQA's configuration for this session; `system`
        its system prompt (default this VideoQA's; None: the chat template's own)."""
        config = self.memory if memory is None else resolve_memory(memory)
        if memory_set:
            config = config.with_overrides(memory_set)
        return Session(self.adapter, config, fps=fps, system=self.system if system is _QA_SYSTEM else system)

    def load_session(
        self,
        folder: str | Path,
        configure: Callable[[MemoryConfig], MemoryConfig] | None = None,
        endpoint: str | None = None,
    ) -> Session:
        """A session saved with `Session.save` (a folder or an `s3://` URL), on this VideoQA's model (which
        must be the same model). `configure` maps the saved memory configuration to the one to run with
        (e.g. a new byte budget or spill folder); what it may change is what `MemoryConfig.replace` allows."""
        return Session.load(folder, self, configure, endpoint)

    # ---- what callers may read of the model (the service checks request sizes with them) ----------------
    @staticmethod
    def supported_models() -> list[dict]:
        """The model types videokv has an adapter for: one dict each with `model_type`, `family`, `class`
        (the transformers class a checkpoint folder is loaded with), `positions` and `verified`."""
        from videokv.models.registry import supported_models

        return supported_models()

    @property
    def family(self) -> str:
        """The adapter family ("qwen2_vl" (also Qwen2.5-VL), "qwen3_vl" (also the MoE), "llava_onevision",
        "internvl")."""
        return self.adapter.family

    @property
    def device(self) -> torch.device:
        return self.adapter.device

    @property
    def frame_tokens(self) -> int | None:
        """The cap on visual tokens per temporal patch given at construction (None: the checkpoint's)."""
        return getattr(self.adapter, "frame_tokens", None)

    @property
    def max_context(self) -> int:
        """The model's trained context length in tokens (`max_position_embeddings`; 0 if it has none)."""
        text = self.adapter.model.config.get_text_config()
        return int(getattr(text, "max_position_embeddings", 0) or 0)

    def tokenize(self, text: str) -> list[int]:
        """The token ids of `text` as the model's tokenizer gives them (no special tokens)."""
        return self.adapter.tokenize(text)


class Session:
    """One stream: add video, frames and text as they arrive; ask questions at any time."""

    def __init__(
        self, adapter: Adapter, config: MemoryConfig, fps: float = 1.0, system: str | None = DEFAULT_SYSTEM
    ):
        if not fps > 0:
            raise InputError(f"fps must be > 0; got {fps}")
        self.fps = float(fps)
        self.system = system
        self.engine = Engine(adapter, config, system=system, frame_interval=1.0 / self.fps)
        self.saved: dict = {}  # the `extra` fields of the save this session was loaded from

    def save(self, folder: str | Path, extra: dict | None = None, endpoint: str | None = None) -> str | Path:
        """Save the whole session (config, blocks, index, positions, stream clock) to `folder`, a folder or
        an object store URL (`s3://BUCKET/PREFIX`; `endpoint`: the store's URL when it is not AWS),
        atomically: a crash mid-save leaves the previous save readable. An open memory unit is closed first.
        `extra`: JSON fields of the caller's, given back as `saved` by `load`."""
        return save_engine(
            self.engine,
            folder,
            extra={**(extra or {}), "fps": self.fps, "system": self.system},
            endpoint=endpoint,
        )

    @classmethod
    def load(
        cls,
        folder: str | Path,
        qa: VideoQA,
        configure: Callable[[MemoryConfig], MemoryConfig] | None = None,
        endpoint: str | None = None,
    ) -> Session:
        """Load a session saved with `save` (in any process; a folder or an `s3://` URL) onto `qa`'s model;
        it continues streaming. `configure`: as in `VideoQA.load_session`."""
        manifest, tensors = read_save(folder, endpoint)
        return cls.restore(qa, manifest, tensors, configure)

    @classmethod
    def restore(
        cls,
        qa: VideoQA,
        manifest: dict,
        tensors: dict[str, torch.Tensor],
        configure: Callable[[MemoryConfig], MemoryConfig] | None = None,
        fetch: Callable[[dict], dict[str, torch.Tensor]] | None = None,
    ) -> Session:
        """A session from a save's manifest and tensors (as `read_save` or a journal gives them). `fetch`:
        reads the K/V of a block the manifest names without them (a journal's lazy blocks)."""
        extra = manifest.get("extra") or {}
        config = load_config(manifest)
        if configure is not None:
            config = configure(config)
        session = cls(
            qa.adapter, config, fps=extra.get("fps", 1.0), system=extra.get("system", DEFAULT_SYSTEM)
        )
        restore_engine(session.engine, manifest, tensors, fetch)
        session.saved = dict(extra)
        return session

    @property
    def config(self) -> MemoryConfig:
        """The memory configuration this session runs with."""
        return self.engine.config

    @property
    def frames_ingested(self) -> int:
        return self.engine.frames_ingested

    @property
    def prefill_chunk(self) -> int | None:
        """None (the default): a question's prompt is prefilled in one forward. N: in forwards of at most N
        consecutive tokens over the same cache, `ask_steps` yielding between them, so that a scheduler can
        run other work while a long question is prefilled (the server does). Answers are the same to float
        rounding (tests/test_prefill_chunks.py)."""
        return self.engine.decoder.prefill_chunk

    @prefill_chunk.setter
    def prefill_chunk(self, n: int | None) -> None:
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise InputError(f"prefill_chunk must be None or an int >= 1; got {n!r}")
        self.engine.decoder.prefill_chunk = n

    def flush(self) -> None:
        """Close the open memory unit now (its frames become blocks), as the end of a stream does; the
        server does it after every ingest step so that what it journals is whole units."""
        self.engine.flush()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """All-or-nothing: if the block raises, the session's memory and clock return to where they were."""
        with self.engine.transaction():
            yield

    def timeline(self) -> list[dict]:
        """The memory's blocks as time spans ({t0, t1, kind, level}), adjacent ones of the same kind and
        level merged (what the web page draws)."""
        engine = self.engine
        if engine.memory_mode:
            raw = sorted(((b.t0, b.t1, b.kind, b.level) for b in engine.store.blocks), key=lambda s: s[:2])
        else:
            first, name = engine.first_kept, engine.config.name
            raw = [(b.t0, b.t1, b.kind, name) for b in engine.blocks if b.start >= first]
        spans: list[dict] = []
        for t0, t1, kind, level in raw:
            last = spans[-1] if spans else None
            if last and last["kind"] == kind and last["level"] == level and t0 <= last["t1"] + 1e-6:
                last["t1"] = round(max(last["t1"], t1), 3)
            else:
                spans.append({"t0": round(t0, 3), "t1": round(t1, 3), "kind": kind, "level": level})
        return spans

    @property
    def clock(self) -> float:
        """Stream time reached, in seconds."""
        return self.engine.clock

    @property
    def stats(self) -> dict:
        return self.engine.memory_stats()

    def add_video(
        self,
        path: str | Path,
        fps: float | None = None,
        subtitles: str | Path | None = None,
        start: float = 0.0,
        end: float | None = None,
        offset: float | None = None,
        chunk_frames: int = 8,
        progress: bool = False,
        transcribe: bool | str = False,
    ) -> int:
        """Decode `path` at `fps` (default: the session's) from `start` to `end` seconds and ingest it, with
        its subtitle file interleaved by time. The video's time 0 is placed at `offset` on the stream clock
        (default: where the stream is now). `transcribe`: also transcribe its audio track (faster-whisper,
        Whisper base; True detects the language, a code such as "en" sets it) into timed text that is
        memory like subtitles; a video without audio then raises NoAudioError before anything is ingested.
        All-or-nothing; returns the number of blocks added."""
        fps = self.fps if fps is None else float(fps)
        if not fps > 0:
            raise InputError(f"fps must be > 0; got {fps}")
        info = probe(path)
        offset = self.clock if offset is None else float(offset)
        stop = info.duration if end is None else min(end, info.duration)
        total = max(0, math.ceil((stop - start) * fps - 1e-9))
        items = video_items(
            path,
            fps,
            subtitles,
            start=start,
            end=end,
            offset=offset,
            transcribe=transcribe,
            progress=progress,
        )
        return self._ingest(items, chunk_frames, progress, total, f"ingest {Path(path).name}", 1.0 / fps)

    def add_items(
        self, items: Iterable[Frame | TextEvent], chunk_frames: int = 8, frame_interval: float | None = None
    ) -> int:
        """Ingest frames and text events already in stream order (e.g. from `video_items`), all or nothing.
        A frame spans `frame_interval` seconds (default 1/fps)."""
        interval = 1.0 / self.fps if frame_interval is None else frame_interval
        return self.engine.ingest(items, chunk_frames, frame_interval=interval)

    def add_frames(
        self,
        frames: object,
        timestamps: Iterable[float] | None = None,
        fps: float | None = None,
        chunk_frames: int = 8,
        progress: bool = False,
    ) -> int:
        """Ingest raw RGB frames ([T, H, W, 3] uint8 or float in [0, 1], or a list of arrays / PIL images).
        Timestamps default to the stream clock plus 1/fps steps; they may not go back in time."""
        fps = self.fps if fps is None else float(fps)
        ts = None if timestamps is None else np.asarray(list(timestamps), dtype=np.float64)
        start = self.clock if self.engine.frames_ingested else 0.0
        arr, ts = validate_frames(frames, ts, fps=fps, start=start)
        if len(ts) and ts[0] < self.clock - 1e-9 and self.engine.frames_ingested:
            raise InputError(
                f"frame timestamps go back in time: the stream clock is at {self.clock:.3f}s, "
                f"the first new frame is at {ts[0]:.3f}s"
            )
        items = (Frame(float(t), img) for t, img in zip(ts, arr))
        return self._ingest(items, chunk_frames, progress, len(ts), "ingest frames", 1.0 / fps)

    def add_text(self, events: str | TextEvent | Iterable[TextEvent | tuple], t: float | None = None) -> int:
        """Ingest timed text: a string (at time `t`, default the stream clock), a TextEvent, or an iterable of
        TextEvents / (time, text) / (start, end, text) tuples."""
        at = self.clock if t is None else float(t)
        items: list[TextEvent] = []
        for e in [events] if isinstance(events, (str, TextEvent)) else list(events):
            if isinstance(e, str):
                items.extend(events_from_pairs([(at, e)]))
            elif isinstance(e, TextEvent):
                items.append(e)
            else:
                items.extend(events_from_pairs([e]))
        items = sorted(items, key=lambda e: e.start)
        return self.engine.ingest(items)

    def ask(
        self,
        question: str,
        choices: list[str] | None = None,
        max_new_tokens: int = 64,
        on_token: Callable[[str], None] | None = None,
        logprobs: int = 0,
        generation: GenerationOptions | None = None,
        **options: object,
    ) -> Answer:
        """Answer from memory; with `choices`, pick the most likely option. Streams text to `on_token`.
        `logprobs` > 0: `Answer.logprobs` lists, per generated token, its log-probability and the
        `logprobs` (<= 20) most likely alternatives. The question and answer never enter the memory.

        Decoding is greedy unless told otherwise, with transformers' names (`GenerationOptions`, built on
        transformers' logits processors): `do_sample=True` with `temperature`, `top_k`, `top_p` and `seed`;
        `repetition_penalty`; `stop` (a string or a list: the answer ends before the first one). Pass them
        as keywords, or a `GenerationOptions` as `generation` (keywords override it). A sampled answer's
        stats hold the `seed` it was drawn with; stats["finish_reason"] is "stop" or "length"."""
        return drain(
            self.ask_steps(question, choices, max_new_tokens, on_token, logprobs, generation, **options)
        )

    def loglikelihood(self, question: str, continuation: str) -> tuple[float, bool]:
        """(log-probability of `continuation` as the answer to `question`, whether greedy decoding gives
        it), computed over the memory exactly as `ask` answers (harnesses such as lmms-eval score options
        with it). The question may be empty. The memory is left as it was."""
        return self.engine.loglikelihood(question, continuation)

    def ask_steps(
        self,
        question: str,
        choices: list[str] | None = None,
        max_new_tokens: int = 64,
        on_token: Callable[[str], None] | None = None,
        logprobs: int = 0,
        generation: GenerationOptions | None = None,
        **options: object,
    ):
        """`ask` as a generator that yields between decoding steps and returns the Answer (for a
        scheduler that interleaves other work, as the server's does)."""
        if generation is not None and not isinstance(generation, GenerationOptions):
            raise InputError(f"generation must be a GenerationOptions; got {type(generation).__name__}")
        if options or generation is not None:
            generation = GenerationOptions.make(generation, **options)
        return self.engine.ask_steps(question, choices, max_new_tokens, on_token, logprobs, generation)

    def _ingest(
        self,
        items: Iterable[Frame | TextEvent],
        chunk_frames: int,
        progress: bool,
        total: int,
        desc: str,
        interval: float,
    ) -> int:
        if not progress:
            return self.engine.ingest(items, chunk_frames, frame_interval=interval)
        from tqdm import tqdm

        with tqdm(total=total, desc=desc, unit="frame", file=sys.stderr, leave=False) as bar:
            return self.engine.ingest(items, chunk_frames, on_frames=bar.update, frame_interval=interval)


def video_items(
    path: str | Path,
    fps: float,
    subtitles: str | Path | None = None,
    start: float = 0.0,
    end: float | None = None,
    offset: float = 0.0,
    transcribe: bool | str = False,
    progress: bool = False,
) -> Iterator[Frame | TextEvent]:
    """The frames of `path` sampled at `fps` from `start` to `end` seconds, with the subtitle events that
    start in that range, in stream order, shifted by `offset` on the stream clock. Decoding is lazy.
    `transcribe` (True, or a language code): the audio's transcript too, transcribed window by window as
    the frames are consumed (`progress`: a bar of the audio transcribed)."""
    from videokv.video.transcribe import merge_transcript, parse_transcribe, require_audio, transcribe_stream

    language = parse_transcribe(transcribe)
    events = load_subtitles(subtitles) if subtitles is not None else []
    frames = (Frame(t + offset, img) for t, img in iter_frames(path, fps=fps, start=start, end=end))
    events = [
        TextEvent(e.start + offset, e.end + offset, e.text)
        for e in events
        if e.end >= start and (end is None or e.start < end)
    ]
    items = _merge_by_time(frames, events)
    if language is False:
        return items
    require_audio(path)
    speech = transcribe_stream(path, language, offset=offset, start=start, end=end, progress=progress)
    return merge_transcript(items, speech)


def _merge_by_time(frames: Iterator[Frame], events: list[TextEvent]) -> Iterator[Frame | TextEvent]:
    """Frames and text events in stream order (an event comes before a frame at the same time)."""
    keyed_frames = ((f.t, 1, i, f) for i, f in enumerate(frames))
    keyed_events = ((e.start, 0, i, e) for i, e in enumerate(sorted(events, key=lambda e: e.start)))
    for *_, item in heapq.merge(keyed_events, keyed_frames):
        yield item


#: the name of a save's manifest object (a save holds it and one `tensors-<id>` object)
SAVE_MANIFEST = SAVE_MANIFEST_NAME


def saved_session_info(location: str | Path, endpoint: str | None = None) -> dict:
    """A save's manifest (memory config, stream state, the caller's `extra` fields), verified, without
    reading its tensors. `location`: a folder, an `s3://` URL or a storage backend. Raises SaveError."""
    return read_manifest(location, endpoint)
