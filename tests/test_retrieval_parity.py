"""The retrieval step of the paper presets against an independent implementation of the reference code.

ReKV (Becomebright/ReKV `model/llava_onevision_rekv.py` `question_answering`, `model/attention/
rekv_attention.py`, `kv_cache_manager.py` `get_retrieved_kv` / `_calc_block_topk`): the bare question is
forwarded once in retrieval mode; at every layer the question's pre-RoPE queries, averaged over tokens and
heads' GQA groups, score each frame block by its mean pre-RoPE key; the top-k blocks (in stream order) follow
the init tokens, RoPE is applied over [init | retrieved | question] at contiguous positions, and the layer's
output (which the next layer's query is computed from) attends to exactly that. The reference below redoes
that loop by hand from the model's own weights (norms, projections, MLP) and the memory's stored K/V
(un-rotated
here with its own RoPE formula); it shares no code with videokv's retrieval path.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from tests.conftest import get_tiny, random_frames
from videokv import VideoQA
from videokv.policies.retrieve import TopK
from videokv.presets import get_preset


@dataclasses.dataclass(frozen=True)
class RecordingTopK(TopK):
    """TopK that also records, per layer, the scores its layer-wise queries gave every block."""

    log: dict = dataclasses.field(default_factory=dict, compare=False)

    def select_layerwise(self, catalog, forward):
        def recording(choose):
            def wrapped(layer, q):
                self.log[layer] = catalog.layer_scores(layer, q).tolist()
                return choose(layer, q)

            forward(wrapped)

        return super().select_layerwise(catalog, recording)


def rope(x: torch.Tensor, pos: torch.Tensor, theta: float) -> torch.Tensor:
    """x [..., n, d] rotated at integer positions pos [n] (the half-split RoPE of Qwen2 / Llama)."""
    d = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = pos.double()[:, None] * inv[None]
    cos, sin = torch.cat([ang.cos()] * 2, -1).float(), torch.cat([ang.sin()] * 2, -1).float()
    x1, x2 = x.chunk(2, -1)
    return x * cos + torch.cat([-x2, x1], -1) * sin


def rekv_retrieval(model, engine, k, lead_and_question, n_question: int):
    """ReKV's retrieval-mode forward, by hand: per layer, the chosen block rows (stream order) and scores.
    k: the top-k count, or choose(layer, present rows, scores) -> rows (StreamKV's per-layer rule). A layer
    holds only the blocks with tokens there (StreamKV keeps different frames per layer)."""
    cfg = model.config.get_text_config()
    theta = cfg.rope_parameters["rope_theta"]
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    d = cfg.hidden_size // heads
    lm = engine.adapter.language_model
    blocks = engine.store.blocks
    sink_len = engine.n_sinks
    sinks = (
        [la.keys[0, :, :sink_len] for la in engine.cache.layers],
        [la.values[0, :, :sink_len] for la in engine.cache.layers],
    )
    h = torch.cat([p.embeds for p in lead_and_question]).float()
    n = h.shape[0]
    chosen, all_scores = [], []
    for layer_idx, layer in enumerate(lm.layers):
        attn = layer.self_attn
        x = layer.input_layernorm(h)
        q = attn.q_proj(x).view(n, heads, d).transpose(0, 1)  # [H, n, d], pre-RoPE
        kk = attn.k_proj(x).view(n, kv, d).transpose(0, 1)
        vv = attn.v_proj(x).view(n, kv, d).transpose(0, 1)
        group = heads // kv
        qbar = q[:, -n_question:].mean(1)  # [H, d]
        scores = []
        present = [i for i, b in enumerate(blocks) if b.keys[layer_idx].shape[1]]
        for b in blocks:
            if not b.keys[layer_idx].shape[1]:
                scores.append(float("-inf"))
                continue
            unrot = rope(b.keys[layer_idx].float(), -b.positions[layer_idx][0], theta)  # [kv, t, d]
            kbar = unrot.mean(1).repeat_interleave(group, 0)  # GQA-repeated, [H, d]
            scores.append(float((qbar * kbar).sum()))
        if callable(k):
            order = k(layer_idx, present, scores)
        else:
            order = sorted(present, key=lambda i: (-scores[i], i))[:k]
        rows = sorted(order, key=lambda i: (blocks[i].t0, i))
        chosen.append(rows)
        all_scores.append(scores)
        # context: init (un-rotated) + retrieved blocks (un-rotated), then the question, RoPE from 0
        ck = [rope(sinks[0][layer_idx].float(), -torch.arange(sink_len), theta)]
        cv = [sinks[1][layer_idx].float()]
        for i in sorted(rows, key=lambda i: blocks[i].index):
            b = blocks[i]
            ck.append(rope(b.keys[layer_idx].float(), -b.positions[layer_idx][0], theta))
            cv.append(b.values[layer_idx].float())
        keys = torch.cat([*ck, kk], 1)
        values = torch.cat([*cv, vv], 1)
        total = keys.shape[1]
        keys = rope(keys, torch.arange(total), theta).repeat_interleave(group, 0)
        values = values.repeat_interleave(group, 0)
        qr = rope(q, torch.arange(total - n, total), theta)
        mask = torch.ones(n, total, dtype=torch.bool).tril(total - n)
        out = F.scaled_dot_product_attention(qr, keys, values, attn_mask=mask)
        h = h + attn.o_proj(out.transpose(0, 1).reshape(n, heads * d))
        h = h + layer.mlp(layer.post_attention_layernorm(h))
    return chosen, all_scores


def test_rekv_layerwise_retrieval_matches_reference():
    model, tok = get_tiny("llava_onevision")
    k = 4
    config = get_preset("rekv")
    config = dataclasses.replace(config, retrieve=RecordingTopK(k=k))
    session = VideoQA.from_model(model, tok, memory=config).session()
    session.add_frames(random_frames(14, seed=3), fps=1.0)
    question = "What colour is the car at the start?"
    engine = session.engine
    pieces = engine.question_pieces(question)[:-1]  # the lead (what the question sees after memory)
    bare = engine.adapter.text_piece(question, engine.adapter.next_cursor(pieces[-1]) if pieces else 0)
    with torch.no_grad():
        ref_rows, ref_scores = rekv_retrieval(model, engine, k, pieces + [bare], bare.n_tokens)
        session.ask(question, max_new_tokens=1)
    assert engine.retrieved == ref_rows
    got = config.retrieve.log
    worst = max(abs(a - b) for layer in range(len(ref_scores)) for a, b in zip(got[layer], ref_scores[layer]))
    assert worst < 1e-5, worst
    # ...and the same memory scored by a query taken from the ingest context (the pre-fix probe) would differ
    probe = VideoQA.from_model(
        model, tok, memory=dataclasses.replace(config, retrieve=TopK(k=k, layerwise=False))
    ).session()
    probe.add_frames(random_frames(14, seed=3), fps=1.0)
    with torch.no_grad():
        probe.ask(question, max_new_tokens=1)
    assert probe.engine.retrieved[0] == ref_rows[0]  # layer 0's query is the same either way
    assert probe.engine.retrieved[1:] != ref_rows[1:]


def test_streamkv_two_pass_layerwise_retrieval_matches_reference():
    """StreamKV `question_answering`: a retrieval-prefill forward of the bare question (each layer takes
    `retrieve_size` blocks: the newest `retrieve_local_size` plus the best others) records every block's
    score; `obtain_cdf_num` / `rescale_sum_match` give each layer its `retrieval_num`; a second forward
    retrieves with those counts. Blocks are frames (+ segment summaries), each layer holding its own."""
    from tests.policies.test_parity import ref_cdf_num, ref_rescale
    from videokv.policies.retrieve import LayerAdaptive

    model, tok = get_tiny("llava_onevision")
    k, temp, local = 4, 0.5, 2
    config = get_preset("streamkv")
    config = dataclasses.replace(config, retrieve=LayerAdaptive(k=k, temp=temp, recent=local, max_k=128))
    session = VideoQA.from_model(model, tok, memory=config).session()
    session.add_frames(random_frames(24, seed=5), fps=1.0)
    session.engine.flush()
    engine = session.engine
    blocks = engine.store.blocks
    assert any(b.keys[0].shape[1] != b.keys[1].shape[1] for b in blocks)  # layers hold different frames
    question = "Which way does the cyclist turn?"
    pieces = engine.question_pieces(question)[:-1]
    bare = engine.adapter.text_piece(question, engine.adapter.next_cursor(pieces[-1]) if pieces else 0)

    def calc_block_topk(count):
        def choose(layer, present, scores):
            if len(present) <= count[layer]:
                return present
            if count[layer] >= local:
                newest, others = present[-local:], present[:-local]
                best = sorted(others, key=lambda i: (-scores[i], i))[: count[layer] - local]
                return newest + best
            return present[-count[layer] :]

        return choose

    with torch.no_grad():
        n_layers = len(engine.cache.layers)
        _, first = rekv_retrieval(
            model, engine, calc_block_topk([k] * n_layers), pieces + [bare], bare.n_tokens
        )
        layer_scores = [torch.tensor([x for x in row if x != float("-inf")]) for row in first]
        nums = ref_cdf_num(layer_scores, n_layers * k)
        counts = [max(1, c) for c in ref_rescale(nums, max(k * (1 - temp), 1), min(k * (1 + temp), 128))]
        ref_rows, _ = rekv_retrieval(model, engine, calc_block_topk(counts), pieces + [bare], bare.n_tokens)
        session.ask(question, max_new_tokens=1)
    assert engine.retrieved == ref_rows
    assert all(len(rows) <= k * (1 + temp) for rows in ref_rows)
    present = [sum(1 for b in blocks if b.keys[layer].shape[1]) for layer in range(n_layers)]
    assert all(len(rows) < n for rows, n in zip(ref_rows, present))  # a real choice on every layer


def test_an_empty_question_retrieves_with_the_template_turn():
    """A likelihood with no question text (lmms-eval asks for them) queries with the chat template's question
    turn, not with whatever precedes it (the lead) nor with zero tokens."""
    model, tok = get_tiny("llava_onevision")
    config = dataclasses.replace(get_preset("rekv"), retrieve=RecordingTopK(k=2))
    session = VideoQA.from_model(model, tok, memory=config).session()
    session.add_frames(random_frames(8, seed=4), fps=1.0)
    layout = session.engine.decoder.layout
    with torch.no_grad():
        session.loglikelihood("", "a car")
        empty = dict(config.retrieve.log)
        session.loglikelihood(layout.before_question + layout.tail, "a car")
        turn = dict(config.retrieve.log)
    assert all(torch.isfinite(torch.tensor(empty[layer])).all() for layer in empty)
    assert empty == turn
