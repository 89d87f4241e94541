"""Converters from the official annotation formats, on hand-written samples (tests/bench/samples/) and real
video files written with PyAV."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from videokv.bench.convert import CONVERTERS, Converted, convert
from videokv.bench.convert.cli import add_convert_parser, run_convert
from videokv.bench.convert.common import parse_clock, strip_option_labels
from videokv.bench.dataset import DatasetError, dump_dataset, load_dataset
from videokv.video.decode import probe, write_video
from videokv.video.subtitles import load_subtitles

SAMPLES = Path(__file__).parent / "samples"


@pytest.fixture(scope="session")
def clip(tmp_path_factory) -> Path:
    """One tiny real video (3 s), written once and copied wherever a test needs a video file."""
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    frames = np.random.default_rng(0).integers(0, 256, (6, 32, 48, 3), dtype=np.uint8)
    write_video(path, frames, fps=2)
    return path


@pytest.fixture
def place(clip):
    """place(root, *names): copy the clip to root/name for each name; returns the paths."""

    def _place(root: Path, *names: str) -> list[Path]:
        out = []
        for name in names:
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(clip, target)
            out.append(target)
        return out

    return _place


def by_id(entries) -> dict:
    return {e.video_id: e for e in entries}


def roundtrip(entries, folder: Path) -> list:
    """dump -> load (checking files): the entries must come back unchanged."""
    path = dump_dataset(entries, folder / "dataset.json")
    loaded = load_dataset(path)
    assert loaded == list(entries)
    return loaded


def test_registry_names():
    assert set(CONVERTERS) == {
        "mlvu",
        "egoschema",
        "videomme",
        "longvideobench",
        "vnbench",
        "rvs",
        "streamingbench",
    }
    with pytest.raises(DatasetError, match="unknown benchmark 'nope'.*mlvu"):
        convert("nope", SAMPLES / "mlvu/json", SAMPLES)


# --- MLVU -------------------------------------------------------------------------------------------------


def test_mlvu_folder_of_task_files(tmp_path, place):
    videos = tmp_path / "video"
    place(videos, "1_plotQA/movie101_66.mp4", "1_plotQA/xiaoliyu_6.mp4", "9_summary/217.mp4")
    out = convert("mlvu", SAMPLES / "mlvu/json", videos)
    assert isinstance(out, Converted) and out.missing == [] and out.skipped == []
    assert [e.video_id for e in out] == ["movie101_66", "xiaoliyu_6", "217"]
    movie = out[0]
    assert movie.video_path == videos / "1_plotQA/movie101_66.mp4"
    assert movie.duration == 246.0
    first, second = movie.conversations
    assert first.question == "What color is the main male character in the video?"
    assert first.choices == ("Yellow", "Red", "Green", "Blue")
    assert (first.answer, first.answer_index) == ("Yellow", 0)
    assert (second.answer, second.answer_index) == ("A red suitcase", 1)
    assert (first.start_time, first.end_time) == (0.0, 246.0)
    assert first.question_type == "plotQA"
    summary = out[2].conversations[0]
    assert summary.choices is None and summary.answer_index is None
    assert summary.answer.startswith("Waves lap against the rocks")
    # No duration in the record: the end time is the real file's length.
    assert out[2].duration == pytest.approx(probe(videos / "9_summary/217.mp4").duration)
    assert summary.end_time == out[2].duration
    roundtrip(out, tmp_path)


def test_mlvu_single_file_and_flat_video_folder(tmp_path, place):
    place(tmp_path, "movie101_66.mp4", "xiaoliyu_6.mp4")
    out = convert("mlvu", SAMPLES / "mlvu/json/1_plotQA.json", tmp_path)
    assert [len(e.conversations) for e in out] == [2, 1]
    assert out[1].conversations[0].answer_index == 1


def test_missing_videos_are_listed_or_left_out(tmp_path, place):
    place(tmp_path, "1_plotQA/movie101_66.mp4")
    with pytest.raises(DatasetError) as info:
        convert("mlvu", SAMPLES / "mlvu/json", tmp_path)
    message = str(info.value)
    assert "2 video file(s) not found" in message
    assert "xiaoliyu_6" in message and "217" in message and "allow_missing" in message
    assert info.value.missing == ["xiaoliyu_6", "217"]
    out = convert("mlvu", SAMPLES / "mlvu/json", tmp_path, allow_missing=True)
    assert [e.video_id for e in out] == ["movie101_66"]
    assert out.missing == ["xiaoliyu_6", "217"]


# --- EgoSchema --------------------------------------------------------------------------------------------


def test_egoschema_questions_with_subset_answers(tmp_path, place):
    uids = [
        "0074f737-11cb-497d-8d07-77c3a8127391",
        "00b9a0de-c59e-49cb-a127-6081e2fb8c8e",
        "00f93e1e-cf4e-4835-88b4-4ad68216e86f",
    ]
    place(tmp_path, *(f"{u}.mp4" for u in uids))
    out = convert("egoschema", SAMPLES / "egoschema/questions.json", tmp_path)
    assert [e.video_id for e in out] == [uids[0], uids[2]]
    assert [s.record for s in out.skipped] == [f"record 1 (q_uid {uids[1]!r})"]
    assert "subset_answers.json" in out.skipped[0].reason
    conv = out[0].conversations[0]
    assert len(conv.choices) == 5 and conv.choices[0] == "C is cooking a meal."
    assert conv.answer == "C is washing dishes and putting them away." and conv.answer_index == 3
    assert out[1].conversations[0].answer_index == 1
    duration = probe(tmp_path / f"{uids[0]}.mp4").duration
    assert out[0].duration == pytest.approx(duration) and conv.end_time == out[0].duration
    assert conv.start_time == 0.0
    roundtrip(out, tmp_path)


def test_egoschema_records_with_their_own_answer(tmp_path, place):
    rows = [
        {"video_idx": "abc", "question": "q?", "option": ["A. one", "B. two", "C. three"], "answer": "2"},
        {"video_idx": "def", "question": "q2?", "option": ["A. one", "B. two"], "answer": "B"},
    ]
    ann = tmp_path / "ann" / "rows.json"
    ann.parent.mkdir()
    ann.write_text(json.dumps(rows))
    place(tmp_path, "abc.mp4", "def.mp4")
    out = convert("egoschema", ann, tmp_path)
    assert [(c.choices, c.answer) for e in out for c in e.conversations] == [
        (("one", "two", "three"), "three"),
        (("one", "two"), "two"),
    ]


# --- Video-MME --------------------------------------------------------------------------------------------


def test_videomme_rows_with_subtitles(tmp_path, place):
    data = tmp_path / "data"
    place(data, "fFjv93ACGo8.mp4", "Zp9qX2kLmN0.mp4")
    subs = SAMPLES / "videomme/subtitle"
    out = convert("videomme", SAMPLES / "videomme/test.json", data, subs)
    assert [e.video_id for e in out] == ["fFjv93ACGo8", "Zp9qX2kLmN0"]
    first = out[0]
    assert first.subtitles == subs / "fFjv93ACGo8.srt"
    assert out[1].subtitles is None  # not every Video-MME video has subtitles
    c1, c2 = first.conversations
    assert c1.choices == ("Apples.", "Candles.", "Berries.", "The three kinds are of the same number.")
    assert (c1.answer, c1.answer_index) == ("Berries.", 2)
    assert c1.question_type == "Counting Problem"
    assert c2.answer_index == 0 and c2.answer.startswith("It is a news report")
    assert out[1].conversations[0].answer == "Zebra, elephant, lion."
    assert c1.end_time == pytest.approx(probe(data / "fFjv93ACGo8.mp4").duration)
    loaded = roundtrip(out, tmp_path)
    # The subtitles are a real SRT file that videokv reads (font tags stripped).
    first_cue = load_subtitles(loaded[0].subtitles)[0]
    assert first_cue.text == "The first Christmas trees were decorated with apples."


def test_videomme_grouped_template(tmp_path, place):
    place(tmp_path, "001.mp4")
    out = convert("videomme", SAMPLES / "videomme/output_test_template.json", tmp_path)
    assert [e.video_id for e in out] == ["001"]
    assert [c.answer_index for c in out[0].conversations] == [2, 0]


def test_videomme_parquet_without_pyarrow_says_what_to_do(tmp_path):
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("pyarrow is installed")
    ann = tmp_path / "test-00000-of-00001.parquet"
    ann.write_bytes(b"PAR1")
    with pytest.raises(DatasetError, match="needs pyarrow.*JSON Lines"):
        convert("videomme", ann, tmp_path)


# --- LongVideoBench ---------------------------------------------------------------------------------------


def test_longvideobench_with_json_subtitles(tmp_path, place):
    videos = tmp_path / "videos"
    place(videos, "soNQYQXrx_A.mp4", "86CxyhFV9MI.mp4")
    work = tmp_path / "srt"
    out = convert(
        "longvideobench",
        SAMPLES / "longvideobench/lvb_val.json",
        videos,
        SAMPLES / "longvideobench/subtitles",
        work_dir=work,
    )
    assert [e.video_id for e in out] == ["soNQYQXrx_A", "86CxyhFV9MI"]
    assert [s.record for s in out.skipped] == ["record 3 (id '86CxyhFV9MI_1')"]
    movie, cooking = out
    assert movie.duration == 563.37
    c1, c2 = movie.conversations
    assert (c1.answer, c1.answer_index) == ("He is shirtless.", 4)
    assert (c2.answer, c2.answer_index, c2.question_type) == ("White", 0, "S2E")
    assert (c1.start_time, c1.end_time) == (0.0, 563.37)
    assert cooking.conversations[0].choices == ("A whisk", "A rolling pin", "A knife")
    assert cooking.conversations[0].answer == "A rolling pin"
    # Subtitles: JSON -> SRT, shifted by starting_timestamp_for_subtitles (10 s); the cue before is dropped.
    assert movie.subtitles == work / "soNQYQXrx_A.srt"
    events = load_subtitles(movie.subtitles)
    assert [(e.start, e.end, e.text) for e in events] == [
        (1.25, 4.0, "He was driven out of the world."),
        (60.0, 62.0, "The boat was white."),
    ]
    events = load_subtitles(cooking.subtitles)
    assert [(e.start, e.end) for e in events] == [(1.5, 3.0), (40.0, 52.5)]  # open end -> the duration
    roundtrip(out, tmp_path)


def test_longvideobench_json_subtitles_need_a_work_dir(tmp_path, place):
    place(tmp_path, "soNQYQXrx_A.mp4", "86CxyhFV9MI.mp4")
    lvb = SAMPLES / "longvideobench"
    with pytest.raises(DatasetError, match="record 0 .*work_dir"):
        convert("longvideobench", lvb / "lvb_val.json", tmp_path, lvb / "subtitles")
    out = convert("longvideobench", lvb / "lvb_val.json", tmp_path)
    assert all(e.subtitles is None for e in out)


# --- VNBench ----------------------------------------------------------------------------------------------


def test_vnbench_tries_and_answer_forms(tmp_path, place):
    place(tmp_path, "VNBench/v_PkRvgIFREJU_ord_insert2.mp4", "VNBench/3261112327_ret_edit1.mp4")
    out = convert("vnbench", SAMPLES / "vnbench/VNBench-main-4try.json", tmp_path)
    assert [e.video_id for e in out] == ["v_PkRvgIFREJU_ord_insert2", "3261112327_ret_edit1"]
    try0, try1 = out[0].conversations
    assert try0.answer_index == 1 and try1.answer_index == 0  # same answer text, shuffled options
    assert try0.answer == try1.answer == "tv monitor, cow, train, sheep"
    assert try0.question_type == "ord_insert2"
    assert out[1].conversations[0].answer == "candle"  # gt given as an index
    assert out[1].conversations[0].end_time == pytest.approx(probe(out[1].video_path).duration)
    roundtrip(out, tmp_path)


def test_vnbench_videos_directly_in_the_folder(tmp_path, place):
    place(tmp_path, "v_PkRvgIFREJU_ord_insert2.mp4", "3261112327_ret_edit1.mp4")
    out = convert("vnbench", SAMPLES / "vnbench/VNBench-main-4try.json", tmp_path)
    assert out[0].video_path == tmp_path / "v_PkRvgIFREJU_ord_insert2.mp4"


# --- RVS --------------------------------------------------------------------------------------------------


def test_rvs_rekv_form_keeps_stream_times(tmp_path, place):
    place(tmp_path, "000246.mp4")
    out = convert("rvs", SAMPLES / "rvs/ego4d_oe.json", tmp_path)
    (entry,) = out
    assert entry.video_id == "000246" and entry.duration == 840.0
    # Sorted by the time they are asked.
    assert [(c.start_time, c.end_time) for c in entry.conversations] == [(0.0, 60.0), (300.0, 360.0)]
    assert [c.evidence for c in entry.conversations] == [((0.0, 60.0),), ((300.0, 360.0),)]
    assert entry.conversations[1].answer == "A pair of scissors." and entry.conversations[1].choices is None
    roundtrip(out, tmp_path)


def test_rvs_per_question_form(tmp_path, place):
    place(tmp_path, "tt0120338.mp4")
    out = convert("rvs", SAMPLES / "rvs/test_qa_movienet.json", tmp_path)
    (entry,) = out
    assert [(c.question_type, c.start_time, c.end_time) for c in entry.conversations] == [
        ("object", 5.0, 20.0),
        ("location", 30.0, 90.0),
    ]
    assert entry.duration is None


# --- StreamingBench ---------------------------------------------------------------------------------------


def test_streamingbench_real_time_questions(tmp_path, place):
    place(tmp_path, "sample_348_real.mp4")
    out = convert("streamingbench", SAMPLES / "streamingbench/questions_real.json", tmp_path)
    (entry,) = out  # two entries name the same video
    assert entry.video_id == "sample_348_real"
    early, late = entry.conversations
    assert (early.start_time, early.end_time) == (0.0, 31.0)
    assert late.end_time == 3 * 60 + 26
    assert early.choices == ("Plates.", "Cups.", "Bread buns.", "Nothing.")
    assert (early.answer, early.answer_index) == ("Bread buns.", 2)
    assert late.answer_index == 0 and late.question_type == "Clips Summarize"
    roundtrip(out, tmp_path)


def test_streamingbench_sequential_and_proactive(tmp_path, place):
    place(tmp_path, "sample_17_sqa.mp4", "sample_17_proactive.mp4")
    out = convert("streamingbench", SAMPLES / "streamingbench/questions_sqa.json", tmp_path)
    assert [(c.end_time, c.answer) for c in out[0].conversations] == [(36.0, "Wang chuqin."), (182.0, "7.")]
    out = convert("streamingbench", SAMPLES / "streamingbench/questions_proactive.json", tmp_path)
    (skipped,) = out.skipped
    assert skipped.record == "record 0 (video_path './videos/sample_17_proactive.mp4'), question 0"
    assert "proactive" in skipped.reason
    assert [c.answer for c in out[0].conversations] == ["White."]


# --- errors naming the file and record --------------------------------------------------------------------


LVB_BAD = {"video_id": "v", "question": "q", "candidates": ["a", "b"], "correct_choice": 5}
BAD_RECORDS = [
    ("mlvu", {"video": "a.mp4", "question": "q", "candidates": ["x", "y"], "answer": "z"}, "field 'answer'"),
    ("mlvu", {"video": "a.mp4", "question": "", "answer": "z"}, "field 'question': expected a non-empty"),
    ("mlvu", {"question": "q", "answer": "z"}, "field 'video'"),
    ("egoschema", {"q_uid": "u1", "question": "q", "option 0": "a", "answer": 0}, "field 'option 0'"),
    ("egoschema", {"q_uid": "u1", "question": "q", "option 0": "a", "option 1": "b", "answer": 7}, "0-1"),
    ("videomme", {"videoID": "v", "question": "q", "options": "A. x", "answer": "A"}, "field 'options'"),
    ("longvideobench", LVB_BAD, "field 'correct_choice': expected a choice index 0-1, got 5"),
    ("vnbench", {"video": "v.mp4", "question": "q", "options": ["a", "b"], "gt": "c"}, "field 'gt'"),
    ("rvs", {"video_id": "v", "question": "q", "answer": "a", "end_time": "soon"}, "field 'end_time'"),
    ("rvs", {"video_id": "v", "question": "q", "answer": "a", "start_time": 9, "end_time": 3}, "after end"),
    (
        "streamingbench",
        {"video_path": "v.mp4", "questions": [{"question": "q", "options": ["a", "b"], "answer": "A"}]},
        "question 0: field 'time_stamp'",
    ),
]


@pytest.mark.parametrize("name,record,expected", BAD_RECORDS, ids=[f"{n}-{e}" for n, _, e in BAD_RECORDS])
def test_bad_record_is_named(tmp_path, place, name, record, expected):
    place(tmp_path, "a.mp4", "v.mp4", "u1.mp4")
    good = {
        "mlvu": {"video": "a.mp4", "question": "ok?", "answer": "yes"},
        "egoschema": {"q_uid": "u0", "question": "ok?", "option 0": "a", "option 1": "b", "answer": 0},
        "videomme": {"videoID": "v", "question": "ok?", "options": ["A. x", "B. y"], "answer": "A"},
        "longvideobench": {"video_id": "v", "question": "ok?", "candidates": ["a", "b"], "correct_choice": 0},
        "vnbench": {"video": "v.mp4", "question": "ok?", "options": ["a", "b"], "gt": "a"},
        "rvs": {"video_id": "v", "question": "ok?", "answer": "a", "end_time": 1},
        "streamingbench": {
            "video_path": "v.mp4",
            "questions": [{"question": "ok?", "options": ["a", "b"], "answer": "A", "time_stamp": "0:01"}],
        },
    }[name]
    ann = tmp_path / "annotation.json"
    ann.write_text(json.dumps([good, record]))
    with pytest.raises(DatasetError) as info:
        convert(name, ann, tmp_path)
    message = str(info.value)
    assert message.startswith(f"{ann}: record 1")
    assert expected in message


def test_invalid_json_gives_line_and_column(tmp_path):
    ann = tmp_path / "a.json"
    ann.write_text('[\n  {"video": "a.mp4",\n   "question": }\n]')
    with pytest.raises(DatasetError, match=r"a.json: invalid JSON at line 3, column 16"):
        convert("mlvu", ann, tmp_path)


def test_missing_folders_and_files(tmp_path):
    with pytest.raises(DatasetError, match="video folder .* does not exist"):
        convert("vnbench", SAMPLES / "vnbench/VNBench-main-4try.json", tmp_path / "nope")
    with pytest.raises(DatasetError, match="annotation file .* not found"):
        convert("vnbench", tmp_path / "nope.json", tmp_path)
    with pytest.raises(DatasetError, match="subtitles folder .* does not exist"):
        convert("videomme", SAMPLES / "videomme/test.json", tmp_path, tmp_path / "subs")


def test_a_file_that_is_not_a_video(tmp_path):
    (tmp_path / "217.mp4").write_bytes(b"not a video at all")
    with pytest.raises(DatasetError, match="record 0 .*cannot read the length of video '217'"):
        convert("mlvu", SAMPLES / "mlvu/json/9_summary.json", tmp_path)


def test_helpers():
    assert parse_clock("00:03:26") == 206.0
    assert parse_clock("1:02:03.5") == 3723.5
    assert parse_clock("00:00:01,250") == 1.25
    assert parse_clock(12) == 12.0 and parse_clock("7.5") == 7.5
    for bad in ("soon", -1, True, None, "1:99:00x"):
        with pytest.raises(ValueError):
            parse_clock(bad)
    assert strip_option_labels(["A. Red.", "B. Blue."]) == ["Red.", "Blue."]
    assert strip_option_labels(["(A) Red", "(B) Blue"]) == ["Red", "Blue"]
    # Labels out of order or missing: kept as they are.
    assert strip_option_labels(["B. Red", "A. Blue"]) == ["B. Red", "A. Blue"]
    assert strip_option_labels(["A. Red", "Blue"]) == ["A. Red", "Blue"]


# --- CLI --------------------------------------------------------------------------------------------------


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="videokv bench")
    add_convert_parser(parser.add_subparsers(dest="bench_command", required=True))
    return parser.parse_args(argv)


def test_cli_converts_and_summarises(tmp_path, place, capsys):
    videos = tmp_path / "videos"
    place(videos, "soNQYQXrx_A.mp4")
    out = tmp_path / "out" / "lvb.json"
    out.parent.mkdir()
    args = _parse(
        [
            "convert",
            "longvideobench",
            str(SAMPLES / "longvideobench/lvb_val.json"),
            "--videos",
            str(videos),
            "--subtitles",
            str(SAMPLES / "longvideobench/subtitles"),
            "--allow-missing",
            "--out",
            str(out),
        ]
    )
    assert args.func is run_convert
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "longvideobench: 1 videos, 2 questions" in printed
    assert "missing videos (left out): 1: 86CxyhFV9MI" in printed
    assert "skipped questions: 1" in printed
    entries = load_dataset(out)
    assert [e.video_id for e in entries] == ["soNQYQXrx_A"]
    # The SRT made from the JSON subtitles sits next to the dataset, written relative to it.
    assert entries[0].subtitles == tmp_path / "out" / "lvb_files" / "soNQYQXrx_A.srt"
    assert json.loads(out.read_text())[0]["subtitles"] == "lvb_files/soNQYQXrx_A.srt"


def test_cli_missing_videos_is_an_error_without_allow_missing(tmp_path):
    args = _parse(
        ["convert", "vnbench", str(SAMPLES / "vnbench/VNBench-main-4try.json"), "--videos", str(tmp_path)]
        + ["--out", str(tmp_path / "d.json")]
    )
    with pytest.raises(DatasetError, match="2 video file"):
        run_convert(args)
    assert not (tmp_path / "d.json").exists()


def test_cli_nothing_converted_returns_1(tmp_path, capsys):
    args = _parse(
        ["convert", "vnbench", str(SAMPLES / "vnbench/VNBench-main-4try.json"), "--videos", str(tmp_path)]
        + ["--allow-missing", "--out", str(tmp_path / "d.json")]
    )
    assert run_convert(args) == 1
    assert "nothing to write" in capsys.readouterr().out
    assert not (tmp_path / "d.json").exists()


def test_videokv_main_runs_convert_when_wired(tmp_path, place, capsys):
    from videokv.cli import build_parser, main

    try:
        build_parser().parse_args(["bench", "convert", "--help"])
    except SystemExit as exc:
        if exc.code != 0:
            pytest.skip("`videokv bench convert` is not wired into the CLI in this build")
    capsys.readouterr()
    place(tmp_path, "000246.mp4")
    out = tmp_path / "rvs.json"
    ann = str(SAMPLES / "rvs/ego4d_oe.json")
    code = main(["bench", "convert", "rvs", ann, "--videos", str(tmp_path), "--out", str(out)])
    assert code == 0
    assert [len(e.conversations) for e in load_dataset(out)] == [2]
    code = main(["bench", "convert", "rvs", ann, "--videos", str(tmp_path / "x"), "--out", str(out)])
    assert code == 2
    assert "video folder" in capsys.readouterr().err
