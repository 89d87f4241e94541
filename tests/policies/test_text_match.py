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
