"""Live sources: a background thread decodes a video file, URL or RTSP stream with PyAV at stream pace and
hands chunks of frames (with the subtitle events that fall among them) to an ingest callback.

The callback does the model work (in the server: a scheduler job per chunk, committed to the journal) and
blocks until it is done, so decoding never runs ahead of the model by more than one chunk.
"""

from __future__ import annotations

import heapq
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import av
import av.error
import numpy as np

from videokv.engine import Frame
from videokv.errors import InputError, VideoError
from videokv.video.decode import iter_frames
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


def _iter_url(url: str, fps: float, start: float = 0.0) -> Iterator[tuple[float, np.ndarray]]:
    """Sample a stream PyAV opens (http(s), rtsp, ...) at `fps`; times in seconds from its first frame."""
    options = {"rtsp_transport": "tcp"} if url.lower().startswith("rtsp") else {}
    try:
        container = av.open(url, options=options, timeout=(15.0, 15.0))
    except (av.error.FFmpegError, OSError) as e:
        raise VideoError(f"cannot open {url!r}: {getattr(e, 'strerror', None) or e}") from e
    try:
        if not container.streams.video:
            raise VideoError(f"{url!r} has no video stream")
        stream = container.streams.video[0]
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


def open_frames(source: str, fps: float, start: float = 0.0) -> Iterator[tuple[float, np.ndarray]]:
    """(time, RGB frame) pairs of a local video file (seekable, checked for truncation) or a URL."""
    if not fps > 0 or not math.isfinite(fps):
        raise InputError(f"fps must be a positive number; got {fps}")
    if is_url(source) and not source.lower().startswith("file://"):
        return _iter_url(source, fps, start)
    path = source[len("file://") :] if source.lower().startswith("file://") else source
    return iter_frames(os.path.expanduser(path), fps=fps, start=start)


def merge_items(
    frames: Iterable[tuple[float, np.ndarray]], events: Iterable[TextEvent], offset: float = 0.0
) -> Iterator[Item]:
    """Frames and text events in stream order, shifted by `offset` seconds (text first at equal times)."""
    shifted = sorted(
        (TextEvent(e.start + offset, e.end + offset, e.text) for e in events), key=lambda e: e.start
    )
    keyed_frames = ((t + offset, 1, i, Frame(t + offset, img)) for i, (t, img) in enumerate(frames))
    keyed_events = ((e.start, 0, i, e) for i, e in enumerate(shifted))
    for *_, item in heapq.merge(keyed_events, keyed_frames):
        yield item


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
    `start` skips the first seconds of the source (to resume a file where a previous run stopped).
    realtime: frames are handed over no faster than the wall clock (as a camera would deliver them).
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
            "offset": self.offset,
            "state": self.state,
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
            frames = open_frames(self.url, self.fps, self.start_at)
            events = [e for e in self._events if e.start >= self.start_at]
            items = merge_items(frames, events, self.offset)
            self._pump(items)
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
        self._ingest(chunk)
        self.frames += n_frames
        self.chunks += 1
