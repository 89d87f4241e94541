"""RVS-Ego / RVS-Movie (VStream-QA, https://github.com/IVGSZ/Flash-VStream) -> the dataset format.

RVS-Ego and RVS-Movie are the real-time (online) subsets of VStream-QA: open questions asked at given times
of long Ego4D / MovieNet streams. Two shapes are read:

* the per-video form prepared by ReKV (https://github.com/Becomebright/ReKV, Hugging Face
  ``Becomebright/RVS``: ``ego/ego4d_oe.json``, ``movie/movienet_oe.json``), the shape ReKV's
  ``video_qa/rekv_stream_vqa.py`` reads::

    {"video_id": "000246", "video_path": "...", "duration": 840.0,
     "conversations": [{"question": "...", "answer": "...", "start_time": 120, "end_time": 180}]}

* the per-question form of VStream-QA's ``vstream-realtime/test_qa_ego4d.json`` / ``test_qa_movienet.json``
  (Flash-VStream's ``test_qa.json`` shape plus the question's times)::

    {"id": "...", "video_id": "000246", "question": "...", "answer": "...", "answer_type": "...",
     "start_time": 120, "end_time": 180}

Not confirmed from a public copy of the files: the per-question form's field names beyond Flash-VStream's
documented ``video_id``/``id``/``question``/``answer``/``answer_type``, and that its times are seconds of
the cut clip (``video_id.mp4``); this converter assumes both (times may also be ``HH:MM:SS`` strings).
ReKV streams each video up to a question's ``end_time`` before asking it, and the question is about the
span ``[start_time, end_time]``.

Videos: ``<video folder>/<file name of video_path>``, else ``<video folder>/<video_id>.mp4``.

Mapping: one entry per ``video_id``; ``start_time``/``end_time`` as given (the stream time of the
question); ``evidence`` = ``[[start_time, end_time]]`` (the span the question was written about);
``answer_type`` -> ``question_type``; ``duration`` when the record gives one; questions sorted by
``end_time``.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from videokv.bench.convert.common import (
    Builder,
    Converted,
    Record,
    check_folder,
    read_list,
    video_candidates,
)


def _candidates(root: Path, video: Record, video_id: str) -> list[Path]:
    out = []
    path = video.optional_text("video_path")
    if path:
        name = PurePosixPath(path.replace("\\", "/")).name
        out += [root / name]
    return out + video_candidates(root, video_id)


def _add(builder: Builder, q: Record, video: Record, video_id: str, root: Path) -> None:
    question = q.text("question")
    answer = q.text("answer") if not isinstance(q.raw.get("answer"), (int, float)) else str(q.raw["answer"])
    end = q.seconds("end_time")
    start = q.seconds("start_time") if q.has("start_time") else 0.0
    if start > end:
        raise q.error(f"start_time ({start:g}) is after end_time ({end:g})")
    qtype = q.get("answer_type", q.get("question_type"))
    builder.add_video(
        video_id,
        _candidates(root, video, video_id),
        record=video.label,
        duration=video.optional_number("duration") or None,
    )
    builder.add_question(
        video_id,
        record=q.label,
        question=question,
        answer=answer,
        start_time=start,
        end_time=end,
        question_type=str(qtype) if qtype is not None and str(qtype).strip() else None,
        evidence=[(start, end)],
    )


def convert_rvs(
    annotation: Path,
    video_root: Path,
    subtitles_root: Path | None = None,
    *,
    allow_missing: bool = False,
    work_dir: Path | None = None,
) -> Converted:
    """Convert RVS-Ego or RVS-Movie annotations (per-video or per-question form) to dataset entries.

    Args:
        annotation: ``ego4d_oe.json`` / ``movienet_oe.json`` (ReKV) or ``test_qa_*.json`` (VStream-QA).
        video_root: the folder of the cut clips (``<video_id>.mp4``).
        subtitles_root: unused (RVS has no subtitles).
        allow_missing: leave out videos whose file is missing instead of raising.
        work_dir: unused.

    Raises:
        DatasetError: a record cannot be read (naming the file and record), or videos are missing.
    """
    del subtitles_root, work_dir
    annotation = Path(annotation)
    root = check_folder(video_root, "video folder")
    data = read_list(annotation, "RVS annotation file", "RVS videos or questions")
    builder = Builder(annotation, allow_missing=allow_missing)
    for i, raw in enumerate(data):
        rec = Record(annotation, i, raw, id_keys=("video_id", "id"))
        video_id = rec.text_or_id("video_id")
        if "conversations" in rec.raw:
            convs = rec.raw["conversations"]
            if not isinstance(convs, list) or not convs:
                raise rec.field_error("conversations", "a non-empty list of questions", convs)
            for k, raw_q in enumerate(convs):
                q = Record(annotation, k, raw_q, where=f"{rec.label}, ", noun="question")
                _add(builder, q, rec, video_id, root)
        else:
            _add(builder, rec, rec, video_id, root)
    return builder.build(sort_by_time=True)
