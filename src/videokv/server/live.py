"""Live sources: a background thread decodes a video file, URL or RTSP stream with PyAV at stream pace and
hands chunks of frames (with the subtitle events that fall among them) to an ingest callback.

The callback does the model work (in the server: a scheduler job per chunk, committed to the journal) and
blocks until it is done, so decoding never runs ahead of the model by more than one chunk.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import av
import av.error
import numpy as np

from videokv.api import Frame
from videokv.errors import InputError, VideoError
from videokv.video.decode import iter_frames, probe
from videokv.video.subtitles import TextEvent, load_subtitles

Item = Frame | TextEvent

#: URL schemes of live streams: they are reopened from "now" when a session resumes, not seeked.
LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "udp", "tcp", "srt", "rtp")
#: In realtime mode a chunk is handed over after this many wall seconds even if it is not full.
MAX_CHUNK_WAIT_S = 2.0


def is_url(source: str) -> bool:
    return "://" in source


def is_live(source: str) -> bool:
    return is_url(source) and source.split("://", 1)[0].lower() in LIVE_SCHEMES


def _iter_url(
    url: str,
    fps: float,
    start: float = 0.0,
    max_pixels: int | None = None,
    follow_redirects: bool = True,
) -> Iterator[tuple[float, np.ndarray]]:
    """Sample a stream PyAV opens (http(s), rtsp, ...) at `fps`; times in seconds from its first frame.
    follow_redirects=False: FFmpeg must not follow an http(s) redirect itself (the server resolves and
    checks them first: a redirect FFmpeg is given later, to another host or port, fails the source)."""
    options = {"rtsp_transport": "tcp"} if url.lower().startswith("rtsp") else {}
    if not follow_redirects and url.lower().startswith(("http://", "https://")):
        options["max_redirects"] = "0"
    try:
        container = av.open(url, options=options, timeout=(15.0, 15.0))
    except (av.error.FFmpegError, OSError) as e:
        raise VideoError(f"cannot open {url!r}: {getattr(e, 'strerror', None) or e}") from e
    try:
        if not container.streams.video:
            raise VideoError(f"{url!r} has no video stream")
        stream = container.streams.video[0]
        width, height = int(stream.width or 0), int(stream.height or 0)
        if max_pixels is not None and width * height > max_pixels:  # from the header, before decoding
            raise VideoError(
                f"the stream's frames are {width}x{height} pixels, over this server's limit of {max_pixels} "
                "pixels per frame (--max-frame-pixels)"
            )
        stream.thread_type = "AUTO"
        interval = 1.0 / fps
        first: float | None = None
        target = start
        n = 0
        rate = float(stream.average_rate or 25)
        try:
            for frame in container.decode(stream):
                t_abs = float(frame.time) if frame.time is not None else n / rate
                n += 1
                first = t_abs if first is None else first
                t = t_abs - first
                if t + 0.5 / rate < target:
                    continue
                yield t, frame.to_ndarray(format="rgb24")
                target = max(target + interval, math.floor(t / interval + 1) * interval)
        except av.error.FFmpegError as e:
            raise VideoError(f"{url!r} broke off: {getattr(e, 'strerror', None) or e}") from e
    finally:
        container.close()


def open_frames(
    source: str,
    fps: float,
    start: float = 0.0,
    max_pixels: int | None = None,
    follow_redirects: bool = True,
) -> Iterator[tuple[float, np.ndarray]]:
    """(time, RGB frame) pairs of a local video file (seekable, checked for truncation) or a URL; frames over
    `max_pixels` (width x height, read from the header) are refused before anything is decoded."""
    if not fps > 0 or not math.isfinite(fps):
        raise InputError(f"fps must be a positive number; got {fps}")
    if is_url(source) and not source.lower().startswith("file://"):
        return _iter_url(source, fps, start, max_pixels, follow_redirects)
    path = os.path.expanduser(source[len("file://") :] if source.lower().startswith("file://") else source)
    if max_pixels is not None:
        info = probe(path)
        if info.width * info.height > max_pixels:
            raise VideoError(
                f"the video's frames are {info.width}x{info.height} pixels, over this server's limit of "
                f"{max_pixels} pixels per frame (--max-frame-pixels)"
            )
    return iter_frames(path, fps=fps, start=start)


def merge_items(
    frames: Iterable[tuple[float, np.ndarray]],
    events: Iterable[TextEvent],
    offset: float = 0.0,
    end: float | None = None,
    interval: float | None = None,
    dropped: list[TextEvent] | None = None,
) -> Iterator[Item]:
    """Frames and text events in stream order, shifted by `offset` seconds (text first at equal times).

    Text past the video's end is not ingested: `end` is the video's length in its own seconds (from the
    header) or, when it is not known, the last frame's time plus one `interval`. Events that start at or after
    it are left out (appended to `dropped`), and ends past it are clipped to it. With neither `end` nor
    `interval` every event is kept.
    """
    evs = sorted(events, key=lambda e: e.start)
    if end is not None and end > 0:
        keep = []
        for e in evs:
            if e.start < end:
                keep.append(TextEvent(e.start, min(e.end, end), e.text))
            elif dropped is not None:
                dropped.append(e)
        evs = keep
    i = 0
    last: float | None = None
    for t, img in frames:
        while i < len(evs) and evs[i].start <= t:
            e = evs[i]
            yield TextEvent(e.start + offset, e.end + offset, e.text)
            i += 1
        yield Frame(t + offset, img)
        last = t
    limit = None
    if not (end is not None and end > 0) and interval is not None:
        limit = (last + interval) if last is not None else 0.0
    for e in evs[i:]:
        if limit is not None and e.start >= limit:
            if dropped is not None:
                dropped.append(e)
            continue
        stop = e.end if limit is None else min(e.end, limit)
        yield TextEvent(e.start + offset, stop + offset, e.text)


def with_transcript(
    items: Iterator[Item],
    source: str | os.PathLike[str],
    transcribe: str | bool | None,
    offset: float,
    start: float = 0.0,
) -> Iterator[Item]:
    """`items` with the transcript of `source`'s audio among them when `transcribe` asks for one (True,
    "auto" or a language code; videokv.video.transcribe). A file or a non-live URL is transcribed window by
    window in stream order, exactly where subtitles go (so an exact resume replays it); a live stream is
    transcribed in a background thread and its events join as soon as each window is done, with their own
    times, so frames are never held back."""
    from videokv.video.transcribe import merge_transcript, parse_transcribe, transcribe_stream

    language = parse_transcribe(transcribe)
    if language is False:
        return items
    source = os.fspath(source)
    speech = transcribe_stream(source, language, offset=offset, start=start)
    return merge_transcript(items, speech, wait=not is_live(source))


def chunked(items: Iterable[Item], chunk_frames: int) -> Iterator[list[Item]]:
    """Lists of items with at most `chunk_frames` frames each (text events ride along)."""
    chunk: list[Item] = []
    n = 0
    for item in items:
        chunk.append(item)
        n += isinstance(item, Frame)
        if n >= chunk_frames:
            yield chunk
            chunk, n = [], 0
    if chunk:
        yield chunk


class LiveSource:
    """Pulls `url` in a background thread and feeds `ingest(chunk)` until the end or `stop()`.

    state: "running", "done" (the source ended), "stopped" (by `stop`), "error" (`error` says why).
    Frame times are the source's own plus `offset` (where the stream clock was when the source started);
    `start` skips the first seconds of the source (the sampling grid then starts there).
    `resume_after` (a stream time) resumes a file or a non-live URL exactly: the source is read from its
    start on the same sampling grid as the first run, and the frames (and text) at or before that time,
    already committed, are skipped without model work, so the frame times are those of an uninterrupted
    run. realtime: frames are handed over no faster than the wall clock (as a camera would deliver them).
    """

    def __init__(
        self,
        url: str,
        ingest: Callable[[list[Item]], object],
        fps: float = 1.0,
        realtime: bool = True,
        subtitles: str | None = None,
        offset: float = 0.0,
        start: float = 0.0,
        chunk_frames: int = 8,
        on_end: Callable[[LiveSource], None] | None = None,
        resume_after: float | None = None,
        max_pixels: int | None = None,
        follow_redirects: bool = True,
        transcribe: str | bool | None = None,
    ):
        if chunk_frames < 1:
            raise InputError(f"chunk_frames must be >= 1; got {chunk_frames}")
        self.url = url
        self.fps = float(fps)
        self.realtime = realtime
        self.subtitles = subtitles
        self.offset = float(offset)
        self.start_at = float(start)
        self.chunk_frames = chunk_frames
        self.resume_after = None if resume_after is None else float(resume_after)
        self.max_pixels = max_pixels
        self.follow_redirects = follow_redirects
        self.transcribe = transcribe or None  # True / "auto" / a language code: the audio's transcript too
        #: stream time of the last frame handed over and ingested (what a journal commit covers)
        self.last_t: float | None = self.resume_after
        self._handing: float | None = None  # the last frame time of the chunk being ingested right now
        self.dropped_text = 0  # subtitle events past the end of the video, not ingested
        self._ingest = ingest
        self._on_end = on_end
        self._events = load_subtitles(subtitles) if subtitles else []
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"videokv-source-{Path(url).name}", daemon=True
        )
        self.state = "running"
        self.error: str | None = None
        self.frames = 0  # frames ingested
        self.chunks = 0

    def describe(self) -> dict:
        return {"url": self.url, "fps": self.fps, "state": self.state, "error": self.error}

    def spec(self) -> dict:
        """What it takes to resume this source (kept in the session's journal)."""
        return {
            "url": self.url,
            "fps": self.fps,
            "realtime": self.realtime,
            "subtitles": self.subtitles,
            "transcribe": self.transcribe,
            "offset": self.offset,
            "state": self.state,
            "error": self.error,
            # the last frame a commit covers: a commit made while a chunk is ingested includes that chunk
            "last_t": self._handing if self._handing is not None else self.last_t,
        }

    def start(self) -> LiveSource:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ask the thread to stop after the chunk in progress."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end; True if it has."""
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def running(self) -> bool:
        return self.state == "running"

    def _run(self) -> None:
        try:
            skip = self.resume_after
            start = 0.0 if skip is not None else self.start_at  # an exact resume replays the grid from 0
            frames = open_frames(self.url, self.fps, start, self.max_pixels, self.follow_redirects)
            events = [e for e in self._events if e.start >= start]
            dropped: list[TextEvent] = []
            items = merge_items(frames, events, self.offset, interval=1.0 / self.fps, dropped=dropped)
            items = with_transcript(items, self.url, self.transcribe, self.offset, start)
            if skip is not None:
                items = (it for it in items if _item_time(it) > skip + 1e-9)
            self._pump(items)
            self.dropped_text = len(dropped)
            self.state = "stopped" if self._stop.is_set() else "done"
        except BaseException as e:  # report any failure in the source's state
            if self._stop.is_set():
                self.state = "stopped"
            else:
                self.state = "error"
                self.error = str(e) or type(e).__name__
        finally:
            if self._on_end is not None:
                self._on_end(self)

    def _pump(self, items: Iterator[Item]) -> None:
        chunk: list[Item] = []
        n = 0
        wall0 = time.monotonic()
        chunk_wall = None
        t_first: float | None = None
        for item in items:
            if self._stop.is_set():
                return
            if self.realtime and isinstance(item, Frame):
                t_first = item.t if t_first is None else t_first
                delay = wall0 + (item.t - t_first) - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return
            chunk.append(item)
            chunk_wall = chunk_wall or time.monotonic()
            n += isinstance(item, Frame)
            waited = time.monotonic() - chunk_wall
            if n >= self.chunk_frames or (self.realtime and n and waited >= MAX_CHUNK_WAIT_S):
                self._hand_over(chunk, n)
                chunk, n, chunk_wall = [], 0, None
        if chunk and not self._stop.is_set():
            self._hand_over(chunk, n)

    def _hand_over(self, chunk: list[Item], n_frames: int) -> None:
        times = [it.t for it in chunk if isinstance(it, Frame)]
        self._handing = times[-1] if times else self.last_t
        try:
            self._ingest(chunk)
        finally:
            handed, self._handing = self._handing, None
        self.last_t = handed
        self.frames += n_frames
        self.chunks += 1


class FinishedSource:
    """A source that had ended (done, stopped or failed) before the session was restored from its journal:
    nothing runs, but the session still reports how its source ended and keeps it in the journal."""

    def __init__(self, spec: dict):
        self._spec = dict(spec)
        self.url: str = spec["url"]
        self.fps = float(spec.get("fps") or 1.0)
        self.state: str = spec.get("state") or "done"
        self.error: str | None = spec.get("error")

    running = False

    def describe(self) -> dict:
        return {"url": self.url, "fps": self.fps, "state": self.state, "error": self.error}

    def spec(self) -> dict:
        return dict(self._spec)

    def stop(self) -> None:
        """Nothing runs: a no-op."""

    def join(self, timeout: float | None = None) -> bool:
        return True


def _item_time(item: Item) -> float:
    return item.t if isinstance(item, Frame) else item.start
