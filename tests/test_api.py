"""The public API on real files: ingest from video + subtitles, and bad input that must lose nothing."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import get_tiny, random_frames
from videokv import VideoQA
from videokv.errors import ConfigError, InputError, SubtitleError, VideoError
from videokv.video.decode import find_sample_clip, write_video
from videokv.video.subtitles import TextEvent, write_srt


@pytest.fixture
def session():
    return VideoQA.from_model(*get_tiny("llava_onevision")).session()


def state(s) -> tuple:
    e = s.engine
    return (e.cache.lengths(), e.cursor, [b for b in e.blocks], e.clock, e.frames_ingested)


def test_add_video_interleaves_subtitles_by_time(session, tmp_path):
    srt = tmp_path / "s.srt"
    write_srt([TextEvent(2.5, 3.0, "a red umbrella"), TextEvent(0.0, 1.0, "hello")], srt)
    added = session.add_video(find_sample_clip(), fps=0.5, subtitles=srt)
    kinds = [(b.kind, round(b.t0, 1)) for b in session.engine.blocks]
    assert added == 7
    assert kinds == [
        ("text", 0.0),
        ("frame", 0.0),
        ("frame", 2.0),
        ("text", 2.5),
        ("frame", 4.0),
        ("frame", 6.0),
        ("frame", 8.0),
    ]
    assert session.clock == pytest.approx(10.0)
    # a second video continues the stream clock
    session.add_video(find_sample_clip(), fps=0.5, end=4.0)
    assert [round(b.t0, 1) for b in session.engine.blocks[-2:]] == [10.0, 12.0]


def test_text_events(session):
    session.add_text("first line", t=1.0)
    session.add_text([(2.0, "second"), (3.0, 4.0, "third"), TextEvent(5.0, 6.0, "fourth")])
    assert [b.text.strip() for b in session.engine.blocks] == [
        "[1.0s] first line",
        "[2.0s] second",
        "[3.0s] third",
        "[5.0s] fourth",
    ]
    with pytest.raises(InputError):
        session.add_text([(1.0, "  ")])


@pytest.fixture
def broken_videos(tmp_path):
    """A missing path, a text file named .mp4, and an mp4 that breaks off in the middle of decoding."""
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("not a video\n" * 50)
    good = tmp_path / "good.mp4"
    write_video(good, random_frames(50, 64, 96, seed=1), fps=5.0)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: int(len(data) * 0.6)])
    return {"missing": tmp_path / "missing.mp4", "not_video": not_video, "truncated": truncated}


@pytest.mark.parametrize("which", ["missing", "not_video", "truncated"])
def test_bad_video_leaves_memory_unchanged(session, broken_videos, which):
    session.add_frames(random_frames(2))
    session.add_text("kept", t=2.0)
    before = state(session)
    with pytest.raises(VideoError) as info:
        session.add_video(broken_videos[which], fps=2.0, chunk_frames=2)
    assert str(broken_videos[which]) in str(info.value)
    assert state(session) == before
    assert session.ask("what is kept?", max_new_tokens=2).stats["blocks"] == 3


def test_bad_frames_and_subtitles_leave_memory_unchanged(session, tmp_path):
    session.add_frames(random_frames(2))
    before = state(session)
    with pytest.raises(InputError, match="shape"):
        session.add_frames(np.zeros((3, 56, 56, 4), dtype=np.uint8))
    with pytest.raises(InputError):
        session.add_frames([random_frames(1)[0], random_frames(1, 28, 28)[0]])
    bad_srt = tmp_path / "bad.srt"
    bad_srt.write_text("1\n00:00:01,000 --> nonsense\nhello\n")
    with pytest.raises(SubtitleError, match="line 2"):
        session.add_video(find_sample_clip(), subtitles=bad_srt)
    with pytest.raises(ConfigError, match="unknown memory preset"):
        VideoQA.from_model(*get_tiny("qwen2_vl"), memory="nope")
    assert state(session) == before
