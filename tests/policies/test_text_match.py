"""TextMatch: text blocks ranked by the question's words; `text_k` adds them to a session's retrieval."""

from __future__ import annotations

import dataclasses

import pytest

from tests.conftest import get_tiny, random_frames
from videokv import TextEvent, VideoQA, get_preset
from videokv.engine import Frame
from videokv.errors import ConfigError
from videokv.policies.retrieve import TopK
from videokv.policies.retrieve.text_match import TextMatch, WithText, words

LINES = [
    "[1.0s] The weather is grey again today.\n",
    "[3.0s] The lifeguard is called Tomasz, he said.\n",
    "[5.0s] The taxi driver is called Sofia.\n",
    None,  # a frame block
    "[9.0s] Somebody said the lifeguard was late.\n",
]


def test_words_drop_time_stamps_and_stopwords():
    assert words("[12.5s] What is the name of the lifeguard?") == {"name", "lifeguard"}
    assert words("Route 66, the B-52") == {"route", "66", "b", "52"}


def test_rare_words_outweigh_common_ones():
    # "called" is in two lines, "tomasz" in one: the line naming Tomasz wins, then the other "called" line
    assert TextMatch(k=2).select("Who is called Tomasz?", LINES) == [1, 2]
    # "lifeguard" ties lines 1 and 4: the newer one comes first; frames (None) are never returned
    assert TextMatch(k=5).select("the lifeguard", LINES) == [4, 1]


def test_nothing_matches_nothing_is_added():
    assert TextMatch(k=3).select("What colour is the kite?", LINES) == []
    assert TextMatch(k=3).select("what is it?", LINES) == []  # stopwords only
    assert TextMatch(k=0).select("lifeguard", LINES) == []


@pytest.mark.parametrize("k", [-1, 1.5, True])
def test_bad_k_is_a_config_error(k):
    with pytest.raises(ConfigError):
        TextMatch(k=k)


def test_text_k_needs_a_memory_preset():
    with pytest.raises(ConfigError, match="text_k"):
        get_preset("full").with_overrides(["text_k=2"])
    with pytest.raises(ConfigError, match="text_k"):
        get_preset("rekv").with_overrides(["text_k=-1"])
    wrapped = get_preset("rekv").with_overrides(["text_k=2"])
    assert wrapped.retrieve == WithText(base=get_preset("rekv").retrieve, k=2)
    # a second text_k replaces the first (no double wrapping); text_k=0 unwraps
    assert wrapped.with_overrides(["text_k=3"]).retrieve == WithText(base=get_preset("rekv").retrieve, k=3)
    assert wrapped.with_overrides(["text_k=0"]).retrieve == get_preset("rekv").retrieve
    # the combinator's own parameters are reachable as nested overrides
    assert wrapped.with_overrides(["retrieve.base.k=5"]).retrieve.base.k == 5


def _session(family: str, text_k: int):
    """A rekv session retrieving one block per layer, over 6 frames and 4 subtitle lines (one planted)."""
    model, tok = get_tiny(family)
    retrieve = WithText(TopK(k=1), k=text_k) if text_k else TopK(k=1)
    config = dataclasses.replace(get_preset("rekv"), retrieve=retrieve)
    s = VideoQA.from_model(model, tok, memory=config).session()
    lines = [
        TextEvent(2.0 * i + 0.5, 2.0 * i + 1.0, f"ordinary line number {i} about the street")
        for i in range(3)
    ]
    lines.append(TextEvent(1.6, 1.9, "the lifeguard is called Tomasz"))
    frames = [Frame(float(t), f) for t, f in enumerate(random_frames(6))]
    s.add_items(sorted([*lines, *frames], key=lambda x: x.start if isinstance(x, TextEvent) else x.t))
    return s


def spans(answer) -> set[tuple[float, float, str]]:
    return {(e.t0, e.t1, e.kind) for e in answer.evidence}


def test_session_adds_the_matching_line_to_every_layer(family, tmp_path):
    """The attended blocks are the retriever's plus the line matching the question's words, exactly; a
    question with none of the line's words attends the retriever's blocks only; a reloaded session keeps
    `text_k` and matches the same line (the texts are restored with the blocks)."""
    fact = (1.6, 1.9, "text")
    question = "What is the lifeguard called?"
    with_text, without = _session(family, text_k=1), _session(family, text_k=0)
    assert spans(with_text.ask(question, max_new_tokens=2)) == spans(
        without.ask(question, max_new_tokens=2)
    ) | {fact}
    other = "What colour is the sky?"
    assert spans(with_text.ask(other, max_new_tokens=2)) == spans(without.ask(other, max_new_tokens=2))

    with_text.save(tmp_path / "s")
    model, tok = get_tiny(family)
    loaded = VideoQA.from_model(model, tok).load_session(tmp_path / "s")
    assert loaded.engine.config.retrieve == WithText(TopK(k=1), k=1)
    assert fact in spans(loaded.ask(question, max_new_tokens=2))


def test_stems_meet_across_inflections():
    # the question's form and the line's form of the same word stem alike
    pairs = [
        ("ring", "rings"),
        ("fly", "flies"),
        ("screech", "screeches"),
        ("buzz", "buzzes"),
        ("work", "works"),
    ]
    pairs += [
        ("call", "called"),
        ("cry", "crying"),
        ("march", "marches"),
        ("string", "strings"),
        ("glass", "glasses"),
    ]
    for a, b in pairs:
        assert words(a) == words(b), (a, b)
    # short words, digits and doubled s stay as they are
    assert words("bus 60 boss dogs") == {"bus", "60", "boss", "dog"}


STREET = [
    "[10.0s] A taxi goes by with the number 33 painted on its side.\n",  # 0
    "[20.0s] A cyclist waits at the crossing.\n",  # 1
    "[30.0s] A fire engine goes by with the number 60 painted on its side.\n",  # 2
    "[40.0s] A church bell rings.\n",  # 3
    "[50.0s] The florist is called Aisha.\n",  # 4
    "[60.0s] A church bell rings.\n",  # 5
    "[70.0s] A parrot steals a biscuit.\n",  # 6
    "[80.0s] Aisha works at the harbour.\n",  # 7
    "[90.0s] A crane lifts a steel beam.\n",  # 8
    "[95.0s] A cyclist crosses the street.\n",  # 9
]


def test_a_line_is_kept_only_for_new_words_or_as_a_repeat():
    """Worked by hand (N = 10 lines; idf = log(11 / (df + 0.5))): "number" and "paint" are in lines 0 and
    2 (df 2), "fire" and "engine" in line 2 only (df 1). The fire engine's line scores 2 idf(1) + 2 idf(2);
    the taxi's line adds no question word the fire engine's lacks, so with ratio > 0 it is not kept. With
    ratio 0 it is (the k best)."""
    q = "What number is painted on the fire engine?"
    assert TextMatch(k=4, ratio=0.25).select(q, STREET) == [2]
    assert TextMatch(k=4).select(q, STREET) == [2, 0]
    # a repeated line is kept however little it adds: both bells, newest first
    assert TextMatch(k=4, ratio=0.25).select("How many times did a church bell ring?", STREET) == [5, 3]
    assert TextMatch(k=1, ratio=0.25).select("How many times did a church bell ring?", STREET) == [5]
    # each event named in the question brings its own words, so every event's line is kept: the crane's
    # (3 df-1 words: crane, lift, beam), the bells' (2 df-2 words, 2 x 1.48 > 1.99), the parrot's (1 df-1
    # word: 1.99 >= 0.25 x 3 x 1.99)
    q = "Which of these came first: the parrot, the crane lifting the beam, or the church bell?"
    assert TextMatch(k=6, ratio=0.25).select(q, STREET) == [8, 5, 3, 6]
    # at ratio 0.5 neither the bells' 2.96 nor the parrot's 1.99 reach half the crane's 5.97
    assert TextMatch(k=6, ratio=0.5).select(q, STREET) == [8]


PEOPLE = [
    "[1.0s] A dog walker passes by.\n",  # 0
    "[2.0s] The florist is called Aisha.\n",  # 1
    "[3.0s] A dog barks at a pigeon.\n",  # 2
    "[4.0s] Aisha has a dog called Nala.\n",  # 3
    "[5.0s] The baker is called Tomasz.\n",  # 4
]


def test_bridges_follow_a_rare_word_of_the_best_line():
    """By hand (N = 5; idf = log(6 / (df + 0.5))): "What is the name of the florist's dog?" wants {name,
    florist, dog}. "florist" (df 1, 1.39) makes line 1 the best; the three "dog" lines (df 3, 0.54) add
    less than half of it, so at ratio 0.5 only line 1 is kept. Line 1's words outside the question are
    "call" (df 3) and "aisha" (df 2); line 3 shares them and has the missing "dog": the bridge. Line 4
    shares "call" but no missing word."""
    q = "What is the name of the florist's dog?"
    assert TextMatch(k=4, ratio=0.5).select(q, PEOPLE) == [1]
    assert TextMatch(k=4, ratio=0.5, bridges=2).select(q, PEOPLE) == [1, 3]
    assert TextMatch(k=4, ratio=0.5, bridges=1).select(q, PEOPLE) == [1, 3]  # "aisha" alone (df 2)
    assert TextMatch(k=4, ratio=0.5, bridges=0).select(q, PEOPLE) == [1]
    assert TextMatch(k=1, ratio=0.5, bridges=2).select(q, PEOPLE) == [1]  # the bridge counts against k
    # ratio 0: the k best, newest first among equals
    assert TextMatch(k=4).select(q, PEOPLE) == [1, 3, 2, 0]
    # a question the best line covers needs no bridge
    assert TextMatch(k=4, ratio=0.5, bridges=2).select("Who is the florist?", PEOPLE) == [1]


def test_neighbours_only_for_time_order_questions():
    q = "What happened just before the parrot stole a biscuit?"
    # line 6 is the best; its neighbours 5 and 7 join only because of "before"
    assert TextMatch(k=4, ratio=0.25, neighbours=1).select(q, STREET) == [6, 5, 7]
    assert TextMatch(k=4, ratio=0.25, neighbours=0).select(q, STREET) == [6]
    assert TextMatch(k=4, ratio=0.25, neighbours=1).select("Did the parrot steal a biscuit?", STREET) == [6]
    # neighbours are text blocks: the frame block between two lines is skipped
    assert TextMatch(k=4, ratio=0.25, neighbours=1).select("What came after the lifeguard?", LINES) == [4, 2]


@pytest.mark.parametrize(
    "field,value", [("ratio", 1.5), ("ratio", -0.1), ("bridges", -1), ("neighbours", 0.5)]
)
def test_bad_matching_parameters_are_config_errors(field, value):
    with pytest.raises(ConfigError, match=field):
        TextMatch(**{field: value})
    with pytest.raises(ConfigError, match=field):
        WithText(**{field: value})


def test_text_k_keeps_the_other_matching_parameters():
    preset = get_preset("videokv")
    assert isinstance(preset.retrieve, WithText) and preset.retrieve.ratio > 0
    changed = preset.with_overrides(["text_k=3"]).retrieve
    assert changed == dataclasses.replace(preset.retrieve, k=3)
    assert preset.with_overrides(["retrieve.neighbours=0"]).retrieve.neighbours == 0
