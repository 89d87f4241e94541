"""VNBench (https://github.com/joez17/VideoNIAH) -> the dataset format.

Official format: the annotation of the Hugging Face release (``Joez1717/VNBench``, e.g.
``VNBench-main-4try.json``), as read by the repository's ``llava_examples/model_video_niah.py``: a JSON
list (or JSON Lines) of questions::

    {"video": "VNBench/v_PkRvgIFREJU_ord_insert2.mp4", "question": "What is the order of ...?",
     "options": ["train, cow, sheep, tv monitor", "...", "...", "..."], "gt": "tv monitor, cow, train, sheep",
     "type": "ord_insert2", "try": 0}

``gt`` is the text of the right option (the evaluation script also accepts its index 0-3 or letter). Each
needle video is asked four times (``try`` 0-3) with the options shuffled; VNBench counts a video's question
right only when all four are. The annotation records no needle times, so no ``evidence`` is written.

Videos: ``<video folder>/<video>`` (the path as given), else ``<video folder>/<file name>``.

Mapping: one entry per video file (``video_id`` = file name without extension) with one question per try,
in file order; ``options`` -> ``choices``; ``gt`` -> the answer, as the option's text; ``type`` ->
``question_type``, and its prefix -> ``task`` (``ret`` -> retrieval, ``ord`` -> ordering, ``cnt`` ->
counting); offline benchmark, so ``start_time`` 0 and ``end_time`` = the video's duration, probed
from the file.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from videokv.bench.convert.common import Builder, Converted, Record, check_folder, read_list, task_family

#: VNBench's task prefixes (``type`` before the first ``_``: ``ord_insert2`` -> ``ord``) and their families.
FAMILIES = {"ret": "retrieval", "ord": "ordering", "cnt": "counting"}


def convert_vnbench(
    annotation: Path,
    video_root: Path,
    subtitles_root: Path | None = None,
    *,
    allow_missing: bool = False,
    work_dir: Path | None = None,
) -> Converted:
    """Convert a VNBench annotation to dataset entries.

    Args:
        annotation: the VNBench JSON (or JSON Lines) file.
        video_root: the folder the ``video`` paths are relative to (or that holds the files directly).
        subtitles_root: unused (VNBench has no subtitles).
        allow_missing: leave out videos whose file is missing instead of raising.
        work_dir: unused.

    Raises:
        DatasetError: a record cannot be read (naming the file and record), or videos are missing.
    """
    del subtitles_root, work_dir
    annotation = Path(annotation)
    root = check_folder(video_root, "video folder")
    data = read_list(annotation, "VNBench annotation file", "VNBench questions")
    builder = Builder(annotation, allow_missing=allow_missing)
    for i, raw in enumerate(data):
        rec = Record(annotation, i, raw, id_keys=("question_id", "video"))
        video = rec.text("video")
        relative = PurePosixPath(video.replace("\\", "/"))
        name = relative.name
        candidates = [Path(video)] if Path(video).is_absolute() else []
        candidates += [root / relative, root / name]
        video_id = PurePosixPath(name).stem
        question = rec.text("question")
        options = rec.strings("options")
        answer = rec.answer_text("gt", options)
        builder.add_video(video_id, candidates, record=rec.label)
        builder.add_question(
            video_id,
            record=rec.label,
            question=question,
            answer=answer,
            choices=options,
            question_type=rec.optional_text("type"),
            task=task_family(rec.optional_text("type"), FAMILIES, prefix=True),
        )
    return builder.build()
