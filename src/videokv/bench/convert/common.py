"""What every converter shares: reading annotation records, naming them in errors, finding video files,
choice/answer handling, and building the entries (missing videos, whole-video end times).

A converter reads its benchmark's records with :func:`read_records`, wraps each in a :class:`Record` (whose
accessors raise a :class:`~videokv.bench.dataset.DatasetError` naming the annotation file and the record),
and feeds videos and questions to a :class:`Builder`, whose :meth:`Builder.build` returns a
:class:`Converted` list of entries.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from videokv.bench.dataset import (
    DURATION_TOLERANCE,
    Conversation,
    DatasetError,
    FieldError,
    VideoEntry,
    json_kind,
    option_label,
    resolve_answer,
)

__all__ = [
    "VIDEO_SUFFIXES",
    "Builder",
    "Converted",
    "Record",
    "Skipped",
    "check_folder",
    "parse_clock",
    "read_list",
    "read_records",
    "strip_option_labels",
    "task_family",
    "video_candidates",
]

#: File name endings tried, in order, when an annotation names a video without its extension.
VIDEO_SUFFIXES = (".mp4", ".MP4", ".mkv", ".webm", ".avi", ".mov")

#: Missing video ids listed in one error message.
MAX_LISTED_MISSING = 20


@dataclass(frozen=True)
class Skipped:
    """A record that was read but not converted, and why (e.g. the benchmark publishes no answer for it)."""

    record: str
    reason: str


class Converted(list):
    """The converted entries (a ``list[VideoEntry]``), plus what was left out.

    Attributes:
        missing: ids of videos whose file was not found (left out; only with ``allow_missing=True``).
        skipped: records that were not converted, each with its reason.
    """

    def __init__(
        self,
        entries: Iterable[VideoEntry] = (),
        missing: Iterable[str] = (),
        skipped: Iterable[Skipped] = (),
    ):
        super().__init__(entries)
        self.missing: list[str] = list(missing)
        self.skipped: list[Skipped] = list(skipped)

    @property
    def questions(self) -> int:
        """Number of questions over all entries."""
        return sum(len(e.conversations) for e in self)


def check_folder(path: str | os.PathLike[str] | None, what: str) -> Path | None:
    """``path`` as an absolute Path (None stays None); DatasetError when it is not an existing folder."""
    if path is None:
        return None
    folder = Path(os.path.abspath(Path(path).expanduser()))
    if not folder.is_dir():
        state = "is not a folder" if folder.exists() else "does not exist"
        raise DatasetError(f"{what} {str(folder)!r} {state}")
    return folder


# ---------------------------------------------------------------------------------------------------------
# Reading records


def read_records(annotation: str | os.PathLike[str], what: str = "annotation file") -> list[Any]:
    """Read an annotation file's records: a ``.json`` list (or object), ``.jsonl`` (one JSON value a line),
    or ``.parquet`` (needs pyarrow).

    Raises:
        DatasetError: the file is missing or malformed (with the line and column for JSON).
    """
    path = Path(annotation)
    name = str(annotation)
    if not path.is_file():
        state = "is not a file" if path.exists() else "not found"
        raise DatasetError(f"{what} {name!r} {state}")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _read_parquet(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{name}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except OSError as e:
        raise DatasetError(f"cannot read {what} {name!r}: {e}") from e
    if suffix == ".jsonl":
        records = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DatasetError(f"{name}: invalid JSON at line {lineno}, column {e.colno}: {e.msg}") from e
        return records
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{name}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e
    return data


def read_list(annotation: str | os.PathLike[str], what: str, items: str) -> list[Any]:
    """:func:`read_records` for a file that must hold a list (of ``items``, named in the error)."""
    data = read_records(annotation, what)
    if not isinstance(data, list):
        raise DatasetError(f"{annotation}: expected a JSON list of {items}, got a JSON {json_kind(data)}")
    return data


def _read_parquet(path: Path) -> list[dict]:
    try:
        import pyarrow.parquet as pq  # noqa: PLC0415 (optional dependency)
    except ImportError:
        raise DatasetError(
            f"{path}: reading .parquet annotations needs pyarrow (pip install pyarrow); or export the table "
            "to JSON Lines first, e.g. with the datasets library: "
            "datasets.load_dataset('parquet', data_files=PATH)['train'].to_json('annotation.jsonl')"
        ) from None
    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises its own error types
        raise DatasetError(f"{path}: not a readable parquet file: {e}") from e


def _short(value: Any, limit: int = 60) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Record:
    """One annotation record, with typed accessors whose errors name the file and the record.

    Args:
        annotation: the annotation file (for messages).
        index: the record's position in the file (a string for nested positions, e.g. ``"3.1"``).
        raw: the parsed record (must be a JSON object).
        id_keys: keys whose value, when present, identifies the record in messages (the first found).
        where: a prefix for the record's position (e.g. ``"record 3, "`` for nested records).
        noun: what the record is called in messages (``record``, ``question``).
    """

    def __init__(
        self,
        annotation: Path | str,
        index: int | str,
        raw: Any,
        id_keys: Sequence[str] = (),
        where: str = "",
        noun: str = "record",
    ):
        self.annotation = str(annotation)
        self.index = index
        label = f"{where}{noun} {index}"
        if isinstance(raw, dict):
            for key in id_keys:
                if isinstance(raw.get(key), (str, int)) and not isinstance(raw.get(key), bool):
                    label += f" ({key} {raw[key]!r})"
                    break
        self.label = label
        if not isinstance(raw, dict):
            raise self.error(f"expected a JSON object, got a JSON {json_kind(raw)} {_short(raw)}")
        self.raw: dict = raw

    def error(self, message: str) -> DatasetError:
        """A DatasetError ``ANNOTATION: RECORD: message``."""
        return DatasetError(f"{self.annotation}: {self.label}: {message}")

    def field_error(self, key: str, expected: str, value: Any = None, show: bool = True) -> DatasetError:
        got = f", got {_short(value)}" if show else ""
        return self.error(f"field {key!r}: expected {expected}{got}")

    def has(self, key: str) -> bool:
        return self.raw.get(key) is not None

    def get(self, key: str, default: Any = None) -> Any:
        value = self.raw.get(key)
        return default if value is None else value

    def text(self, key: str) -> str:
        """A required non-empty string field."""
        if key not in self.raw:
            raise self.field_error(key, "a string (the field is missing)", show=False)
        value = self.raw[key]
        if not isinstance(value, str) or not value.strip():
            raise self.field_error(key, "a non-empty string", value)
        return value

    def text_or_id(self, key: str) -> str:
        """A required id: a non-empty string, or an integer (written as a string)."""
        value = self.raw.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return self.text(key)

    def optional_text(self, key: str) -> str | None:
        value = self.raw.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.field_error(key, "a string", value)
        return value if value.strip() else None

    def number(self, key: str, *, minimum: float | None = 0.0) -> float:
        """A required finite number (a numeric string is accepted too)."""
        if self.raw.get(key) is None:
            raise self.field_error(key, "a number (the field is missing)", show=False)
        value = self.raw[key]
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise self.field_error(key, "a number", self.raw[key]) from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.field_error(key, "a finite number", value)
        if minimum is not None and value < minimum:
            raise self.field_error(key, f"a number >= {minimum:g}", value)
        return float(value)

    def optional_number(self, key: str, *, minimum: float | None = 0.0) -> float | None:
        return self.number(key, minimum=minimum) if self.has(key) else None

    def seconds(self, key: str) -> float:
        """A required time: seconds as a number, or a clock string ``HH:MM:SS[.fff]`` / ``MM:SS``."""
        if self.raw.get(key) is None:
            raise self.field_error(key, "a time (the field is missing)", show=False)
        try:
            return parse_clock(self.raw[key])
        except ValueError as e:
            raise self.field_error(key, f"a time ({e})", self.raw[key]) from None

    def strings(self, key: str) -> list[str]:
        """A required list of non-empty strings."""
        value = self.raw.get(key)
        if not isinstance(value, list) or not value:
            raise self.field_error(key, "a non-empty list of strings", value, show=key in self.raw)
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                raise self.field_error(f"{key}[{i}]", "a non-empty string", item)
        return list(value)

    def answer_text(self, key: str, choices: Sequence[str], *, value: Any = None) -> str:
        """The text of the choice that field ``key`` designates: an int is a 0-based index; a string is the
        choice's text or letter (see :func:`~videokv.bench.dataset.resolve_answer`)."""
        value = self.raw.get(key) if value is None else value
        if value is None:
            raise self.field_error(key, "the right choice (the field is missing)", show=False)
        if isinstance(value, int) and not isinstance(value, bool):
            if 0 <= value < len(choices):
                return choices[value]
            raise self.field_error(key, f"a choice index 0-{len(choices) - 1}", value)
        if isinstance(value, str):
            index = resolve_answer(value, choices)
            if index is not None:
                return choices[index]
        last = chr(ord("A") + len(choices) - 1)
        expected = f"one of the {len(choices)} choices (its text, letter A-{last} or index)"
        raise self.field_error(key, expected, value)


_CLOCK = re.compile(r"^\s*(?:(\d+):)?(\d{1,2}):(\d{1,2}(?:[.,]\d+)?)\s*$")


def parse_clock(value: Any) -> float:
    """Seconds from a number, a numeric string, or a clock string ``H:MM:SS[.fff]`` / ``MM:SS`` (a comma is
    accepted as the decimal mark). Raises ValueError for anything else or a negative time."""
    if isinstance(value, bool):
        raise ValueError("not a time")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        m = _CLOCK.match(value)
        if m:
            hours, minutes, secs = m.groups()
            seconds = int(hours or 0) * 3600 + int(minutes) * 60 + float(secs.replace(",", "."))
        else:
            try:
                seconds = float(value)
            except ValueError:
                raise ValueError("seconds or HH:MM:SS") from None
    else:
        raise ValueError("seconds or HH:MM:SS")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("a time >= 0")
    return seconds


def task_family(question_type: str | None, families: dict[str, str], *, prefix: bool = False) -> str:
    """The task family (`videokv.bench.dataset.TASKS`) that a source's question type names, by ``families``
    (source type, lower case -> family; with ``prefix``, the type's part before the first ``_``), or
    ``"other"`` when the source's type names none of them (or there is no type)."""
    if not question_type:
        return "other"
    key = question_type.strip().lower()
    if prefix:
        key = key.split("_", 1)[0]
    return families.get(key, "other")


def strip_option_labels(options: Sequence[str]) -> list[str]:
    """Drop ``"A. "``-style labels from options when every option carries its own letter in order
    (``["A. Red", "B. Blue"]`` -> ``["Red", "Blue"]``); otherwise return the options unchanged."""
    stripped = []
    for i, option in enumerate(options):
        letter, text = option_label(option)
        if letter != chr(ord("A") + i) or not text.strip():
            return list(options)
        stripped.append(text.strip())
    return stripped if len(set(stripped)) == len(stripped) else list(options)


def video_candidates(root: Path, name: str) -> list[Path]:
    """Files that may hold the video ``name`` under ``root``: the name itself, then (for a name without a
    known video extension) the name with each of :data:`VIDEO_SUFFIXES`."""
    base = root / name
    out = [base]
    if base.suffix not in VIDEO_SUFFIXES:
        out += [base.with_name(base.name + s) for s in VIDEO_SUFFIXES]
    else:
        out += [base.with_suffix(s) for s in VIDEO_SUFFIXES if s != base.suffix]
    return out


# ---------------------------------------------------------------------------------------------------------
# Building entries


@dataclass
class _Question:
    record: str
    question: str
    answer: str
    choices: list[str] | None
    start_time: float
    end_time: float | None  # None: the whole video (its duration)
    question_type: str | None
    evidence: list[tuple[float, float]]
    task: str = "other"


@dataclass
class _Video:
    video_id: str
    record: str
    path: Path | None
    tried: list[Path]
    duration: float | None
    subtitles: Path | None
    questions: list[_Question] = field(default_factory=list)


class Builder:
    """Collects videos and questions, then builds the entries.

    Args:
        annotation: the annotation file (for messages).
        allow_missing: leave out videos whose file is missing (listed in ``Converted.missing``) instead of
            raising a DatasetError that lists them.
    """

    def __init__(self, annotation: Path | str, *, allow_missing: bool = False):
        self.annotation = str(annotation)
        self.allow_missing = allow_missing
        self._videos: dict[str, _Video] = {}
        self._skipped: list[Skipped] = []

    def __contains__(self, video_id: str) -> bool:
        return video_id in self._videos

    def add_video(
        self,
        video_id: str,
        candidates: Sequence[Path],
        *,
        record: str,
        duration: float | None = None,
        subtitles: Path | None = None,
    ) -> None:
        """Register a video (again: no-op, except that a duration or subtitles learnt later are kept).

        Args:
            candidates: files that may hold it, in order of preference; the first existing one is used.
            record: the record that named it (for messages).
            duration: seconds, when the annotation says.
            subtitles: an SRT/WebVTT file, when there is one.
        """
        video = self._videos.get(video_id)
        if video is None:
            path = next((p for p in candidates if p.is_file()), None)
            self._videos[video_id] = _Video(video_id, record, path, list(candidates), duration, subtitles)
            return
        if video.duration is None:
            video.duration = duration
        if video.subtitles is None:
            video.subtitles = subtitles

    def add_question(
        self,
        video_id: str,
        *,
        record: str,
        question: str,
        answer: str,
        choices: Sequence[str] | None = None,
        start_time: float = 0.0,
        end_time: float | None = None,
        question_type: str | None = None,
        evidence: Sequence[tuple[float, float]] = (),
        task: str = "other",
    ) -> None:
        """Add a question to a registered video. ``end_time=None`` means the whole video: the end time
        becomes the video's duration (from the annotation, else probed from the file). ``task``: the task
        family the source's question type names (:func:`task_family`); ``"other"`` when it names none."""
        self._videos[video_id].questions.append(
            _Question(
                record,
                question,
                answer,
                list(choices) if choices is not None else None,
                start_time,
                end_time,
                question_type,
                list(evidence),
                task,
            )
        )

    def skip(self, record: str, reason: str) -> None:
        """Note a record that is not converted."""
        self._skipped.append(Skipped(record, reason))

    def build(self, *, sort_by_time: bool = False) -> Converted:
        """The entries, in the order their videos were first named.

        Args:
            sort_by_time: order each video's questions by end time (streaming benchmarks: the order they
                are asked in); ties keep the annotation's order.

        Raises:
            DatasetError: videos are missing (without ``allow_missing``), a question is invalid (naming its
                record), or a video's duration is needed but cannot be read.
        """
        videos = [v for v in self._videos.values() if v.questions]
        missing = [v for v in videos if v.path is None]
        if missing and not self.allow_missing:
            raise self._missing_error(missing)
        entries = []
        for video in videos:
            if video.path is None:
                continue
            entries.append(self._entry(video, sort_by_time))
        return Converted(entries, [v.video_id for v in missing], self._skipped)

    def _missing_error(self, missing: list[_Video]) -> DatasetError:
        lines = [
            f"  - {v.video_id} ({v.record}): tried {', '.join(str(p) for p in v.tried[:2])}"
            + (f" (and {len(v.tried) - 2} other endings)" if len(v.tried) > 2 else "")
            for v in missing[:MAX_LISTED_MISSING]
        ]
        more = len(missing) - len(lines)
        tail = f"\n  ... and {more} more" if more else ""
        ids = [v.video_id for v in missing]
        err = DatasetError(
            f"{self.annotation}: {len(missing)} video file(s) not found:\n" + "\n".join(lines) + tail + "\n"
            "Check the video folder, or pass allow_missing=True (--allow-missing) to convert the others.",
            [f"video {i!r} not found" for i in ids],
        )
        err.missing = ids  # type: ignore[attr-defined]
        return err

    def _entry(self, video: _Video, sort_by_time: bool) -> VideoEntry:
        duration = video.duration
        if duration is None and any(q.end_time is None for q in video.questions):
            duration = self._probe(video)
        convs = []
        for q in video.questions:
            end = duration if q.end_time is None else q.end_time
            try:
                conv = Conversation(
                    question=q.question,
                    answer=q.answer,
                    end_time=end,
                    start_time=q.start_time,
                    choices=tuple(q.choices) if q.choices is not None else None,
                    question_type=q.question_type,
                    evidence=tuple(q.evidence),
                    task=q.task,
                )
            except FieldError as e:
                raise DatasetError(f"{self.annotation}: {q.record}: {e}") from None
            if duration is not None:
                limit = duration + DURATION_TOLERANCE
                if conv.end_time > limit or any(t1 > limit for _, t1 in conv.evidence):
                    raise DatasetError(
                        f"{self.annotation}: {q.record}: the question's time ({conv.end_time:g} s) or "
                        f"evidence is after the end of video {video.video_id!r} ({duration:g} s)"
                    )
            convs.append(conv)
        if sort_by_time:
            convs.sort(key=lambda c: c.end_time)
        try:
            return VideoEntry(
                video_id=video.video_id,
                video_path=video.path,
                conversations=tuple(convs),
                duration=duration,
                subtitles=video.subtitles,
            )
        except FieldError as e:
            raise DatasetError(f"{self.annotation}: {video.record}: {e}") from None

    def _probe(self, video: _Video) -> float:
        from videokv.errors import VideoError  # noqa: PLC0415
        from videokv.video.decode import probe  # noqa: PLC0415 (PyAV is only needed here)

        try:
            info = probe(video.path)
        except VideoError as e:
            raise DatasetError(
                f"{self.annotation}: {video.record}: cannot read the length of video {video.video_id!r}: {e}"
            ) from None
        if info.duration <= 0:
            raise DatasetError(
                f"{self.annotation}: {video.record}: video {str(video.path)!r} does not say how long it is, "
                "and the annotation gives no duration; re-encode it (e.g. ffmpeg -i IN -c copy OUT.mp4)"
            )
        return info.duration
