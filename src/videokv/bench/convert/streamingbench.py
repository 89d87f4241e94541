"""StreamingBench (https://github.com/THUNLP-MT/StreamingBench) -> the dataset format.

Official format (``src/data/questions_real.json``, ``questions_omni.json``, ``questions_sqa.json``, their
``*_stream.json`` variants): a JSON list of entries, one video each (several entries may name the same
video)::

    {"video_path": "./videos/sample_348_real.mp4", "video_categories": "preparation_of_meals",
     "time": "[0:00:00 - 0:00:10]",
     "questions": [{"task_type": "Clips Summarize", "question": "...", "time_stamp": "00:00:31",
                    "answer": "C", "options": ["A. ...", "B. ...", "C. ...", "D. ..."],
                    "required_ability": "episodic memory"}]}

``questions_sqa.json`` nests the entries in one more list per video (sequential questions). The official
evaluation streams the video from 0 up to ``time_stamp`` and then asks the question.
``questions_proactive*.json`` records (``ground_truth_time_stamp``/``ground_truth_output``, no options) ask
the model to speak up at the right moment, which is not question answering: they are skipped (listed).

Videos: ``<video folder>/<file name of video_path>`` (the repository's ``src/data/videos``), else
``<video folder>/<video_path>``.

Mapping: one entry per video file (``video_id`` = file name without extension); ``time_stamp`` ->
``end_time`` (``start_time`` 0: the whole stream up to that moment); ``options`` without their ``"A. "``
labels -> ``choices``; the answer letter -> the text of that option; ``task_type`` -> ``question_type`` (and
``Counting`` -> ``task`` counting, any other type -> other);
questions sorted by ``end_time``. The entry ``time`` field (a span whose meaning the repository does not
document) is not mapped.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from videokv.bench.convert.common import (
    Builder,
    Converted,
    Record,
    check_folder,
    read_list,
    strip_option_labels,
    task_family,
)


def _entries(data: list) -> list[tuple[str, object]]:
    """(position, entry) for every entry, flattening the SQA file's per-video lists (positions "3.1")."""
    out: list[tuple[str, object]] = []
    for i, item in enumerate(data):
        if isinstance(item, list):
            out += [(f"{i}.{k}", sub) for k, sub in enumerate(item)]
        else:
            out.append((str(i), item))
    return out


def convert_streamingbench(
    annotation: Path,
    video_root: Path,
    subtitles_root: Path | None = None,
    *,
    allow_missing: bool = False,
    work_dir: Path | None = None,
) -> Converted:
    """Convert a StreamingBench question file to dataset entries.

    Args:
        annotation: one of the repository's ``src/data/questions_*.json`` files.
        video_root: the folder of the videos (``src/data/videos`` after the repository's preprocessing).
        subtitles_root: unused (StreamingBench has no subtitle files).
        allow_missing: leave out videos whose file is missing instead of raising.
        work_dir: unused.

    Raises:
        DatasetError: a record cannot be read (naming the file and record), or videos are missing.
    """
    del subtitles_root, work_dir
    annotation = Path(annotation)
    root = check_folder(video_root, "video folder")
    data = read_list(annotation, "StreamingBench annotation file", "StreamingBench entries")
    builder = Builder(annotation, allow_missing=allow_missing)
    for position, raw in _entries(data):
        entry = Record(annotation, position, raw, id_keys=("video_path",))
        video = entry.text("video_path")
        relative = PurePosixPath(video.replace("\\", "/"))
        video_id = PurePosixPath(relative.name).stem
        candidates = [Path(video)] if Path(video).is_absolute() else []
        candidates += [root / relative.name, root / relative]
        questions = entry.raw.get("questions")
        if not isinstance(questions, list) or not questions:
            raise entry.field_error("questions", "a non-empty list of questions", questions)
        for k, raw_q in enumerate(questions):
            q = Record(annotation, k, raw_q, where=f"{entry.label}, ", noun="question")
            question = q.text("question")
            if not q.has("options") or not q.has("answer"):
                reason = "no options or answer"
                if q.has("ground_truth_output"):
                    reason = "a proactive-output task (no options, no answer)"
                builder.skip(q.label, reason)
                continue
            options = strip_option_labels(q.strings("options"))
            answer = q.answer_text("answer", options)
            builder.add_video(video_id, candidates, record=entry.label)
            builder.add_question(
                video_id,
                record=q.label,
                question=question,
                answer=answer,
                choices=options,
                start_time=0.0,
                end_time=q.seconds("time_stamp"),
                question_type=q.optional_text("task_type"),
                task=task_family(q.optional_text("task_type"), {"counting": "counting"}),
            )
    return builder.build(sort_by_time=True)
