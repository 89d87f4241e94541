"""The dataset format: validation messages, answer resolution, dump/load round trips."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import videokv.bench
from videokv.bench.dataset import (
    Conversation,
    DatasetError,
    VideoEntry,
    dump_dataset,
    load_dataset,
    normalize_answer,
)
from videokv.errors import InputError


def good_dataset() -> list[dict]:
    return [
        {
            "video_id": "v0",
            "video_path": "videos/v0.mp4",
            "duration": 120.0,
            "subtitles": "subs/v0.srt",
            "conversations": [
                {
                    "question": "What colour is the car?",
                    "answer": "B",
                    "choices": ["Blue", "Red", "Green"],
                    "start_time": 0,
                    "end_time": 60,
                    "question_type": "attribute",
                    "evidence": [[50, 55.5]],
                    "unknown_key": "kept out",
                },
                {"question": "Who speaks first?", "answer": "The teacher", "end_time": 119.5},
            ],
        },
        {
            "video_id": "v1",
            "video_path": "videos/v1.mp4",
            "conversations": [{"question": "Where are they?", "answer": "Paris", "end_time": 10}],
            "notes": "unknown keys are allowed",
        },
    ]


def write_files(folder: Path) -> None:
    for rel in ("videos/v0.mp4", "videos/v1.mp4", "subs/v0.srt"):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(b"x")


def write(folder: Path, data, name: str = "data.json") -> Path:
    path = folder / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_load_good_dataset(tmp_path):
    write_files(tmp_path)
    entries = load_dataset(write(tmp_path, good_dataset()))
    assert [e.video_id for e in entries] == ["v0", "v1"]
    v0 = entries[0]
    assert v0.video_path == tmp_path / "videos/v0.mp4" and v0.video_path.is_absolute()
    assert v0.subtitles == tmp_path / "subs/v0.srt"
    assert v0.duration == 120.0
    mc, open_q = v0.conversations
    assert mc.choices == ("Blue", "Red", "Green") and mc.answer_index == 1 and mc.answer == "B"
    assert (mc.start_time, mc.end_time) == (0.0, 60.0) and isinstance(mc.end_time, float)
    assert mc.evidence == ((50.0, 55.5),) and mc.question_type == "attribute"
    assert open_q.choices is None and open_q.answer_index is None and open_q.start_time == 0.0
    assert entries[1].duration is None and entries[1].subtitles is None
    assert "unknown_key" not in mc.to_dict()


def test_exported_from_videokv_bench():
    assert videokv.bench.load_dataset is load_dataset
    assert issubclass(DatasetError, InputError)


def test_absolute_paths_and_check_files(tmp_path):
    data = good_dataset()
    data[1]["video_path"] = str(tmp_path / "elsewhere.mp4")
    path = write(tmp_path, data)
    entries = load_dataset(path, check_files=False)
    assert entries[1].video_path == tmp_path / "elsewhere.mp4"
    with pytest.raises(DatasetError) as info:
        load_dataset(path)
    problems = info.value.problems
    assert any("entry 0 (video_id 'v0'): video_path: expected an existing video file" in p for p in problems)
    assert any(
        "entry 0 (video_id 'v0'): subtitles: expected an existing subtitle file" in p for p in problems
    )
    assert any("entry 1 (video_id 'v1'): video_path" in p and "elsewhere.mp4" in p for p in problems)
    assert str(info.value).startswith(f"{path}: 3 problems:")


def _set(path: str, value):
    """A mutation setting data[...] at a path like '0.conversations.1.end_time' (value DELETE removes it)."""

    def mutate(data):
        keys = [int(k) if k.isdigit() else k for k in path.split(".")]
        target = data
        for k in keys[:-1]:
            target = target[k]
        if value is DELETE:
            del target[keys[-1]]
        else:
            target[keys[-1]] = value
        return data

    return mutate


DELETE = object()

C0 = "conversations[0]"
BAD_CASES = [
    (
        _set("0.conversations.1.end_time", -2),
        "entry 0 (video_id 'v0'): conversations[1].end_time: expected a number >= start_time (0.0), got -2",
    ),
    (
        _set("0.conversations.0.start_time", 70),
        f"{C0}.end_time: expected a number >= start_time (70.0)",
    ),
    (
        _set("0.conversations.0.start_time", -1),
        f"{C0}.start_time: expected a number of seconds >= 0",
    ),
    (_set("0.conversations.0.question", "  "), f"{C0}.question: expected a non-empty string"),
    (_set("0.conversations.0.question", DELETE), f"{C0}.question: expected this field"),
    (_set("0.conversations.0.answer", 3), f"{C0}.answer: expected a string, got 3"),
    (_set("0.conversations.0.answer", "Purple"), f"{C0}.answer: expected one of the choices"),
    (_set("0.conversations.0.choices", ["Only"]), f"{C0}.choices: expected a list of at least 2"),
    (_set("0.conversations.0.choices", "Blue,Red"), f"{C0}.choices: expected a list"),
    (
        _set("0.conversations.0.choices", ["Red", "Red", "Blue"]),
        "choices[1]: expected a choice different from",
    ),
    (
        _set("0.conversations.0.choices", ["Red", "", "Blue"]),
        f"{C0}.choices[1]: expected a non-empty",
    ),
    (
        _set("0.conversations.0.evidence", [[5, 1]]),
        f"{C0}.evidence[0][1]: expected a number >= t0",
    ),
    (_set("0.conversations.0.evidence", [5, 6]), f"{C0}.evidence[0]: expected a pair"),
    (
        _set("0.conversations.0.evidence", [[0, 500]]),
        f"{C0}.evidence[0][1]: expected a number <= dur",
    ),
    (_set("0.conversations.0.question_type", 7), f"{C0}.question_type: expected a string or null"),
    (_set("0.conversations.0.end_time", "60"), f"{C0}.end_time: expected a number"),
    (_set("0.conversations.0.end_time", True), f"{C0}.end_time: expected a number"),
    (
        _set("0.conversations.0.end_time", 200),
        f"{C0}.end_time: expected a number <= duration (120)",
    ),
    (_set("0.conversations.0", "What?"), f"{C0}: expected an object"),
    (_set("0.conversations", []), "entry 0 (video_id 'v0'): conversations: expected a non-empty list"),
    (_set("0.conversations", DELETE), "entry 0 (video_id 'v0'): conversations: expected this field"),
    (_set("0.duration", 0), "entry 0 (video_id 'v0'): duration: expected a number of seconds > 0"),
    (_set("0.duration", "long"), 'duration: expected a number of seconds > 0 (or null), got "long"'),
    (_set("0.video_path", 5), "entry 0 (video_id 'v0'): video_path: expected a non-empty string"),
    (_set("0.video_path", DELETE), "entry 0 (video_id 'v0'): video_path: expected this field"),
    (_set("0.subtitles", ["a.srt"]), "entry 0 (video_id 'v0'): subtitles: expected a path string"),
    (_set("0.video_id", ""), "entry 0: video_id: expected a non-empty string"),
    (
        _set("1.video_id", "v0"),
        "video_id: expected a unique id, got 'v0' (already used by entry 0)",
    ),
    (_set("1", ["not", "an", "object"]), "entry 1: expected an object with video_id"),
]


@pytest.mark.parametrize("mutate,expected", BAD_CASES, ids=[e for _, e in BAD_CASES])
def test_bad_input_names_entry_and_field(tmp_path, mutate, expected):
    write_files(tmp_path)
    path = write(tmp_path, mutate(copy.deepcopy(good_dataset())))
    with pytest.raises(DatasetError) as info:
        load_dataset(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert expected in message


def test_top_level_and_json_errors(tmp_path):
    with pytest.raises(DatasetError, match="expected a JSON list of videos at the top level, got a JSON obj"):
        load_dataset(write(tmp_path, {"videos": []}))
    with pytest.raises(DatasetError, match=r"data.json: invalid JSON at line 2, column 17"):
        load_dataset(write(tmp_path, '[{"video_id": "v",\n  "video_path": }]'))
    with pytest.raises(DatasetError, match="dataset file .* not found"):
        load_dataset(tmp_path / "missing.json")
    assert load_dataset(write(tmp_path, "[]")) == []


def test_many_problems_are_all_listed(tmp_path):
    data = [{"video_id": f"v{i}", "video_path": "x.mp4", "conversations": []} for i in range(25)]
    with pytest.raises(DatasetError) as info:
        load_dataset(write(tmp_path, data), check_files=False)
    assert len(info.value.problems) == 25
    message = str(info.value)
    assert "25 problems" in message and "entry 19 (video_id 'v19')" in message
    assert "entry 20 (video_id" not in message and "... and 5 more" in message


def test_non_finite_numbers_are_rejected(tmp_path):
    data = good_dataset()
    text = json.dumps(data).replace('"end_time": 10', '"end_time": NaN')
    with pytest.raises(DatasetError, match=r"entry 1 \(video_id 'v1'\): conversations\[0\].end_time: exp"):
        load_dataset(write(tmp_path, text), check_files=False)


@pytest.mark.parametrize(
    "answer,index",
    [
        ("Red", 1),
        (" Red ", 1),
        ("red.", 1),
        ("B", 1),
        ("(B)", 1),
        ("B.", 1),
        ("B) Red", 1),
        ("B. Red", 1),
        ("b", 1),
        ("(c)", 2),
        ("The green one", 2),
        ("green one!", 2),
    ],
)
def test_answer_index_forms(answer, index):
    conv = Conversation("Which?", answer, 5.0, choices=["Blue", "Red", "the Green one"])
    assert conv.answer_index == index


def test_answer_index_prefers_exact_text_over_letters():
    # A choice that is itself a letter-like text wins over the letter reading.
    conv = Conversation("Which?", "B", 1.0, choices=["A", "B", "C"])
    assert conv.answer_index == 1
    conv = Conversation("Which?", "A", 1.0, choices=["B", "A"])
    assert conv.answer_index == 1
    # Labelled choices: the answer's text matches the choice without its label.
    conv = Conversation("Which?", "Candles.", 1.0, choices=["A. Apples.", "B. Candles."])
    assert conv.answer_index == 1


@pytest.mark.parametrize("answer", ["D", "Purple", "a dog", "", "b) Red"])
def test_unresolvable_multiple_choice_answer(answer):
    with pytest.raises(DatasetError, match="answer: expected one of the choices"):
        Conversation("Which?", answer, 1.0, choices=["Blue", "Red", "Green"])


def test_normalize_answer():
    assert normalize_answer("The  Red car.") == "red car"
    assert normalize_answer("An apple, a pear!") == "apple pear"
    assert normalize_answer("  ") == ""
    # one rule with the scorer (videokv.qa.normalize): a hyphen is a space, so gold and choices agree
    assert normalize_answer("train-station") == normalize_answer("Train station") == "train station"


def test_direct_construction_errors_name_the_field():
    with pytest.raises(DatasetError, match=r"^end_time: expected a number >= start_time \(3.0\), got 1"):
        Conversation("q", "a", 1, start_time=3)
    conv = Conversation("q", "a", 5)
    VideoEntry("v", Path("/x.mp4"), (conv,), duration=4.5)  # within DURATION_TOLERANCE (1 s)
    with pytest.raises(DatasetError, match=r"\[0\].end_time: expected a number <= duration \(3.5\), got 5"):
        VideoEntry("v", Path("/x.mp4"), (conv,), duration=3.5)
    with pytest.raises(DatasetError, match="conversations: expected a non-empty list"):
        VideoEntry("v", Path("/x.mp4"), ())
    entry = VideoEntry("v", "rel/x.mp4", [conv])
    assert entry.video_path == Path(os.path.abspath("rel/x.mp4")) and entry.conversations == (conv,)


def test_errors_survive_pickling():
    import pickle

    with pytest.raises(DatasetError) as info:
        Conversation("q", "a", 1, start_time=3)
    e = info.value
    again = pickle.loads(pickle.dumps(e))
    assert type(again) is type(e) and str(again) == str(e)
    assert (again.field, again.detail, again.problems) == (e.field, e.detail, e.problems)
    err = pickle.loads(pickle.dumps(DatasetError("two", ["a", "b"])))
    assert str(err) == "two" and err.problems == ["a", "b"]


def test_dump_writes_relative_paths_atomically(tmp_path):
    write_files(tmp_path)
    entries = load_dataset(write(tmp_path, good_dataset()))
    out = tmp_path / "copy.json"
    assert dump_dataset(entries, out) == out
    raw = json.loads(out.read_text())
    assert raw[0]["video_path"] == "videos/v0.mp4" and raw[0]["subtitles"] == "subs/v0.srt"
    assert raw[0]["conversations"][0]["evidence"] == [[50.0, 55.5]]
    assert "duration" not in raw[1] and "choices" not in raw[1]["conversations"][0]
    assert load_dataset(out) == entries
    # Paths outside the JSON's folder stay absolute; no temporary file is left behind.
    sub = tmp_path / "sub"
    sub.mkdir()
    dump_dataset(entries, sub / "d.json")
    assert json.loads((sub / "d.json").read_text())[0]["video_path"] == str(tmp_path / "videos/v0.mp4")
    assert load_dataset(sub / "d.json") == entries
    assert sorted(p.name for p in sub.iterdir()) == ["d.json"]


def test_dump_refuses_duplicates_and_missing_folder(tmp_path):
    conv = Conversation("q", "a", 1)
    e = VideoEntry("v", tmp_path / "v.mp4", (conv,))
    with pytest.raises(DatasetError, match="video_id 'v' is already used by entry 0"):
        dump_dataset([e, e], tmp_path / "d.json")
    with pytest.raises(DatasetError, match="folder .* does not exist"):
        dump_dataset([e], tmp_path / "no" / "d.json")
    assert not (tmp_path / "d.json").exists()


def test_dump_keeps_the_old_file_when_writing_fails(tmp_path):
    conv = Conversation("q", "a", 1)
    good = VideoEntry("v", tmp_path / "v.mp4", (conv,))
    out = dump_dataset([good], tmp_path / "d.json")
    before = out.read_text()
    with pytest.raises(DatasetError):
        dump_dataset([good, "not an entry"], out)
    assert out.read_text() == before


# --- property: any valid dataset survives dump -> load unchanged --------------------------------------------

_text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12).filter(
    lambda s: s.strip()
)
_time = st.floats(min_value=0, max_value=5000, allow_nan=False, allow_infinity=False)


@st.composite
def conversations(draw, duration):
    limit = duration if duration is not None else 5000.0
    end = draw(st.floats(min_value=0, max_value=limit, allow_nan=False))
    start = draw(st.floats(min_value=0, max_value=end, allow_nan=False))
    choices = draw(st.none() | st.lists(_text, min_size=2, max_size=5, unique=True))
    if choices is not None:
        index = draw(st.integers(0, len(choices) - 1))
        answer = draw(st.sampled_from([choices[index], chr(ord("A") + index), f"({chr(ord('A') + index)})"]))
    else:
        answer = draw(_text)
    spans = draw(st.lists(st.tuples(_time, _time), max_size=3))
    evidence = tuple((min(a, b, limit), min(max(a, b), limit)) for a, b in spans)
    qtype = draw(st.none() | _text)
    conv = Conversation(draw(_text), answer, end, start, tuple(choices) if choices else None, qtype, evidence)
    if choices is not None:
        assert choices[conv.answer_index] == answer or len(answer) <= 3
    return conv


@st.composite
def datasets(draw, root: Path):
    ids = draw(st.lists(st.text("abcxyz019_-", min_size=1, max_size=6), min_size=0, max_size=4, unique=True))
    entries = []
    for vid in ids:
        duration = draw(st.none() | st.floats(min_value=0.5, max_value=5000, allow_nan=False))
        convs = draw(st.lists(conversations(duration), min_size=1, max_size=3))
        inside = draw(st.booleans())
        video = root / "data" / "videos" / f"{vid}.mp4" if inside else root / "outside" / f"{vid}.mp4"
        subs = draw(st.none() | st.just(root / "data" / "subs" / f"{vid}.srt"))
        entries.append(VideoEntry(vid, video, tuple(convs), duration, subs))
    return entries


@pytest.fixture(scope="session")
def prop_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("prop")
    (root / "data").mkdir()
    return root


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_valid_dataset_survives_dump_and_load(prop_root, data):
    entries = data.draw(datasets(prop_root))
    path = dump_dataset(entries, prop_root / "data" / "dataset.json")
    loaded = load_dataset(path, check_files=False)
    assert loaded == entries
    assert [[c.answer_index for c in e.conversations] for e in loaded] == [
        [c.answer_index for c in e.conversations] for e in entries
    ]
    # And the written file is stable: dumping what was loaded gives the same bytes.
    text = path.read_text()
    dump_dataset(loaded, path)
    assert path.read_text() == text


@given(st.lists(_text, min_size=2, max_size=8, unique=True), st.data())
def test_letter_answers_always_resolve_to_their_choice(choices, data):
    index = data.draw(st.integers(0, len(choices) - 1))
    letter = chr(ord("A") + index)
    form = data.draw(st.sampled_from([letter, f"({letter})", f"{letter}.", f"{letter}) {choices[index]}"]))
    same = [i for i, c in enumerate(choices) if c == form] or [
        i for i, c in enumerate(choices) if c.strip() == form.strip()
    ]
    if same and same[0] != index:
        return  # a choice's own text (exact, else with spaces stripped) wins over a letter, by design
    assert Conversation("q", form, 1.0, choices=tuple(choices)).answer_index == index
