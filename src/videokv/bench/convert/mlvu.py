"""MLVU (https://github.com/JUNJIE99/MLVU) -> the dataset format.

Official format (dev set, ``MLVU/json/<n>_<task>.json``, e.g. ``1_plotQA.json``): a JSON list of records::

    {"video": "movie101_66.mp4", "duration": 246, "question": "...",
     "candidates": ["Yellow", "Red", "Green", "Blue"], "answer": "Yellow", "question_type": "plotQA"}

The generation tasks (``8_sub_scene.json``, ``9_summary.json``) have no ``candidates``: they become open
questions. The test set's records (``test_question.json``) add ``question_id``; records without an
``answer`` are skipped (its ground truth is not in every release).

Videos: ``MLVU/video/<json file stem>/<video>`` (e.g. ``video/1_plotQA/movie101_66.mp4``, the layout of the
Hugging Face release that ReKV uses), else ``<video folder>/<video>``. ``annotation`` may be one JSON file
or the folder of them (every ``*.json`` in it, sorted by name).

Mapping: one entry per video file (``video_id`` = the file name without extension; the task folder is put
in front when two tasks have different files of the same name); ``candidates`` -> ``choices``; the answer is
kept as the text of the right candidate (a letter answer is resolved to it); ``question_type`` as given;
``question_type`` -> ``task`` where it names a family (``count`` -> counting, ``order`` -> ordering,
``needle`` -> retrieval; any other type -> other); ``duration`` from the record; offline benchmark, so
every question has ``start_time`` 0 and ``end_time`` = the duration (probed from the file when the record
has none).
"""

from __future__ import annotations

from pathlib import Path

from videokv.bench.convert.common import Builder, Converted, Record, check_folder, read_list, task_family
from videokv.bench.dataset import DatasetError

#: MLVU's task names (``question_type``) that are task families of videokv's benchmarks.
FAMILIES = {"count": "counting", "order": "ordering", "needle": "retrieval", "needleqa": "retrieval"}


def _annotation_files(annotation: Path) -> list[Path]:
    if annotation.is_dir():
        files = sorted(p for p in annotation.iterdir() if p.suffix == ".json" and p.is_file())
        if not files:
            raise DatasetError(f"MLVU annotation folder {str(annotation)!r} has no .json files")
        return files
    return [annotation]


def convert_mlvu(
    annotation: Path,
    video_root: Path,
    subtitles_root: Path | None = None,
    *,
    allow_missing: bool = False,
    work_dir: Path | None = None,
) -> Converted:
    """Convert MLVU annotations (one task file, or the folder of task files) to dataset entries.

    Args:
        annotation: an MLVU JSON file, or the folder holding them (``MLVU/json``).
        video_root: the video folder (``MLVU/video``; videos in per-task subfolders or directly in it).
        subtitles_root: unused (MLVU has no subtitles); accepted for a uniform signature.
        allow_missing: leave out videos whose file is missing instead of raising.
        work_dir: unused.

    Raises:
        DatasetError: a record cannot be read (the message names the file and record), or videos are
            missing (without ``allow_missing``).
    """
    del subtitles_root, work_dir
    annotation = Path(annotation)
    root = check_folder(video_root, "video folder")
    files = _annotation_files(annotation)
    builder = Builder(annotation, allow_missing=allow_missing)
    found: dict[str, Path | None] = {}
    for file in files:
        data = read_list(file, "MLVU annotation file", "MLVU records")
        for i, raw in enumerate(data):
            rec = Record(file, i, raw, id_keys=("question_id", "video"))
            label = f"{file.name}: {rec.label}" if annotation.is_dir() else rec.label
            video = rec.text("video")
            name = Path(video).name
            candidates = [root / file.stem / video, root / video]
            if rec.optional_text("question_type"):
                candidates.insert(1, root / rec.raw["question_type"] / video)
            path = next((p for p in candidates if p.is_file()), None)
            video_id = Path(name).stem
            if video_id in found and found[video_id] != path:
                video_id = f"{file.stem}/{video_id}"
            found.setdefault(video_id, path)
            question = rec.text("question")
            if not rec.has("answer"):
                builder.skip(label, "no answer in the annotation")
                continue
            if rec.has("candidates"):
                choices = rec.strings("candidates")
                answer = rec.answer_text("answer", choices)
            else:
                choices = None
                answer = rec.text("answer")
            builder.add_video(
                video_id,
                candidates,
                record=label,
                duration=rec.optional_number("duration") or None,
            )
            builder.add_question(
                video_id,
                record=label,
                question=question,
                answer=answer,
                choices=choices,
                question_type=rec.optional_text("question_type"),
                task=task_family(rec.optional_text("question_type"), FAMILIES),
            )
    return builder.build()
