"""A long prompt prefilled in chunks (Decoder.prefill_chunk, set by the server so that a 2000-character
question holds the model for a chunk at a time) gives what one forward gives: the same logits to float
rounding, the same answer tokens, and the same choice scores; and the step generators yield between chunks."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import get_tiny, random_frames
from videokv import VideoQA
from videokv.qa import drain

LONG = " ".join(["the quick brown fox jumps over a lazy dog near seven red bikes"] * 12)


@pytest.fixture(params=["full", "rekv"])
def session(request):
    s = VideoQA.from_model(*get_tiny("qwen2_vl"), memory=request.param).session(fps=2)
    s.add_frames(random_frames(8), timestamps=[i * 0.5 for i in range(8)])
    s.add_text("a red bike passes the gate", t=4.0)
    return s


def _run(steps):
    """Drain a step generator: (its return value, how many times it yielded)."""
    yields = 0
    while True:
        try:
            next(steps)
            yields += 1
        except StopIteration as stop:
            return stop.value, yields


def _prefill(session, chunk):
    engine = session.engine
    decoder = engine.decoder
    decoder.prefill_chunk = chunk
    cache = engine.cache.fork()
    (logits, cursor), yields = _run(decoder.prefill_steps(cache, engine.cursor, LONG))
    return logits, cursor, cache.lengths(), yields


def test_chunked_prefill_matches_one_forward(session):
    one, cursor, lengths, yields = _prefill(session, None)
    n = len(session.engine.adapter.tokenize(LONG))
    assert n > 100 and yields == 0
    for chunk in (1, 7, 32, 128):
        got, got_cursor, got_lengths, got_yields = _prefill(session, chunk)
        assert got_cursor == cursor and got_lengths == lengths
        assert got_yields >= -(-n // chunk) - 1  # one yield between consecutive chunks
        assert torch.allclose(got, one, atol=1e-5, rtol=0), float((got - one).abs().max())


def test_chunked_forward_all_logits(session):
    engine = session.engine
    piece = engine.decoder.question_piece(LONG, engine.cursor)
    one = engine.adapter.forward(piece.embeds, piece.positions, engine.cache.fork(), logits="all")
    engine.decoder.prefill_chunk = 16
    got = drain(engine.decoder.forward_steps(piece.embeds, piece.positions, engine.cache.fork(), "all"))
    assert got.shape == one.shape
    assert torch.allclose(got, one, atol=1e-5, rtol=0)


def _answer(session, chunk, **kw):
    session.engine.decoder.prefill_chunk = chunk
    return _run(session.ask_steps(LONG + " What is in the video?", max_new_tokens=12, logprobs=3, **kw))


def test_chunked_ask_gives_the_same_answer(session):
    base, base_yields = _answer(session, None)
    got, got_yields = _answer(session, 16)
    assert got.text == base.text
    assert [s["token_id"] for s in got.logprobs] == [s["token_id"] for s in base.logprobs]
    for a, b in zip(got.logprobs, base.logprobs):
        assert a["logprob"] == pytest.approx(b["logprob"], abs=1e-5)
    assert got_yields > base_yields  # the prefill was cut into pieces the scheduler can interleave
    assert got.stats["prompt_tokens"] == base.stats["prompt_tokens"]


def test_chunked_choices_score_the_same(session):
    choices = [LONG[:150], "a red bike", "nothing at all " * 10]
    session.engine.decoder.prefill_chunk = None
    base = session.ask("What passes the gate?", choices=choices, max_new_tokens=6)
    session.engine.decoder.prefill_chunk = 8
    got = session.ask("What passes the gate?", choices=choices, max_new_tokens=6)
    assert got.choice == base.choice
    assert got.choice_scores == pytest.approx(base.choice_scores, abs=1e-5)


def test_memory_unchanged_by_a_chunked_question(session):
    engine = session.engine
    before = (engine.cache.lengths(), engine.cursor, len(engine.blocks))
    _answer(session, 8)
    assert (engine.cache.lengths(), engine.cursor, len(engine.blocks)) == before
