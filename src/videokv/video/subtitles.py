r"""Timed text: subtitle files (SRT, WebVTT) and hand-made ``(time, text)`` events.

Every parser returns :class:`TextEvent` objects with times in seconds. Cue text is flattened to one line:
markup tags (``<i>``, ``<c.x>``, ``<00:00:01.000>``, ``{\an8}``) are removed and the lines of a cue are
joined with a space.
"""

from __future__ import annotations

import html
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from videokv.errors import InputError, SubtitleError

__all__ = [
    "TextEvent",
    "events_from_pairs",
    "format_srt",
    "load_subtitles",
    "parse_srt",
    "parse_vtt",
    "write_srt",
]


@dataclass(frozen=True)
class TextEvent:
    """A piece of text shown from ``start`` to ``end`` seconds (``end == start`` for an instant).

    Raises:
        InputError: ``start`` < 0, ``end`` < ``start``, a time that is not a finite number, or empty text.
    """

    start: float
    end: float
    text: str

    def __post_init__(self) -> None:
        for field in ("start", "end"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InputError(f"TextEvent {field} must be a finite number of seconds; got {value!r}")
            object.__setattr__(self, field, float(value))
        if self.start < 0:
            raise InputError(f"TextEvent start must be >= 0 seconds; got {self.start}")
        if self.end < self.start:
            raise InputError(f"TextEvent end ({self.end}) must be >= start ({self.start})")
        if not isinstance(self.text, str):
            raise InputError(f"TextEvent text must be a string; got {type(self.text).__name__}")
        text = self.text.strip()
        if not text:
            raise InputError(f"TextEvent text must not be empty (event at {self.start} s)")
        object.__setattr__(self, "text", text)


# hh:mm:ss.ttt or mm:ss.ttt; the fraction may use ',' (SRT) or '.' (WebVTT) and have 1-3 digits.
_TIME = r"(?:(\d+):)?(\d{1,2}):(\d{1,2})(?:[,.](\d{1,3}))?"
_TIMING = re.compile(rf"^\s*{_TIME}\s*-->\s*{_TIME}(?:\s+.*)?\s*$")
_TAG = re.compile(r"<[^>]*>|\{\\[^}]*\}")
_SPACE = re.compile(r"\s+")


def _seconds(groups: Sequence[str | None]) -> float:
    """Seconds from the (hours, minutes, seconds, fraction) groups of ``_TIME``, exact to the millisecond."""
    hours, minutes, secs, frac = groups
    m, s = int(minutes or 0), int(secs or 0)
    if m >= 60 or s >= 60:
        raise ValueError("minutes and seconds must be below 60")
    millis = ((int(hours or 0) * 60 + m) * 60 + s) * 1000 + int((frac or "0").ljust(3, "0"))
    return millis / 1000


def _parse_timing(line: str, lineno: int, fmt: str) -> tuple[float, float]:
    """Parse ``start --> end`` (settings after ``end`` are ignored); SubtitleError naming the line if bad."""
    match = _TIMING.match(line)
    example = "00:00:01,000 --> 00:00:02,500" if fmt == "SRT" else "00:01.000 --> 00:02.500"
    if match is None:
        raise SubtitleError(
            f"{fmt} line {lineno}: malformed timestamp line {line.strip()!r}; expected {example!r}"
        )
    try:
        start, end = _seconds(match.groups()[:4]), _seconds(match.groups()[4:])
    except ValueError as exc:
        raise SubtitleError(f"{fmt} line {lineno}: malformed timestamp line {line.strip()!r}: {exc}") from exc
    if end < start:
        raise SubtitleError(f"{fmt} line {lineno}: cue ends ({end:.3f} s) before it starts ({start:.3f} s)")
    return start, end


def _clean(lines: Iterable[str], unescape: bool) -> str:
    """Strip markup from cue lines and join them with single spaces."""
    text = " ".join(_TAG.sub("", line) for line in lines)
    if unescape:
        text = html.unescape(text)
    return _SPACE.sub(" ", text).strip()


def _blocks(text: str) -> list[tuple[int, list[str]]]:
    """Split text into blocks separated by blank lines: ``(first line number, lines)``."""
    if text.startswith("\ufeff"):
        text = text[1:]
    blocks: list[tuple[int, list[str]]] = []
    current: list[str] = []
    first = 0
    for lineno, line in enumerate(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"), start=1):
        if line.strip():
            if not current:
                first = lineno
            current.append(line.rstrip())
        elif current:
            blocks.append((first, current))
            current = []
    if current:
        blocks.append((first, current))
    return blocks


def parse_srt(text: str) -> list[TextEvent]:
    """Parse SubRip (``.srt``) text into events, in file order.

    Each cue is an optional number line, a ``00:00:01,000 --> 00:00:02,500`` line (a ``.`` decimal separator
    and trailing position settings are tolerated) and text lines. Cues whose text is empty after removing
    tags are skipped. A BOM and CRLF line ends are tolerated.

    Raises:
        SubtitleError: a malformed timestamp line, or a block without one; the message gives the line number.
    """
    events: list[TextEvent] = []
    for first, lines in _blocks(text):
        offset = 1 if lines[0].strip().isdigit() else 0
        if offset >= len(lines) or "-->" not in lines[offset]:
            lineno = first + min(offset, len(lines) - 1)
            bad = lines[min(offset, len(lines) - 1)].strip()
            raise SubtitleError(
                f"SRT line {lineno}: expected a timestamp line like "
                f"'00:00:01,000 --> 00:00:02,500'; got {bad!r}"
            )
        start, end = _parse_timing(lines[offset], first + offset, "SRT")
        body = _clean(lines[offset + 1 :], unescape=False)
        if body:
            events.append(TextEvent(start, end, body))
    return events


def parse_vtt(text: str) -> list[TextEvent]:
    """Parse WebVTT (``.vtt``) text into events, in file order.

    Needs the ``WEBVTT`` header. Header metadata and ``NOTE``, ``STYLE`` and ``REGION`` blocks are skipped,
    cue identifiers and cue settings are ignored, ``mm:ss.ttt`` and ``hh:mm:ss.ttt`` times are accepted, tags
    (``<i>``, ``<c.x>``, ``<v Name>``, ``<00:00:01.000>``) are stripped and HTML entities decoded. Cues whose
    text is empty are skipped. A BOM and CRLF line ends are tolerated.

    Raises:
        SubtitleError: a missing header or a malformed timestamp line; the message gives the line number.
    """
    blocks = _blocks(text)
    if not blocks or not re.match(r"WEBVTT(?:[ \t].*)?$", blocks[0][1][0]):
        lineno = blocks[0][0] if blocks else 1
        raise SubtitleError(f"VTT line {lineno}: missing 'WEBVTT' header; is this a WebVTT file?")
    events: list[TextEvent] = []
    for first, lines in blocks[1:]:
        head = lines[0].strip()
        if re.match(r"(NOTE|STYLE|REGION)(?:\s|$)", head) and "-->" not in head:
            continue
        if "-->" in lines[0]:
            offset = 0
        elif len(lines) > 1 and "-->" in lines[1]:
            offset = 1  # cue identifier
        else:
            # report the line that looks like a (broken) timing line, else where one was expected
            offset = 0 if len(lines) == 1 or re.search(r"\d:\d", lines[0]) else 1
            raise SubtitleError(
                f"VTT line {first + offset}: expected a timestamp line like "
                f"'00:01.000 --> 00:02.500'; got {lines[offset].strip()!r}"
            )
        start, end = _parse_timing(lines[offset], first + offset, "VTT")
        body = _clean(lines[offset + 1 :], unescape=True)
        if body:
            events.append(TextEvent(start, end, body))
    return events


def _read_text(path: Path) -> str:
    """Read a subtitle file as UTF-8 (BOM allowed), falling back to cp1252 for legacy files."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def load_subtitles(path: str | os.PathLike[str]) -> list[TextEvent]:
    """Read an ``.srt`` or ``.vtt`` file (other names are sniffed for ``WEBVTT``) into events sorted by start.

    Raises:
        SubtitleError: the file is missing, is not a subtitle file, or is malformed (the message names the
            file and the line).
    """
    file = Path(path)
    if not file.is_file():
        raise SubtitleError(f"subtitle file {str(file)!r} not found")
    try:
        text = _read_text(file)
    except OSError as exc:
        raise SubtitleError(f"cannot read subtitle file {str(file)!r}: {exc}") from exc
    suffix = file.suffix.lower()
    is_vtt = text.lstrip("\ufeff").startswith("WEBVTT")
    try:
        if is_vtt or suffix == ".vtt":
            events = parse_vtt(text)
        elif suffix == ".srt" or "-->" in text:
            events = parse_srt(text)
        else:
            raise SubtitleError("not an SRT or WebVTT file (no 'WEBVTT' header and no '-->' timestamp lines)")
    except SubtitleError as exc:
        raise SubtitleError(f"{str(file)!r}: {exc}") from exc
    return sorted(events, key=lambda e: (e.start, e.end))


def events_from_pairs(pairs: Iterable[tuple[float, str] | tuple[float, float, str]]) -> list[TextEvent]:
    """Build events from ``(time, text)`` (an instant: ``end == start``) or ``(start, end, text)`` tuples.

    Raises:
        InputError: an item of another length, or an invalid event (negative time, end before start, empty).
    """
    events: list[TextEvent] = []
    for i, pair in enumerate(pairs):
        if isinstance(pair, TextEvent):
            events.append(pair)
            continue
        if not isinstance(pair, (tuple, list)) or len(pair) not in (2, 3):
            raise InputError(f"item {i} must be (time, text) or (start, end, text); got {pair!r}")
        try:
            if len(pair) == 2:
                events.append(TextEvent(pair[0], pair[0], pair[1]))
            else:
                events.append(TextEvent(pair[0], pair[1], pair[2]))
        except InputError as exc:
            raise InputError(f"item {i}: {exc}") from exc
    return events


def _srt_time(seconds: float) -> str:
    """Format seconds as ``HH:MM:SS,mmm``."""
    ms = round(seconds * 1000)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d},{ms:03d}"


def format_srt(events: Iterable[TextEvent]) -> str:
    """Format events as SubRip text (numbered from 1; times rounded to milliseconds).

    Blank lines inside a text are dropped, since they would end the cue.
    """
    out: list[str] = []
    for n, event in enumerate(events, start=1):
        body = "\n".join(line for line in event.text.splitlines() if line.strip())
        out.append(f"{n}\n{_srt_time(event.start)} --> {_srt_time(event.end)}\n{body}\n")
    return "\n".join(out)


def write_srt(events: Iterable[TextEvent], path: str | os.PathLike[str]) -> None:
    """Write events to ``path`` as a UTF-8 SubRip file (see :func:`format_srt`)."""
    Path(path).write_text(format_srt(events), encoding="utf-8")
