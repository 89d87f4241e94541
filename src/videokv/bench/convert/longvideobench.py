"""LongVideoBench (https://github.com/longvideobench/LongVideoBench) -> the dataset format.

Official format: ``lvb_val.json`` (``lvb_test_wo_gt.json`` has no answers), a JSON list of questions::

    {"video_id": "soNQYQXrx_A", "question": "...", "question_wo_referring_query": "...",
     "candidates": ["...", "...", "...", "...", "..."], "correct_choice": 4, "position": [4030, 7571],
     "topic_category": "...", "question_category": "TAA", "level": "L2-Relation", "id": "soNQYQXrx_A_1",
     "video_path": "soNQYQXrx_A.mp4", "subtitle_path": "soNQYQXrx_A_en.json", "duration_group": 600,
     "starting_timestamp_for_subtitles": 0, "duration": 563.37, "view_count": 93803}

The Hugging Face table has ``option0`` ... ``option4`` (unused ones ``"N/A"``) instead of ``candidates``;
both are read. Questions without ``correct_choice`` are skipped (the test set's answers are not public).

Videos: ``<video folder>/<video_path>`` (the release's ``videos/``). Subtitles: ``<subtitles folder>/
<subtitle_path>`` (the release's ``subtitles/``): JSON lists of ``{"start": "HH:MM:SS.fff", "end": ...,
"line": text}`` or ``{"timestamp": [start, end], "text": ...}`` (an end of null means the end of the video),
in the original video's time: ``starting_timestamp_for_subtitles`` is subtracted, as the official loader
does. They are written as ``<work_dir>/<video_id>.srt``, since the dataset format takes SRT/WebVTT files
(an ``.srt``/``.vtt`` ``subtitle_path`` is used as it is).

Mapping: one entry per ``video_id``; ``candidates`` -> ``choices``; ``correct_choice`` (0-based) -> the
answer, as the text of that candidate; ``question_category`` -> ``question_type``; ``duration`` from the
record; offline benchmark, so ``start_time`` 0 and ``end_time`` = the duration. ``position`` (where the
referred moment is) is not mapped to ``evidence``: its unit is not documented.
"""

from __future__ import annotations

import os
from pathlib import Path

from videokv.bench.convert.common import (
    Builder,
    Converted,
    Record,
    check_folder,
    parse_clock,
    read_list,
    read_records,
)
from videokv.bench.dataset import DatasetError
from videokv.errors import InputError
from videokv.video.subtitles import TextEvent, write_srt

_UNUSED_OPTION = "N/A"


def _choices(rec: Record) -> list[str]:
    if "candidates" in rec.raw:
        return rec.strings("candidates")
    options = []
    for k in range(10):
        value = rec.raw.get(f"option{k}")
        if value is None or value == _UNUSED_OPTION:
            break
        if not isinstance(value, str) or not value.strip():
            raise rec.field_error(f"option{k}", "a non-empty string", value)
        options.append(value)
    if len(options) < 2:
        raise rec.field_error("candidates", "a list of options (or option0, option1, ...)", show=False)
    return options


def subtitles_to_srt(source: Path, target: Path, *, offset: float, duration: float | None) -> Path:
    """Write LongVideoBench's JSON subtitles ``source`` as an SRT file ``target`` (times minus ``offset``;
    cues that end before 0 are dropped; an open end becomes ``duration``).

    Raises:
        DatasetError: the file is not a list of LongVideoBench subtitle cues (naming the file and cue).
    """
    data = read_records(source, "LongVideoBench subtitle file")
    if not isinstance(data, list):
        raise DatasetError(f"{source}: expected a JSON list of subtitle cues, got a JSON object")
    events = []
    for i, raw in enumerate(data):
        cue = Record(source, i, raw, noun="cue")
        if "timestamp" in cue.raw:
            span = cue.raw["timestamp"]
            if not isinstance(span, list) or len(span) != 2:
                raise cue.field_error("timestamp", "a pair [start, end] of seconds", span)
            try:
                start = parse_clock(span[0])
                end = parse_clock(span[1]) if span[1] is not None else duration
            except ValueError:
                raise cue.field_error("timestamp", "a pair [start, end] of seconds", span) from None
            text = cue.get("text", "")
        else:
            start = cue.seconds("start")
            end = cue.seconds("end") if cue.has("end") else duration
            text = cue.get("line", "")
        if end is None:
            end = start
        if not isinstance(text, str):
            raise cue.field_error("text", "a string", text)
        start, end = start - offset, end - offset
        if end < 0 or not text.strip():
            continue
        try:
            events.append(TextEvent(max(0.0, start), max(0.0, end, start), text))
        except InputError as e:
            raise cue.error(str(e)) from None
    events.sort(key=lambda e: (e.start, e.end))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    write_srt(events, tmp)
    os.replace(tmp, target)
    return target


def convert_longvideobench(
    annotation: Path,
    video_root: Path,
    subtitles_root: Path | None = None,
    *,
    allow_missing: bool = False,
    work_dir: Path | None = None,
) -> Converted:
    """Convert LongVideoBench's ``lvb_val.json`` to dataset entries.

    Args:
        annotation: ``lvb_val.json`` (or a ``.jsonl``/``.parquet`` export of the same rows).
        video_root: the release's ``videos/`` folder.
        subtitles_root: the release's ``subtitles/`` folder, or None for no subtitles.
        allow_missing: leave out videos whose file is missing (and leave out subtitles whose file is
            missing) instead of raising.
        work_dir: where the JSON subtitles are written as ``<video_id>.srt``; required with
            ``subtitles_root`` unless the subtitle files are SRT/WebVTT already.

    Raises:
        DatasetError: a record or subtitle file cannot be read (naming the file and record), or videos
            are missing.
    """
    annotation = Path(annotation)
    root = check_folder(video_root, "video folder")
    subs = check_folder(subtitles_root, "subtitles folder")
    data = read_list(annotation, "LongVideoBench annotation file", "LongVideoBench questions")
    builder = Builder(annotation, allow_missing=allow_missing)
    converted_subs: dict[str, Path | None] = {}
    for i, raw in enumerate(data):
        rec = Record(annotation, i, raw, id_keys=("id", "video_id"))
        video_id = rec.text_or_id("video_id")
        question = rec.text("question")
        choices = _choices(rec)
        if not rec.has("correct_choice"):
            builder.skip(rec.label, "no correct_choice (the test set's answers are not public)")
            continue
        answer = rec.answer_text("correct_choice", choices)
        duration = rec.optional_number("duration") or None
        video_name = rec.text("video_path") if rec.has("video_path") else f"{video_id}.mp4"
        candidates = [root / video_name, root / Path(video_name).name]
        if video_id not in converted_subs:
            converted_subs[video_id] = _subtitles(rec, video_id, subs, work_dir, duration, allow_missing)
        builder.add_video(
            video_id, candidates, record=rec.label, duration=duration, subtitles=converted_subs[video_id]
        )
        builder.add_question(
            video_id,
            record=rec.label,
            question=question,
            answer=answer,
            choices=choices,
            question_type=rec.optional_text("question_category"),
        )
    return builder.build()


def _subtitles(
    rec: Record,
    video_id: str,
    subs: Path | None,
    work_dir: Path | None,
    duration: float | None,
    allow_missing: bool,
) -> Path | None:
    if subs is None or not rec.has("subtitle_path"):
        return None
    source = subs / rec.text("subtitle_path")
    if not source.is_file():
        if allow_missing:
            return None
        raise rec.error(f"subtitle file {str(source)!r} not found (pass allow_missing=True to go without)")
    if source.suffix.lower() in (".srt", ".vtt"):
        return source
    if work_dir is None:
        raise rec.error(
            "LongVideoBench subtitles are JSON and must be written as SRT files: pass work_dir (the CLI's "
            "--work-dir) for them"
        )
    offset = rec.optional_number("starting_timestamp_for_subtitles", minimum=None) or 0.0
    safe = video_id.replace("/", "_").replace(os.sep, "_")
    return subtitles_to_srt(source, Path(work_dir) / f"{safe}.srt", offset=offset, duration=duration)
