"""Needle streams: real clips re-encoded, distractor subtitles with planted facts, questions asked later."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from videokv.bench.dataset import load_dataset
from videokv.bench.needles import COLOURS, NAMES, PLACES, distractor, make_needles, subtitle_track
from videokv.errors import InputError
from videokv.video.decode import probe
from videokv.video.subtitles import load_subtitles


@pytest.fixture(scope="module")
def needles(tmp_path_factory):
    out = tmp_path_factory.mktemp("needles")
    return out, make_needles(out, minutes=[0.5, 1], questions=4, seed=3)


def test_streams_are_real_videos_of_the_asked_length(needles):
    _, path = needles
    entries = load_dataset(path)  # validates every field and that the files exist
    assert [e.video_id for e in entries] == ["needles-0.5min", "needles-1min"]
    for e, minutes in zip(entries, [0.5, 1]):
        info = probe(e.video_path)
        assert abs(info.duration - minutes * 60) <= 1.0
        assert e.duration == minutes * 60
        assert len(e.conversations) == 4


def test_each_question_has_its_fact_in_the_subtitles_before_it_is_asked(needles):
    _, path = needles
    for e in load_dataset(path):
        events = load_subtitles(e.subtitles)
        times = [c.end_time for c in e.conversations]
        assert times == sorted(times) and times[-1] == e.duration  # the last question at the very end
        for c in e.conversations:
            ((t0, t1),) = c.evidence
            line = next(ev for ev in events if abs(ev.start - t0) < 1e-6)
            assert abs(line.end - t1) < 1e-6
            assert re.search(rf"\b{re.escape(c.answer)}\b", line.text), (c.answer, line.text)
            assert c.end_time > t1  # asked later than the fact
        mc = [c for c in e.conversations if c.choices]
        assert len(mc) == 2  # every other question is multiple choice
        for c in mc:
            assert len(set(c.choices)) == 4 and c.choices[c.answer_index] == c.answer


def test_same_seed_same_streams_other_seed_other_facts(needles, tmp_path):
    out, path = needles
    again = make_needles(tmp_path / "a", minutes=[0.5, 1], questions=4, seed=3)
    other = make_needles(tmp_path / "b", minutes=[0.5, 1], questions=4, seed=4)
    assert json.loads(again.read_text()) == json.loads(path.read_text())
    assert json.loads(other.read_text()) != json.loads(path.read_text())
    srt = "subtitles/needles-1min.srt"
    assert (tmp_path / "a" / srt).read_text() == (out / srt).read_text()


def test_distractors_hold_none_of_the_answers():
    rng = random.Random(0)
    words = {w.lower() for w in COLOURS + NAMES} | {p.removeprefix("the ") for p in PLACES}
    for _ in range(2000):
        line = distractor(rng).lower()
        assert not any(re.search(rf"\b{re.escape(w)}\b", line) for w in words), line
        assert not re.search(r"\d", line)


def test_too_many_questions_for_a_short_stream_is_a_clear_error():
    with pytest.raises(InputError, match="fewer questions"):
        subtitle_track(20.0, 12, random.Random(0))
    with pytest.raises(InputError, match="positive"):
        make_needles("/tmp/unused-needles", minutes=[0])


@pytest.mark.parametrize("minutes", ["abc", "1,-5", ","])
def test_cli_rejects_bad_minutes_with_a_usage_error(minutes, tmp_path, capsys):
    from videokv.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["bench", "make-needles", "--out", str(tmp_path), "--minutes", minutes])
    assert exc.value.code == 2 and "minutes" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written


def test_speech_needles_speak_the_facts_instead_of_subtitling_them(tmp_path):
    from videokv.bench.speech import espeak_available
    from videokv.video.transcribe import transcribe

    if espeak_available() is None:
        pytest.skip("espeak-ng is not installed (apt-get install -y espeak-ng; .ci/run installs it)")
    path = make_needles(tmp_path, minutes=[1], questions=2, seed=3, speech=True)
    (entry,) = load_dataset(path)
    assert entry.subtitles is None and not (tmp_path / "subtitles").exists()
    spoken = load_subtitles(tmp_path / "narration" / "needles-1min.srt")  # what was said, for reading
    heard = transcribe(entry.video_path, language="en")
    for conv in entry.conversations:
        (span,) = conv.evidence
        line = next(e for e in spoken if (e.start, e.end) == span)
        assert conv.end_time >= span[1]  # asked after it was said
        answer = conv.answer.lower()
        assert answer in line.text.lower()
        near = " ".join(e.text.lower() for e in heard if e.end >= span[0] - 1 and e.start <= span[1] + 1)
        words = re.findall(r"[a-z0-9]+", line.text.lower())
        heard_words = set(re.findall(r"[a-z0-9]+", near))
        assert sum(w in heard_words for w in words) >= 0.6 * len(words), (line.text, near)  # said there


def test_default_streams_are_byte_identical_to_the_generator_before_task_families(needles):
    """`--tasks retrieval` (the default) writes exactly what the generator wrote before the task families
    existed: tests/bench/samples/needles/ holds that generator's output for these arguments."""
    out, path = needles
    golden = Path(__file__).parent / "samples" / "needles"
    assert path.read_bytes() == (golden / "needles.json").read_bytes()
    for name in ("needles-0.5min.srt", "needles-1min.srt"):
        assert (out / "subtitles" / name).read_bytes() == (golden / "subtitles" / name).read_bytes()
    explicit = make_needles(out / "again", minutes=[0.5, 1], questions=4, seed=3, tasks=["retrieval"])
    assert explicit.read_bytes() == path.read_bytes()
