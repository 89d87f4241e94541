"""EgoSchema (https://github.com/egoschema/EgoSchema) -> the dataset format.

Official format: ``questions.json``, a JSON list of records::

    {"q_uid": "0074f737-11cb-497d-8d07-77c3a8127391", "google_drive_id": "...",
     "question": "...", "option 0": "...", "option 1": "...", "option 2": "...", "option 3": "...",
     "option 4": "..."}

and ``subset_answers.json``, ``{q_uid: index of the right option (0-4)}``, published for 500 of the 5031
questions (the rest are scored by the benchmark's server). The answers file is read from the annotation's
folder when it is there. Records that carry their own answer are accepted too: an ``answer`` field (an
index 0-4, as a number or a digit string, or a letter), with the options either as ``option 0``...
``option 4`` or as a list ``option`` of ``"A. ..."`` strings (the shape of the lmms-eval export, whose
video field is ``video_idx``). Questions without a known answer are skipped (listed with the reason).

Videos: ``<video folder>/<q_uid>.mp4`` (each question has its own three-minute clip).

Mapping: one entry per question (``video_id`` = ``q_uid``); the five options -> ``choices``; the answer is
the text of the right option; offline benchmark, so ``start_time`` 0 and ``end_time`` = the clip's
duration, probed from the file (the annotation gives none).
"""

from __future__ import annotations

from pathlib import Path

from videokv.bench.convert.common import (
    Builder,
    Converted,
    Record,
    check_folder,
    read_list,
    read_records,
    strip_option_labels,
    video_candidates,
)
from videokv.bench.dataset import DatasetError

#: File next to the annotation that holds the published answers.
ANSWERS_FILE = "subset_answers.json"


def _answers(annotation: Path) -> dict[str, object]:
    path = annotation.parent / ANSWERS_FILE
    if not path.is_file() or path == annotation:
        return {}
    data = read_records(path, "EgoSchema answers file")
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object {{q_uid: answer index}}, got a JSON list")
    return data


def _options(rec: Record) -> list[str]:
    if isinstance(rec.raw.get("option"), list):
        return strip_option_labels(rec.strings("option"))
    keys = []
    while f"option {len(keys)}" in rec.raw:
        keys.append(f"option {len(keys)}")
    if len(keys) < 2:
        expected = "the options 'option 0', 'option 1', ... (or a list 'option')"
        raise rec.field_error("option 0", expected, show=False)
    options = []
    for key in keys:
        value = rec.raw[key]
        if not isinstance(value, str) or not value.strip():
            raise rec.field_error(key, "a non-empty string", value)
        options.append(value)
    return options


def convert_egoschema(
    annotation: Path,
    video_root: Path,
    subtitles_root: Path | None = None,
    *,
    allow_missing: bool = False,
    work_dir: Path | None = None,
) -> Converted:
    """Convert EgoSchema's ``questions.json`` (with ``subset_answers.json`` beside it) to dataset entries.

    Args:
        annotation: ``questions.json`` (or a file of records that carry their answers).
        video_root: the folder of ``<q_uid>.mp4`` clips.
        subtitles_root: unused (EgoSchema has no subtitles).
        allow_missing: leave out questions whose clip is missing instead of raising.
        work_dir: unused.

    Raises:
        DatasetError: a record cannot be read (naming the file and record), or clips are missing.
    """
    del subtitles_root, work_dir
    annotation = Path(annotation)
    root = check_folder(video_root, "video folder")
    data = read_list(annotation, "EgoSchema annotation file", "EgoSchema questions")
    answers = _answers(annotation)
    builder = Builder(annotation, allow_missing=allow_missing)
    for i, raw in enumerate(data):
        rec = Record(annotation, i, raw, id_keys=("q_uid", "video_idx"))
        uid = rec.text_or_id("q_uid") if "q_uid" in rec.raw else rec.text_or_id("video_idx")
        question = rec.text("question")
        options = _options(rec)
        value = rec.raw.get("answer")
        if value is None or value == "":
            value = answers.get(uid)
        if value is None or value == "":
            builder.skip(rec.label, f"no answer (not in the record nor in {ANSWERS_FILE})")
            continue
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value.strip())
        answer = rec.answer_text("answer", options, value=value)
        if uid in builder:
            raise rec.error(f"q_uid {uid!r} appears twice (each EgoSchema question has its own clip)")
        builder.add_video(uid, video_candidates(root, uid), record=rec.label)
        builder.add_question(uid, record=rec.label, question=question, answer=answer, choices=options)
    return builder.build()
