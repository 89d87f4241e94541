"""Video input: decoding and sampling video files, subtitles and other timed text, frame validation."""

from __future__ import annotations

from videokv.video.decode import (
    VideoInfo,
    find_sample_clip,
    iter_frames,
    probe,
    sample_video,
    write_video,
)
from videokv.video.frames import validate_frames
from videokv.video.subtitles import (
    TextEvent,
    events_from_pairs,
    format_srt,
    load_subtitles,
    parse_srt,
    parse_vtt,
    write_srt,
)

__all__ = [
    "TextEvent",
    "VideoInfo",
    "events_from_pairs",
    "find_sample_clip",
    "format_srt",
    "iter_frames",
    "load_subtitles",
    "parse_srt",
    "parse_vtt",
    "probe",
    "sample_video",
    "validate_frames",
    "write_srt",
    "write_video",
]
