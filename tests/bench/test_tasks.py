"""Task families of `make-needles --tasks`: every answer and evidence span is recomputed from the written SRT
file alone (the planted lines found by their text), not from the generator's bookkeeping."""

from __future__ import annotations

import itertools
import json
import random
import re
import shutil
import statistics
from pathlib import Path

import pytest

from videokv.bench.convert import convert
from videokv.bench.dataset import load_dataset
from videokv.bench.metrics import TIME_TOLERANCE_S, is_correct
from videokv.bench.needles import ACTIONS, AMBIENCE, SUBJECTS, WHERE, make_needles
from videokv.bench.tasks import COUNTS, EVENTS, FAMILIES, task_track
from videokv.errors import InputError
from videokv.video.subtitles import write_srt

SAMPLES = Path(__file__).parent / "samples"
DISTRACTORS = set(AMBIENCE) | {f"{s} {a} {w}." for s, a, w in itertools.product(SUBJECTS, ACTIONS, WHERE)}
LINE_OF = {e.item: e.line for e in EVENTS}
ITEM_OF_LINE = {e.line: e.item for e in EVENTS}
LINE_OF_PAST = {e.past: e.line for e in EVENTS}
COUNT_LINE = {q: line for line, q in COUNTS}


def read_srt(path: Path) -> list[tuple[float, float, str]]:
    """(start, end, text) of every cue, parsed here (not with videokv's reader), in file order."""
    cues = []
    for block in path.read_text().strip().split("\n\n"):
        lines = block.splitlines()
        m = re.fullmatch(r"(\d+):(\d\d):(\d\d),(\d{3}) --> (\d+):(\d\d):(\d\d),(\d{3})", lines[1])
        h0, m0, s0, ms0, h1, m1, s1, ms1 = map(int, m.groups())
        cues.append((h0 * 3600 + m0 * 60 + s0 + ms0 / 1000, h1 * 3600 + m1 * 60 + s1 + ms1 / 1000, lines[2]))
    assert [c[0] for c in cues] == sorted(c[0] for c in cues)
    return cues


def span(cue) -> tuple[float, float]:
    return (round(cue[0], 3), round(cue[1], 3))


def only(cues, text: str):
    hits = [c for c in cues if c[2] == text]
    assert len(hits) == 1, (text, hits)
    return hits[0]


def expected(conv: dict, cues: list) -> tuple[str, list]:
    """(the right answer, the cues it needs), recomputed from the subtitle cues and the question's text."""
    task, q = conv.get("task", "retrieval"), conv["question"]
    if task == "retrieval":  # as test_needles: the one planted line that holds the answer
        hits = [c for c in cues if span(c) == tuple(conv["evidence"][0])]
        assert re.search(rf"\b{re.escape(conv['answer'])}\b", hits[0][2])
        return conv["answer"], hits
    if task == "ordering":
        form, listed = re.fullmatch(
            r"(?:Which of these happened (first|last)|In what order did these happen): (.+)\?", q
        ).groups()
        items = re.split(r", | or ", listed)
        assert 3 <= len(items) <= 4 and len(set(items)) == len(items)
        planted = sorted((only(cues, LINE_OF[i]) for i in items), key=lambda c: c[0])
        in_time = [ITEM_OF_LINE[c[2]] for c in planted]
        assert in_time != items  # the question does not give the order away
        answer = {"first": in_time[0], "last": in_time[-1]}.get(form, ", ".join(in_time))
        return answer, planted
    if task == "counting":
        line = COUNT_LINE[q]
        planted = [c for c in cues if c[2] == line]
        assert 2 <= len(planted) <= 9
        return str(len(planted)), planted
    if task == "temporal":
        m = re.fullmatch(r"What happened just (before|after) (.+)\?", q)
        if m:
            anchor = only(cues, LINE_OF_PAST[m.group(2)])
            k = cues.index(anchor)
            neighbour = cues[k - 1] if m.group(1) == "before" else cues[k + 1]
            assert neighbour[2] in ITEM_OF_LINE  # the line right before / after is a planted event
            return ITEM_OF_LINE[neighbour[2]], sorted([anchor, neighbour])
        m = re.fullmatch(r"At about what time, in seconds from the start, did this happen: (.+)\?", q)
        anchor = only(cues, LINE_OF_PAST[m.group(1)])
        return f"{round(anchor[0])} seconds", [anchor]
    if task == "multihop":
        m = re.fullmatch(r"Where does the (.+) work\?", q) or re.fullmatch(
            r"What is the name of the (.+)'s dog\?", q
        )
        role = m.group(1)
        (first,) = [c for c in cues if re.search(rf"\b{role}\b", c[2])]  # the only line naming the role
        name = re.fullmatch(rf"The {role} is called (\w+)\.", first[2]).group(1)
        said = [c for c in cues if re.search(rf"\b{name}\b", c[2])]
        assert len(said) == 2  # the name joins exactly the two lines
        (second,) = [c for c in said if c is not first]
        pattern = r"\w+ works at (.+)\." if q.startswith("Where") else r"\w+ has a dog called (\w+)\."
        return re.fullmatch(pattern, second[2]).group(1), sorted([first, second])
    raise AssertionError(task)


def check_stream(conversations: list[dict], cues: list, duration: float) -> None:
    """Every question's answer and evidence from the cues; no planted line is shared or repeated."""
    times = [c["end_time"] for c in conversations]
    assert times == sorted(times) and times[-1] == duration
    claimed: list[tuple[float, float]] = []
    for conv in conversations:
        answer, needed = expected(conv, cues)
        assert conv["answer"] == answer, conv
        evidence = [tuple(s) for s in conv["evidence"]]
        assert evidence == [span(c) for c in needed], conv  # every needed line, and only those
        assert conv["end_time"] > max(t1 for _, t1 in evidence)  # asked after all its evidence
        claimed += evidence
        if "choices" in conv:
            choices = conv["choices"]
            assert len(set(choices)) == len(choices) >= 3 and choices.count(answer) == 1
            if conv["question_type"] == "temporal-time":  # the right time is the closest option
                t = needed[0][0]
                dist = sorted(abs(float(c.split()[0]) - t) for c in choices)
                assert dist[0] <= 0.5 and dist[1] >= 5
    assert len(claimed) == len(set(claimed))  # no line is evidence for two questions
    planted = [c for c in cues if c[2] not in DISTRACTORS]
    for c in planted:  # every planted line is some question's evidence, or a temporal question's other option
        assert span(c) in claimed or c[2] in ITEM_OF_LINE, c
    once = [c[2] for c in planted if c[2] not in COUNT_LINE.values()]
    assert len(once) == len(set(once))  # no event, role or name line is planted twice


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    out = tmp_path_factory.mktemp("tasks")
    return out, make_needles(out, minutes=[3], questions=10, seed=5, tasks=FAMILIES)


def test_each_family_is_answered_by_its_lines_in_the_written_srt(stream):
    out, path = stream
    (entry,) = json.loads(path.read_text())
    cues = read_srt(out / entry["subtitles"])
    convs = entry["conversations"]
    assert sorted(c["task"] for c in convs) == sorted(FAMILIES * 2)
    for family in FAMILIES:  # each family asked once open and once as multiple choice
        assert sorted("choices" in c for c in convs if c["task"] == family) == [False, True]
    check_stream(convs, cues, entry["duration"])
    (loaded,) = load_dataset(path)  # a valid dataset, with the tasks
    assert sorted(c.task for c in loaded.conversations) == sorted(FAMILIES * 2)


@pytest.mark.parametrize("minutes, questions", [(1.5, 5), (3, 10), (10, 16)])
@pytest.mark.parametrize("seed", range(4))
def test_many_seeds_and_lengths_check_out_against_the_srt(minutes, questions, seed, tmp_path):
    duration = minutes * 60
    events, convs = task_track(duration, questions, FAMILIES, random.Random(f"{seed}-{minutes}"))
    write_srt(events, tmp_path / "s.srt")
    check_stream(convs, read_srt(tmp_path / "s.srt"), duration)
    forms = {c["question_type"] for c in convs}
    if questions >= 16:
        assert {"counting", "multihop-place", "multihop-dog"} & forms


def test_all_forms_occur_over_seeds(tmp_path):
    forms = set()
    for seed in range(12):
        events, convs = task_track(600.0, 10, FAMILIES[1:], random.Random(seed))
        write_srt(events, tmp_path / "s.srt")
        check_stream(convs, read_srt(tmp_path / "s.srt"), 600.0)
        forms |= {(c["question_type"], "choices" in c) for c in convs}
    kinds = [
        "ordering-first",
        "ordering-last",
        "ordering-order",
        "counting",
        "temporal-before",
        "temporal-after",
    ]
    kinds += ["temporal-time", "multihop-place", "multihop-dog"]
    assert {(k, mc) for k in kinds for mc in (False, True)} <= forms


def test_same_seed_same_files_other_seed_other_questions(stream, tmp_path):
    out, path = stream
    again = make_needles(tmp_path / "a", minutes=[3], questions=10, seed=5, tasks=FAMILIES)
    other = make_needles(tmp_path / "b", minutes=[3], questions=10, seed=6, tasks=FAMILIES)
    assert again.read_bytes() == path.read_bytes()
    srt = "subtitles/needles-3min.srt"
    assert (tmp_path / "a" / srt).read_bytes() == (out / srt).read_bytes()
    assert other.read_bytes() != path.read_bytes()
    assert (tmp_path / "b" / srt).read_bytes() != (out / srt).read_bytes()


def test_bad_tasks_and_too_little_room_are_clear_errors(tmp_path, capsys):
    from videokv.cli import main

    with pytest.raises(InputError, match="unknown task family 'sorting'"):
        make_needles(tmp_path / "x", minutes=[1], tasks=["sorting"])
    with pytest.raises(InputError, match="at least the number of task families"):
        task_track(600.0, 3, FAMILIES, random.Random(0))
    with pytest.raises(InputError, match="fewer questions or a longer stream"):
        task_track(60.0, 10, FAMILIES, random.Random(0))
    with pytest.raises(SystemExit) as exc:
        main(["bench", "make-needles", "--out", str(tmp_path / "y"), "--tasks", "retrieval,sorting"])
    assert exc.value.code == 2 and "task families" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()


def test_cli_help_names_the_families(capsys):
    from videokv.cli import main

    with pytest.raises(SystemExit):
        main(["bench", "make-needles", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for family in FAMILIES:
        assert family in text
    assert "--tasks retrieval,ordering,counting,temporal,multihop" in text


# --- scoring ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "task, prediction, answer, right",
    [
        ("counting", "It rang three times.", "3", True),
        ("counting", "3", "3", True),
        ("counting", "three", "3", True),
        ("counting", "3 or 4 times", "3", False),
        ("counting", "Twice.", "2", True),
        ("counting", "4", "three", False),
        (
            "ordering",
            "First the crane, then the parrot, and last the juggler.",
            "the crane, the parrot, the juggler",
            True,
        ),
        ("ordering", "the parrot, the crane, the juggler", "the crane, the parrot, the juggler", False),
        ("ordering", "the crane, the parrot", "the crane, the parrot, the juggler", False),
        ("ordering", "The parrot came first.", "the parrot", True),
        ("temporal", "At about 83 seconds.", "84 seconds", True),
        ("temporal", "[83.8s]", "84 seconds", True),
        ("temporal", "1:24", "84 seconds", True),
        ("temporal", "It happened at 120 s.", "84 seconds", False),
        ("temporal", "The brass band.", "the brass band", True),
        ("retrieval", "three", "3", False),  # only counting reads number words
    ],
)
def test_open_answers_are_read_by_family(task, prediction, answer, right):
    assert is_correct(prediction, answer, None, None, None, task) is right
    assert TIME_TOLERANCE_S == 10.0


# --- converters ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def place_clip(tmp_path_factory):
    """place_clip(root, *names): a tiny real video copied to root/name for each name."""
    import numpy as np

    from videokv.video.decode import write_video

    clip = tmp_path_factory.mktemp("clip") / "clip.mp4"
    write_video(clip, np.zeros((4, 32, 48, 3), dtype=np.uint8), fps=2)

    def place(root: Path, *names: str) -> None:
        for name in names:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(clip, root / name)

    return place


def test_converted_vnbench_and_mlvu_questions_carry_their_families(tmp_path, place_clip):
    from videokv.bench.dataset import dump_dataset

    place_clip(tmp_path / "vn", "VNBench/v_PkRvgIFREJU_ord_insert2.mp4", "VNBench/3261112327_ret_edit1.mp4")
    place_clip(tmp_path / "vn", "VNBench/v_8yq3_cnt_edit1.mp4")
    vn = convert("vnbench", SAMPLES / "vnbench/VNBench-main-4try.json", tmp_path / "vn")
    assert [c.task for e in vn for c in e.conversations] == ["ordering", "ordering", "retrieval"]
    counted = convert("vnbench", SAMPLES / "vnbench/VNBench-count.json", tmp_path / "vn")
    ((count,),) = [e.conversations for e in counted]
    assert (count.task, count.question_type, count.answer) == ("counting", "cnt_edit1", "3")
    assert is_correct("(B)", count.answer, count.choices, None, count.answer_index, count.task)
    place_clip(tmp_path / "mlvu", "4_count/count_1.mp4", "5_order/order_1.mp4", "1_plotQA/movie101_66.mp4")
    place_clip(tmp_path / "mlvu", "1_plotQA/xiaoliyu_6.mp4", "9_summary/217.mp4")
    mlvu = convert("mlvu", SAMPLES / "mlvu/tasks", tmp_path / "mlvu")
    assert {e.video_id: [c.task for c in e.conversations] for e in mlvu} == {
        "count_1": ["counting"],
        "order_1": ["ordering"],
    }
    plot = convert("mlvu", SAMPLES / "mlvu/json", tmp_path / "mlvu")
    assert {c.task for e in plot for c in e.conversations} == {"other"}  # plotQA and summary name no family
    out = tmp_path / "converted.json"
    dump_dataset([*vn, *counted, *mlvu, *plot], out)
    assert [c.task for e in load_dataset(out) for c in e.conversations] == [
        c.task for e in [*vn, *counted, *mlvu, *plot] for c in e.conversations
    ]


# --- report ----------------------------------------------------------------------------------------------


def test_a_scored_run_is_reported_per_family(stream, tmp_path):
    from videokv.bench.report import summarize_tasks, write_report
    from videokv.bench.runner import RunSettings, run_benchmark

    _, path = stream
    settings = RunSettings(dataset=str(path), model="tiny-qwen2_vl", frame_tokens=4, max_new_tokens=4)
    records = run_benchmark(path, ["full"], tmp_path / "run", settings, progress=False)["full"]
    convs = {i: c for i, c in enumerate(load_dataset(path)[0].conversations)}
    for r in records:  # every record scored with its family's rule
        conv = convs[r["q"]]
        assert r["task"] == conv.task
        assert r["correct"] == is_correct(
            r["prediction"], conv.answer, conv.choices, r["choice"], conv.answer_index, conv.task
        )
        assert r["evidence_recall"] == 1.0  # `full` attends to everything
    rows = summarize_tasks(tmp_path / "run")
    assert [r["task"] for r in rows] == list(FAMILIES)
    for row in rows:
        mine = [r for r in records if r["task"] == row["task"]]
        assert row["answered"] == len(mine) == 2
        assert row["accuracy"] == sum(r["correct"] for r in mine) / 2 and row["evidence_recall"] == 1.0
        assert row["video_id"] == records[0]["video_id"]
        assert row["context_tokens"] == statistics.median(r["context_tokens"] for r in mine)
        assert row["resident_mib"] == pytest.approx(
            statistics.fmean(r["resident_bytes"] / 2**20 for r in mine)
        )
    write_report(tmp_path / "run", tmp_path / "docs", "tasks")
    md = (tmp_path / "docs" / "tasks.md").read_text()
    header = "| preset | retrieval | ordering | counting | temporal | multihop | attended tokens | resident"
    assert "**By task family**" in md and f"*{records[0]['video_id']}*" in md and header in md
    family_table = md.split(header)[1].split("\n\n")[0]
    (line,) = [x for x in family_table.splitlines() if x.startswith("| `full` |")]
    attended = statistics.median(row["context_tokens"] for row in rows)  # the median of the families' medians
    assert line.split(" | ")[-2] == f"{attended:.0f}"
    assert json.loads((tmp_path / "docs" / "tasks.json").read_text())["tasks"] == rows


def test_spoken_task_streams_move_evidence_and_times_to_what_was_said(tmp_path):
    """`--speech`: the narration (what was said when) answers every family as the subtitles would."""
    from videokv.bench.speech import espeak_available

    if espeak_available() is None:
        pytest.skip("espeak-ng is not installed (apt-get install -y espeak-ng; .ci/run installs it)")
    path = make_needles(tmp_path, minutes=[2], questions=5, seed=2, tasks=FAMILIES, speech=True)
    (entry,) = json.loads(path.read_text())
    assert "subtitles" not in entry
    check_stream(entry["conversations"], read_srt(tmp_path / "narration" / "needles-2min.srt"), 120.0)


def test_the_task_field_is_optional_validated_and_round_trips(tmp_path):
    from videokv.bench.dataset import Conversation, DatasetError

    assert Conversation("q?", "a", 1.0).task == "retrieval"
    assert "task" not in Conversation("q?", "a", 1.0).to_dict()
    assert Conversation("q?", "3", 1.0, task="counting").to_dict()["task"] == "counting"
    (tmp_path / "v.mp4").write_bytes(b"")
    bad = [
        {
            "video_id": "v",
            "video_path": "v.mp4",
            "conversations": [
                {"question": "q?", "answer": "a", "end_time": 1, "task": "sorting"},
                {"question": "q?", "answer": "a", "end_time": 1, "task": None},
            ],
        }
    ]
    (tmp_path / "d.json").write_text(json.dumps(bad))
    with pytest.raises(DatasetError, match=r"conversations\[0\]\.task: expected one of retrieval, ordering"):
        load_dataset(tmp_path / "d.json")
    bad[0]["conversations"].pop(0)
    (tmp_path / "d.json").write_text(json.dumps(bad))
    assert load_dataset(tmp_path / "d.json")[0].conversations[0].task == "retrieval"  # null: the default
