"""The benchmark dataset format: a JSON list of videos, each with timed questions.

The shape is the one used by ReKV-style streaming benchmarks, plus subtitles::

    [
      {
        "video_id": "v1",
        "video_path": "videos/v1.mp4",          # absolute, or relative to the JSON file's folder
        "duration": 600.0,                       # optional, seconds
        "subtitles": "subs/v1.srt",              # optional SRT/WebVTT file, same path rule
        "conversations": [
          {
            "question": "What colour is the car?",
            "answer": "Red",
            "choices": ["Blue", "Red", "Green"],  # optional: multiple choice
            "start_time": 0.0,
            "end_time": 120.0,                   # the stream is ingested up to here, then it is asked
            "question_type": "attribute",        # optional
            "task": "retrieval",                 # optional: the task family (TASKS), default retrieval
            "evidence": [[95.0, 101.5]]          # optional: where the answer is
          }
        ]
      }
    ]

:func:`load_dataset` validates a file and says, for every problem, which file, entry (index and video_id)
and field is wrong and what was expected. :func:`dump_dataset` writes entries back atomically, with paths
relative to the JSON file's folder where they are under it. See docs/DATASET.md.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from videokv.api import normalize
from videokv.errors import InputError

__all__ = [
    "DURATION_TOLERANCE",
    "TASKS",
    "Conversation",
    "DatasetError",
    "VideoEntry",
    "dump_dataset",
    "load_dataset",
    "normalize_answer",
]

#: Seconds by which an end time or evidence span may pass the declared duration (rounding in annotations).
DURATION_TOLERANCE = 1.0

#: The task families a question may belong to (its ``task`` field; docs/DATASET.md). The scorer reads open
#: answers by family (a count as a digit or a word, an order as a sequence, a time with a tolerance), and
#: the report breaks accuracy down by family. ``other``: a converted question whose source names none.
TASKS = ("retrieval", "ordering", "counting", "temporal", "multihop", "other")

#: At most this many problems are listed in one error message.
MAX_LISTED_PROBLEMS = 20


class DatasetError(InputError):
    """A dataset file (or an annotation file being converted) is malformed; the message says where and why.

    Attributes:
        problems: every problem found, one line each (the message lists the first ones).
    """

    def __init__(self, message: str, problems: Sequence[str] | None = None):
        super().__init__(message)
        self.problems: list[str] = list(problems) if problems is not None else [message]

    def __reduce__(self):  # keep ``problems`` (and the subclass) across pickling, e.g. from a worker process
        return (_rebuild_error, (type(self), str(self), self.problems, dict(self.__dict__)))


def _rebuild_error(cls: type, message: str, problems: list[str], state: dict) -> DatasetError:
    err = cls.__new__(cls)
    DatasetError.__init__(err, message, problems)
    err.__dict__.update(state)
    return err


class FieldError(DatasetError):
    """One field is invalid. ``field`` is its path (e.g. ``conversations[1].end_time``); ``detail`` says what
    was expected and what was found."""

    def __init__(self, field: str, expected: str, got: Any = None, *, show_got: bool = True):
        detail = f"expected {expected}" + (f", got {_show(got)}" if show_got else "")
        self._set(field, detail)

    def _set(self, field: str, detail: str) -> None:
        self.field = field
        self.detail = detail
        DatasetError.__init__(self, f"{field}: {detail}")

    def under(self, prefix: str) -> FieldError:
        """The same error with its field path placed under ``prefix`` (e.g. ``conversations[1]``)."""
        err = FieldError.__new__(FieldError)
        err._set(f"{prefix}.{self.field}" if prefix else self.field, self.detail)
        return err


def _show(value: Any, limit: int = 60) -> str:
    """A short repr of a JSON value for error messages."""
    text = json.dumps(value, ensure_ascii=False) if _jsonable(value) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def normalize_answer(text: str) -> str:
    """Normalise an answer for comparison: the one rule the scorer uses too (`videokv.qa.normalize`,
    SQuAD-style: lower case, punctuation to spaces, no articles a/an/the, single spaces).
    ``"The Red car."`` -> ``"red car"``; ``"train-station"`` -> ``"train station"``."""
    return normalize(str(text))


# A choice letter as an answer: "(B)", "(B) text", "B", "B.", "B)", "B:", "B. text", "B) text".
_LETTER_PAREN = re.compile(r"^\s*\(([A-Za-z])\)\s*(?:[.:]\s*)?(.*)$", re.DOTALL)
_LETTER_PLAIN = re.compile(r"^\s*([A-Za-z])\s*(?:[.):]\s*(.*))?$", re.DOTALL)
# A label at the start of an option: "A. text", "(A) text", "A) text", "A: text".
_OPTION_LABEL = re.compile(r"^\s*(?:\(([A-Za-z])\)|([A-Za-z])[.):])\s*")


def _answer_letter(answer: str) -> str | None:
    """The choice letter an answer gives (upper case), or None. A lower-case letter counts only alone
    (``"b"``, ``"(b)"``, ``"b."``), since it may be the start of a word otherwise."""
    m = _LETTER_PAREN.match(answer) or _LETTER_PLAIN.match(answer)
    if not m:
        return None
    letter, rest = m.group(1), (m.group(2) or "").strip()
    if letter.islower() and rest:
        return None
    return letter.upper()


def option_label(option: str) -> tuple[str | None, str]:
    """Split a leading choice label off an option: ``"B. Red"`` -> ``("B", "Red")``; no label ->
    ``(None, option)``."""
    m = _OPTION_LABEL.match(option)
    if not m or m.end() == len(option):
        return None, option
    return (m.group(1) or m.group(2)).upper(), option[m.end() :]


def resolve_answer(answer: str, choices: Sequence[str]) -> int | None:
    """Index of the choice that ``answer`` designates, or None.

    In order: the exact text of a choice (then with surrounding spaces stripped); a letter (``"B"``,
    ``"(B)"``, ``"B."``, ``"B) text"``) within the number of choices; a single choice equal after
    :func:`normalize_answer` (also ignoring a choice's own ``"A. "`` label).
    """
    for i, choice in enumerate(choices):
        if answer == choice:
            return i
    stripped = answer.strip()
    for i, choice in enumerate(choices):
        if stripped == choice.strip():
            return i
    letter = _answer_letter(answer)
    if letter is not None and ord(letter) - ord("A") < len(choices):
        return ord(letter) - ord("A")
    norm = normalize_answer(answer)
    if not norm:
        return None
    hits = [i for i, c in enumerate(choices) if normalize_answer(c) == norm]
    if len(hits) != 1:
        hits = [i for i, c in enumerate(choices) if normalize_answer(option_label(c)[1]) == norm]
    return hits[0] if len(hits) == 1 else None


def _time(value: Any, field: str, minimum: float | None, what: str) -> float:
    if not _is_number(value) or (minimum is not None and value < minimum):
        raise FieldError(field, what, value)
    return float(value)


@dataclass(frozen=True)
class Conversation:
    """One question about a video, asked when the stream has reached ``end_time`` seconds.

    Lists given for ``choices`` and ``evidence`` are stored as tuples; numbers are stored as floats.
    ``task`` is the question's task family (one of :data:`TASKS`; the scorer reads open answers by it).

    Raises:
        DatasetError: a field is invalid (the message names the field and what was expected).
    """

    question: str
    answer: str
    end_time: float
    start_time: float = 0.0
    choices: tuple[str, ...] | None = None
    question_type: str | None = None
    evidence: tuple[tuple[float, float], ...] = ()
    task: str = "retrieval"

    def __post_init__(self) -> None:
        if not isinstance(self.question, str) or not self.question.strip():
            raise FieldError("question", "a non-empty string", self.question)
        if not isinstance(self.answer, str):
            raise FieldError("answer", "a string", self.answer)
        start = _time(self.start_time, "start_time", 0.0, "a number of seconds >= 0")
        end = _time(self.end_time, "end_time", start, f"a number >= start_time ({start})")
        object.__setattr__(self, "start_time", start)
        object.__setattr__(self, "end_time", end)
        if self.question_type is not None and not isinstance(self.question_type, str):
            raise FieldError("question_type", "a string or null", self.question_type)
        if self.task not in TASKS:
            raise FieldError("task", f"one of {', '.join(TASKS)} (or no task: retrieval)", self.task)
        object.__setattr__(self, "evidence", _check_evidence(self.evidence))
        index = None
        if self.choices is not None:
            choices = _check_choices(self.choices)
            object.__setattr__(self, "choices", choices)
            index = resolve_answer(self.answer, choices)
            if index is None:
                last = chr(ord("A") + len(choices) - 1)
                raise FieldError("answer", f"one of the choices (its text or a letter A-{last})", self.answer)
        elif not self.answer.strip():
            raise FieldError("answer", "a non-empty string", self.answer)
        object.__setattr__(self, "_answer_index", index)

    @property
    def answer_index(self) -> int | None:
        """Multiple choice: the index of the right option (the answer may be the option's text, exact or
        normalised, or its letter: ``"B"``, ``"(B)"``, ``"B."``, ``"B) text"``). Open questions: None."""
        return self._answer_index  # type: ignore[attr-defined]

    @property
    def is_multiple_choice(self) -> bool:
        return self.choices is not None

    def to_dict(self) -> dict:
        """The JSON object of this conversation (optional fields only when set)."""
        out: dict[str, Any] = {"question": self.question, "answer": self.answer}
        if self.choices is not None:
            out["choices"] = list(self.choices)
        out["start_time"] = self.start_time
        out["end_time"] = self.end_time
        if self.question_type is not None:
            out["question_type"] = self.question_type
        if self.task != "retrieval":
            out["task"] = self.task
        if self.evidence:
            out["evidence"] = [[t0, t1] for t0, t1 in self.evidence]
        return out


def _check_choices(value: Any) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise FieldError("choices", "a list of at least 2 strings", value)
    if len(value) < 2:
        raise FieldError("choices", "a list of at least 2 strings", value)
    seen: dict[str, int] = {}
    for i, choice in enumerate(value):
        if not isinstance(choice, str) or not choice.strip():
            raise FieldError(f"choices[{i}]", "a non-empty string", choice)
        if choice in seen:
            raise FieldError(f"choices[{i}]", f"a choice different from choices[{seen[choice]}]", choice)
        seen[choice] = i
    return tuple(value)


def _check_evidence(value: Any) -> tuple[tuple[float, float], ...]:
    if value is None:
        return ()
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise FieldError("evidence", "a list of [t0, t1] pairs", value)
    spans = []
    for i, pair in enumerate(value):
        if isinstance(pair, (str, bytes)) or not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise FieldError(f"evidence[{i}]", "a pair [t0, t1] of seconds", pair)
        t0 = _time(pair[0], f"evidence[{i}][0]", 0.0, "a number of seconds >= 0")
        t1 = _time(pair[1], f"evidence[{i}][1]", t0, f"a number >= t0 ({t0})")
        spans.append((t0, t1))
    return tuple(spans)


@dataclass(frozen=True)
class VideoEntry:
    """One video of a dataset and the questions asked about it.

    ``video_path`` and ``subtitles`` are stored as absolute paths (relative ones are taken from the current
    directory; :func:`load_dataset` resolves them against the JSON file's folder first).

    Raises:
        DatasetError: a field is invalid, or a question ends after ``duration``.
    """

    video_id: str
    video_path: Path
    conversations: tuple[Conversation, ...]
    duration: float | None = None
    subtitles: Path | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.video_id, str) or not self.video_id.strip():
            raise FieldError("video_id", "a non-empty string", self.video_id)
        object.__setattr__(self, "video_path", _abs_path(self.video_path, "video_path"))
        if self.subtitles is not None:
            object.__setattr__(self, "subtitles", _abs_path(self.subtitles, "subtitles"))
        if self.duration is not None:
            if not _is_number(self.duration) or self.duration <= 0:
                raise FieldError("duration", "a number of seconds > 0 (or null)", self.duration)
            object.__setattr__(self, "duration", float(self.duration))
        convs = self.conversations
        if isinstance(convs, (str, bytes, dict)) or not isinstance(convs, (list, tuple)) or not convs:
            raise FieldError("conversations", "a non-empty list of questions", convs)
        for j, conv in enumerate(convs):
            if not isinstance(conv, Conversation):
                raise FieldError(f"conversations[{j}]", "a Conversation", conv)
        object.__setattr__(self, "conversations", tuple(convs))
        if self.duration is not None:
            limit = self.duration + DURATION_TOLERANCE
            for j, conv in enumerate(self.conversations):
                if conv.end_time > limit:
                    raise FieldError(
                        f"conversations[{j}].end_time",
                        f"a number <= duration ({self.duration:g})",
                        conv.end_time,
                    )
                for k, (_, t1) in enumerate(conv.evidence):
                    if t1 > limit:
                        raise FieldError(
                            f"conversations[{j}].evidence[{k}][1]",
                            f"a number <= duration ({self.duration:g})",
                            t1,
                        )

    def to_dict(self, relative_to: Path | None = None) -> dict:
        """The JSON object of this entry. Paths under ``relative_to`` are written relative to it (POSIX
        separators); others are written absolute."""
        out: dict[str, Any] = {"video_id": self.video_id, "video_path": _rel(self.video_path, relative_to)}
        if self.duration is not None:
            out["duration"] = self.duration
        if self.subtitles is not None:
            out["subtitles"] = _rel(self.subtitles, relative_to)
        out["conversations"] = [c.to_dict() for c in self.conversations]
        return out


def _abs_path(value: Any, field: str) -> Path:
    if isinstance(value, str):
        if not value.strip():
            raise FieldError(field, "a non-empty path", value)
        value = Path(value)
    if not isinstance(value, os.PathLike):
        raise FieldError(field, "a path", value)
    path = Path(value).expanduser()
    return path if path.is_absolute() else Path(os.path.abspath(path))


def _rel(path: Path, base: Path | None) -> str:
    if base is not None:
        base = Path(os.path.abspath(base))
        if path.is_relative_to(base):
            return path.relative_to(base).as_posix()
    return str(path)


# ---------------------------------------------------------------------------------------------------------
# Loading


_CONV_FIELDS = (
    "question",
    "answer",
    "choices",
    "start_time",
    "end_time",
    "question_type",
    "evidence",
    "task",
)


def _conversation_from(raw: Any, prefix: str) -> Conversation:
    """Build a Conversation from its JSON object; FieldError paths start with ``prefix``."""
    if not isinstance(raw, dict):
        raise FieldError(prefix, "an object with question, answer, end_time", raw)
    for required in ("question", "answer", "end_time"):
        if required not in raw:
            raise FieldError(f"{prefix}.{required}", "this field (it is required)", show_got=False)
    kwargs = {k: raw[k] for k in _CONV_FIELDS if k in raw}
    if kwargs.get("start_time") is None:
        kwargs["start_time"] = 0.0
    for optional in ("evidence", "task"):
        if kwargs.get(optional) is None:
            kwargs.pop(optional, None)
    try:
        return Conversation(**kwargs)
    except FieldError as e:
        raise e.under(prefix) from None


def _read_json(path: Path, what: str) -> Any:
    name = str(path)
    if not path.exists():
        raise DatasetError(f"{what} {name!r} not found")
    if not path.is_file():
        raise DatasetError(f"{what} {name!r} is not a file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{name}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except OSError as e:
        raise DatasetError(f"cannot read {what} {name!r}: {e}") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{name}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e


_JSON_KINDS = {"dict": "object", "list": "list", "str": "string", "int": "number", "float": "number"}


def json_kind(value: Any) -> str:
    """The JSON name of a parsed value's type: object, list, string, number, boolean or null."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return _JSON_KINDS.get(type(value).__name__, type(value).__name__)


def _problems_error(name: str, problems: list[str]) -> DatasetError:
    if len(problems) == 1:
        return DatasetError(problems[0], problems)
    listed = problems[:MAX_LISTED_PROBLEMS]
    more = len(problems) - len(listed)
    tail = f"\n  ... and {more} more" if more else ""
    body = "\n".join(f"  - {p}" for p in listed)
    return DatasetError(f"{name}: {len(problems)} problems:\n{body}{tail}", problems)


def load_dataset(path: str | Path, check_files: bool = True) -> list[VideoEntry]:
    """Read and validate a dataset JSON file.

    Args:
        path: the JSON file (a list of videos, see the module docstring and docs/DATASET.md).
        check_files: also require every ``video_path`` and ``subtitles`` file to exist.

    Returns:
        The entries, in file order, with paths resolved to absolute ones.

    Raises:
        DatasetError: the file is missing, is not valid JSON (the message gives the line and column), or
            has invalid entries. Every problem is reported as ``FILE: entry I (video_id 'ID'): FIELD:
            expected ..., got ...``; all problems are listed (the first 20 in the message, all of them in
            the exception's ``problems``).
    """
    file = Path(path)
    name = str(path)
    data = _read_json(file, "dataset file")
    if not isinstance(data, list):
        raise DatasetError(
            f"{name}: expected a JSON list of videos at the top level, got a JSON {json_kind(data)}"
        )
    folder = Path(os.path.abspath(file.parent))
    problems: list[str] = []
    entries: list[VideoEntry] = []
    first_index: dict[str, int] = {}
    for i, raw in enumerate(data):
        where = f"{name}: entry {i}"
        if not isinstance(raw, dict):
            expected = "an object with video_id, video_path, conversations"
            problems.append(f"{where}: expected {expected}, got {_show(raw)}")
            continue
        vid = raw.get("video_id")
        if isinstance(vid, str) and vid.strip():
            where = f"{where} (video_id {vid!r})"
        entry = _entry_from(raw, folder, check_files, where, problems)
        if entry is None:
            continue
        if entry.video_id in first_index:
            problems.append(
                f"{where}: video_id: expected a unique id, got {entry.video_id!r} "
                f"(already used by entry {first_index[entry.video_id]})"
            )
            continue
        first_index[entry.video_id] = i
        entries.append(entry)
    if problems:
        raise _problems_error(name, problems)
    return entries


def _entry_from(
    raw: dict, folder: Path, check_files: bool, where: str, problems: list[str]
) -> VideoEntry | None:
    """Build one entry, appending every problem found to ``problems``; None when there were any."""
    before = len(problems)

    def bad(field: str, expected: str, got: Any = None, show_got: bool = True) -> None:
        problems.append(f"{where}: {FieldError(field, expected, got, show_got=show_got)}")

    vid = raw.get("video_id")
    if "video_id" not in raw:
        bad("video_id", "this field (it is required)", show_got=False)
    elif not isinstance(vid, str) or not vid.strip():
        bad("video_id", "a non-empty string", vid)

    video_path = None
    if "video_path" not in raw:
        bad("video_path", "this field (it is required)", show_got=False)
    elif not isinstance(raw["video_path"], str) or not raw["video_path"].strip():
        bad("video_path", "a non-empty string (a path)", raw["video_path"])
    else:
        video_path = _resolve(raw["video_path"], folder)
        if check_files and not video_path.is_file():
            state = "is not a file" if video_path.exists() else "does not exist"
            bad("video_path", f"an existing video file ({str(video_path)!r} {state})", show_got=False)

    subtitles = None
    if raw.get("subtitles") is not None:
        if not isinstance(raw["subtitles"], str) or not raw["subtitles"].strip():
            bad("subtitles", "a path string (an SRT or WebVTT file) or null", raw["subtitles"])
        else:
            subtitles = _resolve(raw["subtitles"], folder)
            if check_files and not subtitles.is_file():
                state = "is not a file" if subtitles.exists() else "does not exist"
                bad("subtitles", f"an existing subtitle file ({str(subtitles)!r} {state})", show_got=False)

    duration = raw.get("duration")
    if duration is not None and (not _is_number(duration) or duration <= 0):
        bad("duration", "a number of seconds > 0 (or null)", duration)
        duration = None

    convs: list[Conversation] = []
    raw_convs = raw.get("conversations")
    if "conversations" not in raw:
        bad("conversations", "this field (a list of questions; it is required)", show_got=False)
    elif not isinstance(raw_convs, list) or not raw_convs:
        bad("conversations", "a non-empty list of questions", raw_convs)
    else:
        for j, rc in enumerate(raw_convs):
            try:
                convs.append(_conversation_from(rc, f"conversations[{j}]"))
            except FieldError as e:
                problems.append(f"{where}: {e}")
    if len(problems) > before:
        return None
    try:
        return VideoEntry(vid, video_path, tuple(convs), duration=duration, subtitles=subtitles)
    except FieldError as e:
        problems.append(f"{where}: {e}")
        return None


def _resolve(value: str, folder: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else Path(os.path.normpath(folder / path))


# ---------------------------------------------------------------------------------------------------------
# Writing


def dump_dataset(entries: Sequence[VideoEntry], path: str | Path) -> Path:
    """Write entries as a dataset JSON file, atomically (a temporary file in the same folder, then
    ``os.replace``), and return the file's absolute path.

    Paths under the JSON file's folder are written relative to it, so the folder can be moved as a whole;
    other paths are written absolute.

    Raises:
        DatasetError: an item is not a VideoEntry, two entries share a video_id, or the folder is missing.
    """
    file = Path(os.path.abspath(Path(path).expanduser()))
    folder = file.parent
    if not folder.is_dir():
        raise DatasetError(f"cannot write dataset {str(file)!r}: folder {str(folder)!r} does not exist")
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, VideoEntry):
            raise DatasetError(f"entry {i}: expected a VideoEntry, got {type(entry).__name__}")
        if entry.video_id in seen:
            raise DatasetError(
                f"entry {i}: video_id {entry.video_id!r} is already used by entry {seen[entry.video_id]}; "
                "video ids must be unique"
            )
        seen[entry.video_id] = i
    text = json.dumps([e.to_dict(relative_to=folder) for e in entries], ensure_ascii=False, indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{file.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, file)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return file


def _unlink_quietly(name: str) -> None:
    """Remove ``name`` if it exists (cleanup after a failed write)."""
    try:
        os.unlink(name)
    except OSError:
        pass
