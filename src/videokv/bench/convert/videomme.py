"""Video-MME (https://github.com/BradyFU/Video-MME) -> the dataset format, with subtitles.

Official formats:

* the released table (Hugging Face ``lmms-lab/Video-MME``, ``videomme/test-*.parquet``; here as ``.parquet``
  when pyarrow is installed, or exported to ``.json``/``.jsonl``): one row per question::

    {"video_id": "001", "duration": "short", "domain": "Knowledge", "sub_category": "Humanity & History",
     "url": "https://www.youtube.com/watch?v=fFjv93ACGo8", "videoID": "fFjv93ACGo8", "question_id": "001-1",
     "task_type": "Counting Problem", "question": "...",
     "options": ["A. Apples.", "B. Candles.", "C. Berries.", "D. The three kinds are of the same number."],
     "answer": "C"}

* the grouped JSON of the official evaluation template (``evaluation/output_test_template.json``): one
  object per video with ``video_id``, ``duration``, ``domain``, ``sub_category`` (and ``videoID`` when known)
  and a list ``questions`` of ``{question_id, task_type, question, options, answer}``.

Videos: ``<video folder>/<videoID>.mp4`` (the release's ``data/`` folder; ``.MP4``/``.mkv`` too); when a
record has no ``videoID`` (the template), ``<video_id>.mp4``. Subtitles: ``<subtitles folder>/<videoID>.srt``
(the release's ``subtitle/`` folder; 744 of the 900 videos have one; a video without one gets none).

Mapping: one entry per video (``video_id`` = ``videoID``, the file's name, else ``video_id``); ``options``
without their ``"A. "`` labels -> ``choices``; the answer letter -> the text of that option; ``task_type`` ->
``question_type`` (and ``Counting Problem`` -> ``task`` counting, any other type -> other); ``subtitles``
as above; offline benchmark, so ``start_time`` 0 and ``end_time`` = the video's duration, probed from the
file (the ``duration`` field is a category: short, medium or long).
"""

from __future__ import annotations

from pathlib import Path

from videokv.bench.convert.common import (
    Builder,
    Converted,
    Record,
    check_folder,
    read_list,
    strip_option_labels,
    task_family,
    video_candidates,
)

_ID_KEYS = ("question_id", "videoID", "video_id")


def _subtitle_file(folder: Path | None, name: str) -> Path | None:
    if folder is None:
        return None
    for suffix in (".srt", ".vtt"):
        path = folder / f"{name}{suffix}"
        if path.is_file():
            return path
    return None


def _add_question(builder: Builder, rec: Record, video: Record, root: Path, subs: Path | None) -> None:
    file_id = video.text_or_id("videoID") if video.has("videoID") else video.text_or_id("video_id")
    question = rec.text("question")
    options = strip_option_labels(rec.strings("options"))
    if not rec.has("answer") or rec.raw["answer"] == "":
        builder.skip(rec.label, "no answer in the annotation")
        return
    answer = rec.answer_text("answer", options)
    builder.add_video(
        file_id, video_candidates(root, file_id), record=video.label, subtitles=_subtitle_file(subs, file_id)
    )
    builder.add_question(
        file_id,
        record=rec.label,
        question=question,
        answer=answer,
        choices=options,
        question_type=rec.optional_text("task_type"),
        task=task_family(rec.optional_text("task_type"), {"counting problem": "counting"}),
    )


def convert_videomme(
    annotation: Path,
    video_root: Path,
    subtitles_root: Path | None = None,
    *,
    allow_missing: bool = False,
    work_dir: Path | None = None,
) -> Converted:
    """Convert Video-MME annotations (question rows, or the grouped template) to dataset entries.

    Args:
        annotation: ``.parquet`` (needs pyarrow), ``.jsonl`` or ``.json`` rows, or the grouped JSON.
        video_root: the folder of ``<videoID>.mp4`` files (the release's ``data/``).
        subtitles_root: the folder of ``<videoID>.srt`` files (the release's ``subtitle/``), or None for
            no subtitles.
        allow_missing: leave out videos whose file is missing instead of raising.
        work_dir: unused.

    Raises:
        DatasetError: a record cannot be read (naming the file and record), or videos are missing.
    """
    del work_dir
    annotation = Path(annotation)
    root = check_folder(video_root, "video folder")
    subs = check_folder(subtitles_root, "subtitles folder")
    data = read_list(annotation, "Video-MME annotation file", "Video-MME rows or videos")
    builder = Builder(annotation, allow_missing=allow_missing)
    for i, raw in enumerate(data):
        rec = Record(annotation, i, raw, id_keys=_ID_KEYS)
        if "questions" in rec.raw:
            questions = rec.raw["questions"]
            if not isinstance(questions, list) or not questions:
                raise rec.field_error("questions", "a non-empty list of questions", questions)
            for k, q in enumerate(questions):
                where = f"{rec.label}, "
                sub = Record(annotation, k, q, id_keys=("question_id",), where=where, noun="question")
                _add_question(builder, sub, rec, root, subs)
        else:
            _add_question(builder, rec, rec, root, subs)
    return builder.build()
