"""Assembly of a question's context: `compact` positions are contiguous and exact; evidence carries levels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import get_tiny, random_frames
from videokv import MemoryConfig, VideoQA, get_preset
from videokv.errors import VideoKVError
from videokv.memory.assemble import assemble, assemble_layer, compact_positions, distinct_tokens
from videokv.memory.block import KVBlock
from videokv.models.rope import rerotate, rotate
from videokv.policies.retrieve import TopK
from videokv.qa import question_text


def test_compact_positions_are_contiguous():
    one_d = [torch.tensor([[5, 6, 9]]), torch.tensor([[40, 41]])]
    new, end = compact_positions(one_d, 3)
    assert [p.tolist() for p in new] == [[[3, 4, 5]], [[6, 7]]] and end == 8
    frame = torch.tensor([[10, 10, 10, 10], [10, 10, 11, 11], [10, 11, 10, 11]])  # M-RoPE 2x2 frame
    text = torch.tensor([[30, 31], [30, 31], [30, 31]])
    new, end = compact_positions([frame, text], 3)
    assert torch.equal(new[0], frame - 7)  # shifted as a whole, inner (t, h, w) offsets kept
    assert new[1].tolist() == [[5, 6]] * 3 and end == 7


def test_compact_context_keys_are_recomputed_exactly():
    """With compact positions, the assembled layer-0 keys equal keys computed from scratch for the selected
    frames at contiguous positions right after the sinks (LLaVA-OV, 1-D RoPE)."""
    model, tok = get_tiny("llava_onevision")
    config = MemoryConfig(name="t", retrieve=TopK(k=2, per_layer=False), positions="compact")
    s = VideoQA.from_model(model, tok, memory=config).session()
    frames = random_frames(5)
    s.add_frames(frames)
    eng = s.engine
    with torch.no_grad():
        context, cursor, evidence = eng._retrieve(question_text("what is there?"))
    chosen = [int(round(e.t0)) for e in evidence]  # frames at t = 0, 1, 2, ...
    assert len(chosen) == 2
    ad = eng.adapter
    pieces, _, _ = ad.video_pieces(frames[chosen], np.array(chosen, dtype=float), 1.0, None, 0)
    emb = torch.cat([p.embeds for p in pieces])
    n = emb.shape[0]
    assert context.lengths()[0] == eng.n_sinks + n
    assert cursor == eng.n_sinks + n  # the question follows the blocks without a gap
    layer0 = ad.language_model.layers[0]
    with torch.no_grad():
        k = layer0.self_attn.k_proj(layer0.input_layernorm(emb))
    k = k.view(n, ad.num_kv_heads, ad.head_dim).transpose(0, 1)
    expected = rotate(k, torch.arange(eng.n_sinks, eng.n_sinks + n)[None], ad.rotary_emb)
    got = context.layers[0].keys[0, :, eng.n_sinks :]
    assert (got - expected).abs().max().item() < 1e-5


def test_compact_assembly_rotates_each_layer_as_block_by_block(family):
    """Assembly rotates all of a layer's blocks at once (and shares the angles between layers that move
    them alike): the keys equal a block-by-block re-rotation, for 1-D RoPE and M-RoPE, with layers that
    select different blocks (different offsets) and layers that select the same ones."""
    model, tok = get_tiny(family)
    rotary = VideoQA.from_model(model, tok).adapter.rotary_emb
    text_cfg = model.config.get_text_config()
    heads, dim = text_cfg.num_key_value_heads, text_cfg.hidden_size // text_cfg.num_attention_heads
    mrope = getattr(rotary, "mrope_section", None) is not None
    g = torch.Generator().manual_seed(0)
    layers, start = 3, 5
    blocks = []
    for i in range(4):
        n = 3 + i
        if mrope and i % 2 == 0:  # a 1 x 1 x n frame at time 20 + 10 i
            pos = torch.stack(
                [torch.full((n,), 20 + 10 * i), torch.zeros(n, dtype=torch.long), torch.arange(n)]
            )
        else:
            pos = torch.arange(20 + 10 * i, 20 + 10 * i + n).expand(3 if mrope else 1, -1)
        keys = [torch.randn(heads, n, dim, generator=g) for _ in range(layers)]
        values = [torch.randn(heads, n, dim, generator=g) for _ in range(layers)]
        blocks.append(KVBlock(i, i, "frame", float(i), i + 1.0, keys, values, [pos] * layers, torch.zeros(1)))
    selection = [[blocks[0], blocks[2]], [blocks[0], blocks[2]], [blocks[1], blocks[2], blocks[3]]]
    sinks = [torch.randn(1, heads, start, dim, generator=g) for _ in range(layers)]
    context, question_at = assemble(sinks, sinks, start, selection, "compact", rotary, 99)
    for layer, chosen in enumerate(selection):
        new, end = compact_positions([b.positions[layer] for b in chosen], start)
        shift = question_at - end
        expected = torch.cat(
            [rerotate(b.keys[layer], b.positions[layer], p + shift, rotary) for b, p in zip(chosen, new)],
            dim=-2,
        )
        got = context.layers[layer].keys[0, :, start:]
        assert got.shape == expected.shape
        assert (got - expected).abs().max().item() < 1e-5
        assert torch.equal(context.layers[layer].keys[0, :, :start], sinks[layer][0])


def per_head_blocks(family: str, layers: int = 2):
    """Blocks as a per-head compressor stores them: each KV head keeps its own 3 of a frame's 6 tokens
    (positions [kv_heads, P, 3]; an M-RoPE frame is 2 x 3 at time 20 + 10 i), and a text block kept whole
    (positions [P, n], the same for every head). Returns (blocks, rotary, heads, dim, mrope)."""
    model, tok = get_tiny(family)
    rotary = VideoQA.from_model(model, tok).adapter.rotary_emb
    text_cfg = model.config.get_text_config()
    heads, dim = text_cfg.num_key_value_heads, text_cfg.hidden_size // text_cfg.num_attention_heads
    mrope = getattr(rotary, "mrope_section", None) is not None
    g = torch.Generator().manual_seed(1)
    blocks = []
    for i in range(3):
        t = 20 + 10 * i
        if mrope:
            frame = torch.stack(
                [torch.full((6,), t), torch.arange(6) // 3 + t, torch.arange(6) % 3 + t]
            )  # [3, 6]: (t, h, w) of a 2 x 3 grid
        else:
            frame = torch.arange(t, t + 6)[None]
        kept = [torch.randperm(6, generator=g)[:3].sort().values for _ in range(heads)]
        pos = torch.stack([frame[:, k] for k in kept])  # [kv_heads, P, 3]
        keys = [torch.randn(heads, 3, dim, generator=g) for _ in range(layers)]
        values = [torch.randn(heads, 3, dim, generator=g) for _ in range(layers)]
        blocks.append(KVBlock(i, i, "frame", float(i), i + 1.0, keys, values, [pos] * layers, torch.zeros(1)))
    text = torch.arange(50, 54).expand(3 if mrope else 1, -1)
    keys = [torch.randn(heads, 4, dim, generator=g) for _ in range(layers)]
    values = [torch.randn(heads, 4, dim, generator=g) for _ in range(layers)]
    blocks.append(KVBlock(3, 2, "text", 2.5, 2.5, keys, values, [text] * layers, torch.zeros(1)))
    return blocks, rotary, heads, dim, mrope


def test_compact_assembly_of_per_head_blocks_compacts_each_head(family):
    """Per-head blocks under "compact": each KV head of a layer is compacted on its own by the rule the
    shared blocks follow (each head's blocks one after another from the sinks, a frame keeping its (t, h, w)
    offsets under M-RoPE), right-aligned to end just before the question; with 1-D RoPE every head gets the
    same contiguous positions (each keeps the same count). Shared text blocks are the same on every head."""
    blocks, rotary, heads, dim, mrope = per_head_blocks(family)
    start = 5
    g = torch.Generator().manual_seed(2)
    sinks = [torch.randn(1, heads, start, dim, generator=g) for _ in range(2)]
    selection = [[blocks[0], blocks[2], blocks[3]], [blocks[1], blocks[3]]]
    context, question_at = assemble(sinks, sinks, start, selection, "compact", rotary, 999)
    ends = []
    expected_layers = []
    for layer, chosen in enumerate(selection):
        per_head = []
        for h in range(heads):
            pos = [b.positions[layer][h] if b.per_head(layer) else b.positions[layer] for b in chosen]
            new, end = compact_positions(pos, start)  # the shared rule, on head h's own positions
            ends.append(end)
            per_head.append((pos, new, end))
        expected_layers.append(per_head)
    assert question_at == max(ends)
    if not mrope:  # 1-D: every head the same count, so contiguous and ending right before the question
        for layer, chosen in enumerate(selection):
            n = sum(b.tokens(layer) for b in chosen)
            assert {end for _, _, end in expected_layers[layer]} == {start + n}
    for layer, chosen in enumerate(selection):
        got = context.layers[layer].keys[0]
        assert torch.equal(got[:, :start], sinks[layer][0])
        for h, (pos, new, end) in enumerate(expected_layers[layer]):
            shift = question_at - end
            expected = torch.cat(
                [rerotate(b.keys[layer][h], p, q + shift, rotary) for b, p, q in zip(chosen, pos, new)],
                dim=-2,
            )
            assert (got[h, start:] - expected).abs().max().item() < 1e-5
        assert torch.equal(
            context.layers[layer].values[0, :, start:], torch.cat([b.values[layer] for b in chosen], 1)
        )


def test_layerwise_compact_of_per_head_blocks_puts_each_head_before_the_question(family):
    """`assemble_layer` (the layer-by-layer retrieval forward, the question fixed at `cursor`): head h's
    sinks and blocks are moved together so that its compacted blocks end right before the cursor."""
    blocks, rotary, heads, dim, mrope = per_head_blocks(family, layers=1)
    start, cursor, rows = 5, 400, 3 if mrope else 1
    g = torch.Generator().manual_seed(3)
    sink_k = torch.randn(1, heads, start, dim, generator=g)
    chosen = [blocks[0], blocks[1], blocks[3]]
    k, v = assemble_layer(sink_k, sink_k, start, chosen, 0, "compact", rotary, cursor, rows)
    sink_pos = torch.arange(start).expand(rows, -1)
    for h in range(heads):
        pos = [b.positions[0][h] if b.per_head(0) else b.positions[0] for b in chosen]
        new, end = compact_positions(pos, start)
        shift = cursor - end
        expected = torch.cat(
            [rerotate(sink_k[0, h], sink_pos, sink_pos + shift, rotary)]
            + [rerotate(b.keys[0][h], p, q + shift, rotary) for b, p, q in zip(chosen, pos, new)],
            dim=-2,
        )
        assert (k[0, h] - expected).abs().max().item() < 1e-5
    assert torch.equal(v[0, :, start:], torch.cat([b.values[0] for b in chosen], 1))


def test_distinct_tokens_of_per_head_blocks_drop_each_heads_repeats():
    """Two blocks of one unit on one layer: a later per-head block drops, head by head, the tokens an earlier
    block holds on that head; when the heads would keep different counts it is refused (what to do said)."""

    def block(index: int, pos: torch.Tensor) -> KVBlock:
        heads, n = pos.shape[0], pos.shape[-1]
        keys = [torch.arange(heads * n * 2, dtype=torch.float32).view(heads, n, 2) + 100 * index]
        return KVBlock(index, 0, "frame", 0.0, 1.0, keys, [k + 0.5 for k in keys], [pos], torch.zeros(1))

    first = block(0, torch.tensor([[[1, 2]], [[3, 4]]]))  # head 0 holds 1, 2; head 1 holds 3, 4
    second = block(1, torch.tensor([[[2, 5]], [[4, 6]]]))  # each head repeats one token
    out = distinct_tokens([first, second], 0)
    assert out[0] is first
    assert out[1].positions[0].tolist() == [[[5]], [[6]]]
    assert torch.equal(out[1].keys[0], second.keys[0][:, 1:])
    assert torch.equal(out[1].values[0], second.values[0][:, 1:])
    uneven = block(2, torch.tensor([[[2, 5]], [[7, 8]]]))  # head 0 repeats a token, head 1 none
    with pytest.raises(VideoKVError, match="per_head=false"):
        distinct_tokens([first, uneven], 0)


def test_x2l_evidence_gives_low_compression_to_top_chunks():
    model, tok = get_tiny("llava_onevision")  # one frame piece per frame (no temporal patches)
    config = get_preset("x2l").with_overrides(["retrieve.k_low=1", "retrieve.keep_ends=false"])
    s = VideoQA.from_model(model, tok, memory=config).session()
    s.add_frames(random_frames(12))
    ans = s.ask("what happens?", max_new_tokens=2)
    levels = [e.level for e in ans.evidence]
    assert levels.count("L") == 1 and levels.count("H") == 2  # 3 chunks of 4 frames
    store = s.engine.store
    h_bytes = [n for b, n in zip(store.blocks, store.nbytes_of) if b.level == "H"]
    l_bytes = [n for b, n in zip(store.blocks, store.nbytes_of) if b.level == "L"]
    assert max(h_bytes) < min(l_bytes)
    # X²L's economy: the H copies are resident, the L copies wait below (on a CPU machine: on disk)
    assert {t for b, t in zip(store.blocks, store.tier) if b.level == "H"} == {"host"}
    assert {t for b, t in zip(store.blocks, store.tier) if b.level == "L"} == {"disk"}
    assert store.resident_bytes == sum(h_bytes)


def test_length_positions_keep_keys_and_put_the_question_after_the_context():
    """Video-XL-2's placement: the stored keys untouched (as "keep"), the question at the context's length."""
    g = torch.Generator().manual_seed(5)
    layers, heads, d = 2, 2, 8
    sink_k = [torch.randn(1, heads, 3, d, generator=g) for _ in range(layers)]
    sink_v = [torch.randn(1, heads, 3, d, generator=g) for _ in range(layers)]

    def block(index: int, start: int, n: int) -> KVBlock:
        keys = [torch.randn(heads, n, d, generator=g) for _ in range(layers)]
        values = [torch.randn(heads, n, d, generator=g) for _ in range(layers)]
        positions = [torch.arange(start, start + n)[None] for _ in range(layers)]
        rkey = torch.zeros(layers, heads * d)
        return KVBlock(index, index, "frame", float(index), index + 1.0, keys, values, positions, rkey)

    blocks = [block(0, 100, 4), block(1, 900, 5)]
    selection = [blocks, blocks[1:]]  # layer 1 sees one block: the longest layer decides
    rotary = get_tiny("qwen2_vl")[0].model.language_model.rotary_emb
    kept, at_keep = assemble(sink_k, sink_v, 3, selection, "keep", rotary, 5000)
    placed, at = assemble(sink_k, sink_v, 3, selection, "length", rotary, 5000)
    assert at_keep == 5000 and at == 3 + 4 + 5
    for a, b in zip(kept.layers, placed.layers):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


def test_x2l_reads_the_first_and_last_chunks_at_low_and_asks_at_the_context_length():
    """Video-XL-2's bi-level decoding: blocks 1 and last always at full KV (with the selected ones), the
    question's positions right after the mixed cache (llava_qwen.py: position_ids from prefill_len)."""
    model, tok = get_tiny("llava_onevision")
    config = get_preset("x2l").with_overrides(
        ["retrieve.k_low=1", "retrieve.keep_ends=true", "positions=length"]
    )
    s = VideoQA.from_model(model, tok, memory=config).session()
    s.add_frames(random_frames(20))  # 5 chunks of 4 frames
    s.ask("what happens?", max_new_tokens=2)
    engine = s.engine
    catalog = engine.index.catalog()
    low_units = sorted({int(catalog.units[r]) for r in engine.retrieved[0] if catalog.levels[r] == "L"})
    chunks = sorted({int(u) for u, lv in zip(catalog.units.tolist(), catalog.levels) if lv == "L"})
    assert len(chunks) == 5 and chunks[0] in low_units and chunks[-1] in low_units
    assert 2 <= len(low_units) <= 3  # the ends plus the most relevant one (which may be an end)
    assert engine.question_at == max(engine.context_lengths) < engine.cursor
