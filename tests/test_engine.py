"""The engine: exact streaming (invariant 1), the window policy, all-or-nothing ingest."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import get_tiny, random_frames, sdpa
from videokv import MemoryConfig, TextEvent, VideoQA
from videokv.engine import Frame
from videokv.errors import InputError
from videokv.policies.ingest import Window
from videokv.qa import matches

QUESTION = "what colour is the umbrella?"


def stream_items(n_frames: int = 6, text_at: tuple[int, ...] = (1, 4)) -> list:
    frames = random_frames(n_frames)
    items: list = []
    for i, f in enumerate(frames):
        if i in text_at:
            items.append(TextEvent(float(i), float(i) + 0.5, f"a red umbrella number {i}"))
        items.append(Frame(float(i), f))
    return items


def streamed_logits(session, question: str = QUESTION) -> torch.Tensor:
    """First-answer-token logits of `question` against the session's context (what `ask` prefills)."""
    eng = session.engine
    pieces = eng.question_pieces(question)
    with torch.no_grad():
        out = eng.adapter.forward(
            torch.cat([p.embeds for p in pieces]),
            torch.cat([p.positions for p in pieces], dim=1),
            eng.cache.fork(),
            logits="last",
        )
    return out[-1]


def videos_of(pieces: list, frames: dict[float, np.ndarray], fpp: int) -> list[np.ndarray]:
    """The frames of each video of the layout, in order (a run of frame pieces is a video), with an odd last
    frame repeated as the processor pads it."""
    videos, current = [], []
    for p in pieces:
        if p.kind == "frame":
            times = sorted(t for t in frames if p.t0 - 1e-9 <= t < p.t1 - 1e-9)[: p.n_frames]
            current += [frames[t] for t in times]
        elif current:
            videos.append(current)
            current = []
    if current:
        videos.append(current)
    return [np.stack(v + [v[-1]] * (-len(v) % fpp)) for v in videos]


def reference_logits(session, items: list, question: str = QUESTION) -> tuple[torch.Tensor, list[int]]:
    """One ordinary HF forward (SDPA, no cache; HF computes the positions itself) over header + stream +
    question in videokv's layout, with each video's pixels: last logits and the input ids."""
    logits, ids = reference_forward(session, items, question)
    return logits[-1], ids


def reference_forward(
    session, items: list, question: str = QUESTION, continuation: list[int] = ()
) -> tuple[torch.Tensor, list[int]]:
    """`reference_logits` over header + stream + question + `continuation` ids: the logits at every
    position ([L, vocab]) and the input ids."""
    eng = session.engine
    ad = eng.adapter
    pieces = eng.trace + eng.question_pieces(question)
    ids = eng.header_ids + [i for p in pieces for i in p.token_ids] + list(continuation)
    frames = {f.t: f.image for f in items if isinstance(f, Frame)}
    videos = videos_of(pieces, frames, ad.frames_per_piece)
    kw = ad.reference_inputs(ids)
    if ad.family in ("qwen2_vl", "qwen3_vl"):
        pix = [ad.preprocessor(v) for v in videos]
        if pix:
            kw["pixel_values_videos"] = torch.cat([x for x, _ in pix])
            kw["video_grid_thw"] = torch.tensor([g for _, g in pix])
            if ad.is_qwen2_5:
                kw["second_per_grid_ts"] = torch.tensor([ad.frames_per_piece / session.fps] * len(pix))
    elif videos and ad.family == "internvl":  # frames go in as images, any number per video
        kw["pixel_values"] = torch.cat([ad.preprocessor(v) for v in videos])
    elif videos:
        assert len({len(v) for v in videos}) == 1, "LLaVA-OV takes videos of one length per batch"
        kw["pixel_values_videos"] = torch.stack([ad.preprocessor(v) for v in videos])
    with sdpa(ad.model):
        logits = ad.model(**kw).logits[0].float()
    return logits, ids


@pytest.mark.parametrize("chunk_frames", [1, 2, 3])
@pytest.mark.parametrize("n_frames", [6, 7])
def test_full_streaming_is_exact_with_interleaved_text(tiny, chunk_frames, n_frames):
    """Invariant 1 for videokv's interleaved layout: `full` fed in chunks of 1, 2, 3 frames, with timed text
    between frames and an even or odd number of frames, gives the logits of one HF forward (positions by
    HF's own rule) over the same tokens, with one video per run of frames between text events."""
    model, tok = tiny
    qa = VideoQA.from_model(model, tok, memory="full")
    # LLaVA-OV's reference forward takes videos of one length: text every 2 frames, or only before frame 0
    text_at = (1, 4)
    if qa.adapter.family == "llava_onevision":
        text_at = (2, 4) if n_frames % 2 == 0 else (0,)
    items = stream_items(n_frames, text_at)
    session = qa.session()
    session.engine.trace = []
    session.engine.ingest(items, chunk_frames=chunk_frames)
    got = streamed_logits(session)
    ref, ids = reference_logits(session, items)
    assert ids.count(qa.adapter.video_token_id) > 0
    assert (got - ref).abs().max().item() < 1e-4
    answer = session.ask(QUESTION, max_new_tokens=1, logprobs=3)  # the public API saw the same logits
    top = ref.log_softmax(-1).topk(3)
    assert [t["token_id"] for t in answer.logprobs[0]["top"]] == top.indices.tolist()
    assert answer.logprobs[0]["top"][0]["logprob"] == pytest.approx(float(top.values[0]), abs=1e-4)


def test_add_frames_in_pieces_matches_one_call(qwen):
    qa = VideoQA.from_model(*qwen)
    frames = random_frames(5)
    a = qa.session()
    a.add_frames(frames, chunk_frames=5)
    b = qa.session()
    b.add_frames(frames[:2], chunk_frames=1)
    b.add_frames(frames[2:], chunk_frames=2)
    assert a.clock == b.clock == pytest.approx(5.0)
    assert (streamed_logits(a) - streamed_logits(b)).abs().max().item() < 1e-4


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
    assert eng.frames_ingested + len(eng.pending) == 5  # an odd frame may wait for its temporal partner
    assert per_frame == eng.frame_tokens / eng.frames_ingested and per_frame > 2
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
    assert len(one.store) == len(many.store) > 5  # 4 temporal patches, 2 text events
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
    ad = eng.adapter  # a frame piece's visual tokens (Qwen2-VL: one temporal patch of 56x84 frames)
    if ad.family in ("qwen2_vl", "qwen3_vl"):
        per_piece = ad.preprocessor.tokens_per_temporal_patch(56, 84)
    elif ad.family == "internvl":  # (56 / 14)^2 patches, pixel-shuffled by 0.5 on each side
        cfg = ad.model.config
        per_piece = round((cfg.vision_config.image_size[0] / 14) ** 2 * cfg.downsample_ratio**2)
    else:
        per_piece = round(eng.tokens_per_frame)
    assert all(b.tokens(layer) == per_piece for b in summaries for layer in range(b.num_layers))
    assert not eng.index.catalog().pinned.any()
    answer = s.ask("what colour is the umbrella?", max_new_tokens=1)
    assert len(answer.evidence) == 1  # the one block TopK(k=1) picked, no summary besides it


def test_questions_never_reshape_memory(family):
    """Issue 11.5: a question asked mid-unit sees the open unit transiently (its frames are evidence), and
    units end where they would have without the question: same unit sizes, same blocks, same keys."""
    from videokv import get_preset

    model, tok = get_tiny(family)
    qa = VideoQA.from_model(model, tok, memory=get_preset("mukv"))  # 4-frame units
    frames = random_frames(16)

    def run(ask_at: int | None):
        s = qa.session()
        s.add_frames(frames[: ask_at or 16], timestamps=range(ask_at or 16), chunk_frames=1)
        answer = None
        if ask_at:
            answer = s.ask("what is there?", max_new_tokens=2)
            s.add_frames(frames[ask_at:], timestamps=range(ask_at, 16), chunk_frames=1)
        s.engine.flush()
        return s.engine, answer

    plain, _ = run(None)
    asked, answer = run(6)  # mid-unit: 4 frames closed a unit, 2 are open (Qwen2-VL: 1 patch closed, 2 open)
    assert asked.unit_tokens == plain.unit_tokens
    assert len(asked.store) == len(plain.store)
    for r in range(len(plain.store)):
        a, b = asked.store.get(r), plain.store.get(r)
        assert (a.kind, a.t0, a.t1) == (b.kind, b.t0, b.t1)
        assert all(torch.equal(ka, kb) for ka, kb in zip(a.keys, b.keys))
    assert max(e.t1 for e in answer.evidence) == pytest.approx(6.0)  # the open frames were seen


def test_independent_restart_encodes_every_unit_as_if_it_came_first():
    """MuKV's block encoding (Independent(restart=True)): a unit's stored keys and values do not depend on
    where in the stream it came: unit k of a stream equals unit 0 of a fresh stream holding only that frame
    (K/V within 1e-5, the same positions, starting right after the sinks). Without restart they differ."""
    from videokv import MemoryConfig
    from videokv.policies.ingest import Independent
    from videokv.policies.retrieve import TopK
    from videokv.policies.segment import Uniform

    model, tok = get_tiny("llava_onevision")
    frames = random_frames(5, seed=3)

    def blocks(restart: bool, fs) -> list:
        config = MemoryConfig(
            name="t",
            ingest=Independent(restart=restart),
            segment=Uniform(1),
            retrieve=TopK(k=2),
            positions="compact",
        )
        s = VideoQA.from_model(model, tok, memory=config).session()
        s.add_frames(fs, timestamps=[float(i) for i in range(len(fs))])
        s.engine.flush()
        return [s.engine.store.get(r) for r in range(len(s.engine.store))], s.engine.n_sinks

    stream, n_sinks = blocks(True, frames)
    alone, _ = blocks(True, frames[4:5])
    last, first = stream[-1], alone[0]
    assert int(last.positions[0].min()) == n_sinks
    assert all(torch.equal(a, b) for a, b in zip(last.positions, first.positions))
    for a, b in zip((*last.keys, *last.values), (*first.keys, *first.values)):
        assert torch.allclose(a, b, atol=1e-5)
    plain, _ = blocks(False, frames)
    assert int(plain[-1].positions[0].min()) > n_sinks
    assert not torch.allclose(plain[-1].keys[1], first.keys[1], atol=1e-5)


def test_restart_needs_compact_positions():
    from videokv import MemoryConfig
    from videokv.errors import ConfigError
    from videokv.policies.ingest import Independent

    with pytest.raises(ConfigError, match="compact"):
        MemoryConfig(ingest=Independent(restart=True), positions="keep")


def test_compressors_see_each_frames_token_grid(tiny):
    """The engine's frames-only unit carries every frame's raster grid (`Unit.frame_grids`), so grid-aware
    compressors (InfiniPot-V's adaptive pooling) pool in 2-D/3-D on a real stream."""
    from dataclasses import dataclass

    from videokv.policies.compress import InfiniPot, ValueNorm
    from videokv.policies.retrieve import TopK
    from videokv.policies.segment import Uniform

    seen = []

    @dataclass(frozen=True)
    class Recording(InfiniPot):
        def compress(self, unit):
            plain = ValueNorm(per_head=True).score(unit)
            pooled = ValueNorm(adaptive_pooling=True, per_head=True).score(unit)
            seen.append((unit.frame_spans, unit.frame_grids, not torch.equal(plain[0], pooled[0])))
            return super().compress(unit)

    config = MemoryConfig(
        name="grids",
        segment=Uniform(4),
        compress=Recording(0.5, adaptive_pooling=True),
        retrieve=TopK(k=4),
    )
    s = VideoQA.from_model(*tiny).session(memory=config)
    s.add_items([Frame(float(t), f) for t, f in enumerate(random_frames(8, h=112, w=112))])
    s.engine.flush()
    assert seen and len(s.engine.store) > 0
    for spans, grids, pooled_3d in seen:
        assert len(spans) == len(grids) == 4
        # layer 0: 3-D pooling over the unit's grids, where the kernel min(7, frames, rows, cols) is >= 3 (the
        # tiny Qwen's 4 x 4 grid; not the tiny LLaVA-OV's 2 x 2)
        assert pooled_3d == (min(len(spans), *grids[0]) >= 3)
        for (a, b), hw in zip(spans, grids):
            assert hw is not None and (b - a) >= hw[0] * hw[1]
            if s.engine.adapter.family in ("qwen2_vl", "llava_onevision"):  # no text written per frame
                assert (b - a) - hw[0] * hw[1] <= 1  # a video's opening token at most
