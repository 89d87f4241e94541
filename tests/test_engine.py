"""The engine: exact streaming (invariant 1), the window policy, all-or-nothing ingest."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import get_tiny, random_frames, sdpa
from videokv import MemoryConfig, TextEvent, VideoQA
from videokv.engine import Frame, format_event
from videokv.errors import InputError
from videokv.policies.ingest import Window
from videokv.qa import matches, split_template

PROBE = "\nQuestion: what colour is the umbrella?"


def stream_items(n_frames: int = 6) -> list:
    frames = random_frames(n_frames)
    items: list = []
    for i, f in enumerate(frames):
        if i in (1, 4):
            items.append(TextEvent(float(i), float(i) + 0.5, f"a red umbrella number {i}"))
        items.append(Frame(float(i), f))
    return items


def reference_probe_logits(qa: VideoQA, items: list) -> torch.Tensor:
    """One ordinary HF forward (SDPA, no cache) over header + stream + probe; logits of the probe tokens."""
    ad = qa.adapter
    header, _ = split_template(ad.tokenizer)
    pieces = [ad.text_piece(header, 0, "prompt")]
    cursor = ad.next_cursor(pieces[0])
    frames = []
    for item in items:
        if isinstance(item, Frame):
            p = ad.frame_pieces(item.image[None], np.array([item.t]), cursor)[0]
            frames.append(item.image)
        else:
            p = ad.text_piece(format_event(item), cursor, "text")
        pieces.append(p)
        cursor = ad.next_cursor(p)
    probe = ad.text_piece(PROBE, cursor)
    pieces.append(probe)
    with sdpa(ad.model):
        logits = ad.model(**ad.reference_inputs(pieces, frames)).logits[0]
    return logits[-probe.n_tokens :].float()


def streamed_probe_logits(session) -> torch.Tensor:
    eng = session.engine
    probe = eng.adapter.text_piece(PROBE, eng.cursor)
    with torch.no_grad():
        return eng.adapter.forward(probe.embeds, probe.positions, eng.cache.fork(), logits="all")


@pytest.mark.parametrize("chunk_frames", [1, 2, 4])
def test_full_streaming_is_exact(tiny, chunk_frames):
    """Invariant 1: `full` fed in chunks of 1, 2, k frames with text interleaved = one full forward."""
    qa = VideoQA.from_model(*tiny, memory="full")
    items = stream_items()
    ref = reference_probe_logits(qa, items)
    session = qa.session()
    session.engine.ingest(items, chunk_frames=chunk_frames)
    got = streamed_probe_logits(session)
    assert got.shape == ref.shape
    assert (got - ref).abs().max().item() < 1e-4


def test_add_frames_in_pieces_matches_one_call(qwen):
    qa = VideoQA.from_model(*qwen)
    frames = random_frames(5)
    a = qa.session()
    a.add_frames(frames, chunk_frames=5)
    b = qa.session()
    b.add_frames(frames[:2], chunk_frames=1)
    b.add_frames(frames[2:], chunk_frames=2)
    assert a.clock == b.clock == pytest.approx(5.0)
    assert (streamed_probe_logits(a) - streamed_probe_logits(b)).abs().max().item() < 1e-4


def test_window_keeps_sinks_and_last_n_tokens(family):
    """`window` keeps exactly the sinks + the last N tokens, at their original positions: layer-0 keys depend
    only on the token and its position, so they must equal the same tokens' keys under `full`."""
    model, tok = get_tiny(family)
    window = 23
    full = VideoQA.from_model(model, tok, memory="full").session()
    win = VideoQA.from_model(model, tok, memory=MemoryConfig(name="window", ingest=Window(window))).session()
    items = stream_items(5)
    full.engine.ingest(items, chunk_frames=2)
    win.engine.ingest(items, chunk_frames=2)
    n_sinks = win.engine.n_sinks
    total = full.engine.cache.lengths()[0]
    assert win.engine.cache.lengths() == [n_sinks + window] * len(win.engine.cache.layers)
    expected = torch.cat([torch.arange(n_sinks), torch.arange(total - window, total)])
    k_full = full.engine.cache.layers[0].keys[:, :, expected]
    assert torch.allclose(win.engine.cache.layers[0].keys, k_full, atol=1e-6)
    assert win.engine.cursor == full.engine.cursor
    ans = win.ask("what colour?", max_new_tokens=3)
    assert ans.stats["memory_tokens"] == n_sinks + window
    assert all(e.t1 > 1.0 for e in ans.evidence)  # the oldest blocks have left the window


def test_ask_leaves_memory_unchanged(qwen):
    qa = VideoQA.from_model(*qwen)
    s = qa.session()
    s.engine.ingest(stream_items(3))
    before = [k.clone() for k in (la.keys for la in s.engine.cache.layers)]
    cursor = s.engine.cursor
    streamed = []
    ans = s.ask("what colour is the umbrella?", max_new_tokens=5, on_token=streamed.append)
    assert "".join(streamed).strip() == ans.text
    s.ask("which one?", choices=["red", "blue", "green"])
    assert s.engine.cursor == cursor
    assert all(torch.equal(a, la.keys) for a, la in zip(before, s.engine.cache.layers))


def test_multiple_choice_scores_each_option(qwen):
    s = VideoQA.from_model(*qwen).session()
    s.add_text("the umbrella is red", t=0.0)
    ans = s.ask("What colour is the umbrella?", choices=["red", "blue"])
    assert ans.choice in (0, 1)
    assert len(ans.choice_scores) == 2
    assert ans.text == ["red", "blue"][ans.choice]
    free = ans.stats["free_answer"]  # the bare question answered freely first
    if ans.stats["choice_by"] == "answer text":
        assert matches(free, ans.text) and not matches(free, ["red", "blue"][1 - ans.choice])
    else:
        assert ans.choice_scores[ans.choice] == max(ans.choice_scores)


def test_choice_named_by_the_free_answer_wins_over_likelihood(qwen):
    """A tiny random model answers gibberish; an option equal to that answer is picked by name."""
    s = VideoQA.from_model(*qwen).session()
    s.add_text("the umbrella is red", t=0.0)
    free = s.ask("What colour is the umbrella?", max_new_tokens=6).text
    assert free.strip()
    options = ["zzzq", free]
    ans = s.ask("What colour is the umbrella?", choices=options, max_new_tokens=6)
    assert ans.stats["choice_by"] == "answer text" and ans.choice == 1


def test_bad_input_leaves_memory_unchanged(qwen):
    s = VideoQA.from_model(*qwen).session()
    s.add_frames(random_frames(2))
    snapshot = (s.engine.cache.lengths(), s.engine.cursor, len(s.engine.blocks), s.clock)

    def same() -> bool:
        return snapshot == (s.engine.cache.lengths(), s.engine.cursor, len(s.engine.blocks), s.clock)

    with pytest.raises(InputError, match="empty"):
        s.ask("   ")
    with pytest.raises(InputError, match=r"\[T, H, W, 3\]"):
        s.add_frames(np.zeros((2, 56, 56), dtype=np.uint8))
    with pytest.raises(InputError, match="back in time"):
        s.add_frames(random_frames(1), timestamps=[0.5])
    assert same()

    def failing():
        yield Frame(10.0, random_frames(1)[0])
        yield TextEvent(10.5, 11.0, "this text is ingested and then rolled back")
        raise InputError("corrupt frame at 11.0s")

    with pytest.raises(InputError, match="corrupt"):
        s.engine.ingest(failing(), chunk_frames=1)
    assert same()


def test_window_in_frames_follows_the_models_frame_size(family):
    model, tok = get_tiny(family)
    s = VideoQA.from_model(model, tok, memory=MemoryConfig(name="w", ingest=Window(frames=2))).session()
    s.add_frames(random_frames(5), chunk_frames=1)
    eng = s.engine
    per_frame = eng.tokens_per_frame
    assert per_frame == eng.frame_tokens / 5 and per_frame > 2
    assert eng.cache.lengths()[0] == eng.n_sinks + round(2 * per_frame)


@pytest.mark.parametrize("window", [None, 40])
def test_units_prefilled_in_batches_match_one_unit_per_forward(qwen, window):
    """Window.batch > 1 prefills several units per forward: the same blocks (spans, kinds, positions); with
    no window limit the same keys and values, and with a window each batch sees at most batch - 1 more
    units than one unit per forward would."""
    from videokv.policies.retrieve import TopK
    from videokv.policies.segment import Uniform

    def run(batch: int):
        config = MemoryConfig(
            name=f"b{batch}",
            ingest=Window(tokens=window, batch=batch),
            segment=Uniform(1),
            retrieve=TopK(k=4),
        )
        s = VideoQA.from_model(*qwen).session(memory=config)
        s.add_items(stream_items(9), chunk_frames=9)
        return s.engine

    one, many = run(1), run(4)
    assert many._batch_units == 4 and one._batch_units == 1
    assert len(one.store) == len(many.store) > 9
    for r in range(len(one.store)):
        a, b = one.store.get(r), many.store.get(r)
        assert (a.kind, a.t0, a.t1) == (b.kind, b.t0, b.t1)
        assert all(torch.equal(pa, pb) for pa, pb in zip(a.positions, b.positions))
        diff = max(float((ka - kb).abs().max()) for ka, kb in zip(a.keys, b.keys))
        if window is None:
            assert diff < 1e-4
        elif r == 0:
            assert diff < 1e-4  # the first unit sees the same context either way
    if window is not None:  # the window really cut something, and batching let later units see more
        assert one.first_kept > 0
        assert any(
            float((one.store.get(r).keys[-1] - many.store.get(r).keys[-1]).abs().max()) > 1e-4
            for r in range(len(one.store))
        )


def test_streamkv_summary_is_a_whole_block_retrieved_like_the_others(family):
    """StreamKV's summary pseudo-frame: one per unit with frames, kept whole (as many tokens as a frame on
    every layer), never pinned; with one block retrieved per layer, a question attends a summary only if
    the retriever picks it (the context does not grow by one summary per unit)."""
    import dataclasses

    from videokv import get_preset
    from videokv.policies.retrieve import TopK

    model, tok = get_tiny(family)
    config = dataclasses.replace(get_preset("streamkv"), retrieve=TopK(k=1, per_layer=False))
    s = VideoQA.from_model(model, tok, memory=config).session()
    s.add_items(stream_items(8))
    eng = s.engine
    eng.flush()
    blocks = eng.store.blocks
    summaries = [b for b in blocks if b.kind == "summary"]
    frame_units = {b.unit for b in blocks if b.kind not in ("text", "summary")}
    assert len(summaries) == len(frame_units) >= 1
    assert {b.unit for b in summaries} == frame_units
    tokens_per_frame = round(eng.tokens_per_frame)
    assert all(b.tokens(layer) == tokens_per_frame for b in summaries for layer in range(b.num_layers))
    assert not eng.index.catalog().pinned.any()
    answer = s.ask("what colour is the umbrella?", max_new_tokens=1)
    assert len(answer.evidence) == 1  # the one block TopK(k=1) picked, no summary besides it
