"""The retrieval step of the paper presets (and StreamKV's guidance-prompt compression, at the end) against an
independent implementation of the reference code.

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

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import get_tiny, random_frames
from tests.policies.test_parity import mukv_reference
from videokv import VideoQA
from videokv.policies.compress.guidance import Guidance
from videokv.policies.compress.multigrain import MultiGrain
from videokv.policies.retrieve import Hierarchical, TopK
from videokv.policies.segment import Uniform
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


@dataclasses.dataclass(frozen=True)
class RecordingHierarchical(Hierarchical):
    """Hierarchical that also records the keys and similarities it scored the blocks with."""

    log: dict = dataclasses.field(default_factory=dict, compare=False)

    def similarity(self, catalog, query):
        keys, sim = super().similarity(catalog, query)
        self.log.update(keys=keys.clone(), sim=sim.clone(), catalog=catalog, query=query)
        return keys, sim


def last_layer_keys(model, engine, h: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """The last layer's keys [kv, n, d] of the tokens h [n, hidden] at positions pos [n], rotated, from a
    causal forward written out by hand (each token attends to itself and the tokens before it)."""
    cfg = model.config.get_text_config()
    theta = cfg.rope_parameters["rope_theta"]
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    d = cfg.hidden_size // heads
    group = heads // kv
    n = h.shape[0]
    mask = torch.ones(n, n, dtype=torch.bool).tril()
    layers = engine.adapter.language_model.layers
    for i, layer in enumerate(layers):
        attn = layer.self_attn
        x = layer.input_layernorm(h)
        k = rope(attn.k_proj(x).view(n, kv, d).transpose(0, 1), pos, theta)
        if i == len(layers) - 1:
            return k
        q = rope(attn.q_proj(x).view(n, heads, d).transpose(0, 1), pos, theta)
        v = attn.v_proj(x).view(n, kv, d).transpose(0, 1)
        out = F.scaled_dot_product_attention(
            q, k.repeat_interleave(group, 0), v.repeat_interleave(group, 0), attn_mask=mask
        )
        h = h + attn.o_proj(out.transpose(0, 1).reshape(n, heads * d))
        h = h + layer.mlp(layer.post_attention_layernorm(h))
    raise AssertionError("no layers")


def mukv_select(query, reprs, kinds, topk, alpha, beta, top_n):
    """MuKV `question_answering` + `_rerank_with_context` (IMBALDY/MuKV `model/mukv_rerank.py`), loop by
    loop: per granularity the 2 x topk best blocks by cosine with the query; the global context is the
    mean of the top_n coarse (segment) candidates; medium (frame) candidates re-scored with alpha, fine
    (patch) ones with beta, as (1 - w) sim + w cos(repr, context); each granularity keeps its topk."""
    sims = [float(torch.cosine_similarity(query[None], r[None], dim=1)) for r in reprs]
    cands = {}
    for g in ("patch", "frame", "segment"):
        rows = [i for i in range(len(reprs)) if kinds[i] == g]
        cands[g] = sorted(rows, key=lambda i: -sims[i])[: 2 * topk[g]]
    context = torch.stack([reprs[i] for i in cands["segment"][:top_n]]).mean(0)
    picked = list(cands["segment"][: topk["segment"]])
    for g, w in (("frame", alpha), ("patch", beta)):
        score = {
            i: (1 - w) * sims[i] + w * float(torch.cosine_similarity(reprs[i][None], context[None], dim=1))
            for i in cands[g]
        }
        picked += sorted(cands[g], key=lambda i: -score[i])[: topk[g]]
    return sorted(picked), sims


def mukv_block_range(frames, block, start: int, patches: int = 4) -> tuple[int, int]:
    """The token range, in the unit's frame pieces laid end to end, that MuKV encodes `block` from: the
    whole unit (segment), the frame piece holding it (frame), or the quarter of that frame piece holding it
    (patch: MuKV's 49-token blocks are consecutive quarters of a 196-token frame, as `tensor_split` cuts).
    start: the position the unit was laid out from (1-D RoPE); the block's first token is found by its
    position in the unit (`positions + origin`)."""
    n = sum(p.n_tokens for p in frames)
    if block.kind == "segment":
        return 0, n
    first = int(block.positions[0][0, 0]) + getattr(block, "origin", 0) - start  # (0 before origins)
    ends = torch.tensor([p.n_tokens for p in frames]).cumsum(0).tolist()
    f = next(i for i, e in enumerate(ends) if first < e)
    a, e = ends[f] - frames[f].n_tokens, ends[f]
    if block.kind == "frame":
        return a, e
    part = next(c for c in torch.arange(a, e).tensor_split(patches) if len(c) and c[0] <= first <= c[-1])
    return int(part[0]), int(part[-1]) + 1


def mukv_stream(model, tok, config, n_frames: int, seed: int):
    """A session of `config` on `n_frames` random frames, flushed: (the session, the pieces of every unit it
    ingested, in order), so that a test can re-encode a unit by hand."""
    session = VideoQA.from_model(model, tok, memory=config).session()
    engine = session.engine
    units = []
    ingest_unit = engine._ingest_unit
    engine._ingest_unit = lambda pieces: (units.append(list(pieces)), ingest_unit(pieces))[1]
    session.add_frames(random_frames(n_frames, seed=seed), fps=1.0)
    engine.flush()
    return session, units


def test_mukv_rotated_retrieval_matches_reference():
    """MuKV (IMBALDY/MuKV `model/mukv_rerank.py` `question_answering`; blocks from
    `model/mukv_dualsignal_compression.py` `_encode_granularity_chunk_with_compression`): the question is
    encoded after the init tokens and its query is the last token's last-layer key as cached (rotated at
    its position); a block's representative vector is the mean of its cached (rotated) last-layer keys, the
    block encoded after the init tokens; similarity is the cosine. Here both are redone by hand from the
    model's weights: each unit re-encoded right after the sinks, each block's vector the mean of that
    encoding's last-layer keys at the block's tokens; the question (after the lead, which videokv shows
    every question) right after the sinks."""
    model, tok = get_tiny("llava_onevision")
    k = {"patch": 3, "frame": 2, "segment": 1}
    retriever = RecordingHierarchical(k=k, over=2.0, context_top=5, alpha=0.3, rotated=True)
    config = dataclasses.replace(get_preset("mukv"), retrieve=retriever)
    assert config.retrieve.rotated == get_preset("mukv").retrieve.rotated is True
    session, units = mukv_stream(model, tok, config, 16, seed=7)
    engine = session.engine
    blocks = engine.store.blocks
    kinds = [b.kind for b in blocks]
    assert all(sum(kd == g for kd in kinds) > 2 * k[g] for g in k)  # a real choice at every granularity
    embed = model.get_input_embeddings()
    n_sinks = engine.n_sinks
    sinks = embed(torch.tensor(engine.header_ids[:n_sinks])).float()
    question = "What colour is the car at the start?"
    lead = engine.question_pieces(question)[:-1]
    with torch.no_grad():
        # blocks: each encoded on its own after the sinks (a segment is its unit; a frame, a frame piece; a
        # patch, a quarter of one); a block keeps a subset of its encoding's tokens
        reprs = []
        for b in blocks:
            frames = units[b.unit]
            a, e = mukv_block_range(frames, b, n_sinks)
            h = torch.cat([sinks, torch.cat([p.embeds.float() for p in frames])[a:e]])
            keys = last_layer_keys(model, engine, h, torch.arange(h.shape[0]))[:, n_sinks:]
            idx = b.positions[-1][0] - n_sinks  # the block's tokens start right after the sinks
            reprs.append(keys[:, idx].mean(1).reshape(-1))
        # the question: init (sinks), then the lead and the bare question, from the position after the sinks
        ids = tok(question).input_ids
        h = torch.cat([sinks, *[p.embeds.float() for p in lead], embed(torch.tensor(ids)).float()])
        query = last_layer_keys(model, engine, h, torch.arange(h.shape[0]))[:, -1].reshape(-1)
        ref_rows, ref_sims = mukv_select(query, reprs, kinds, k, 0.3, 0.3, 5)
        session.ask(question, max_new_tokens=1)
        key_diff = (retriever.log["keys"] - torch.stack(reprs)).abs().max().item()
        sim_diff = (retriever.log["sim"] - torch.tensor(ref_sims)).abs().max().item()
        assert key_diff < 1e-5, key_diff
        assert sim_diff < 1e-5, sim_diff
        assert all(rows == engine.retrieved[0] for rows in engine.retrieved)
        assert sorted(engine.retrieved[0]) == ref_rows
        # the question's position matters: probed at the stream's cursor, the same query scores otherwise
        far = torch.cat([torch.arange(n_sinks), torch.arange(n_sinks, h.shape[0]) + engine.cursor])
        moved = last_layer_keys(model, engine, h, far)[:, -1].reshape(-1)
        moved_rows, moved_sims = mukv_select(moved, reprs, kinds, k, 0.3, 0.3, 5)
        assert max(abs(a - b) for a, b in zip(moved_sims, ref_sims)) > 1e-3 and moved_rows != ref_rows
        # ...and the un-rotated option scores with other keys, and picks other rows
        catalog, probed = retriever.log["catalog"], retriever.log["query"]
        plain = dataclasses.replace(retriever, rotated=False, log={})
        assert (plain.similarity(catalog, probed)[1] - retriever.log["sim"]).abs().max().item() > 1e-3
        assert sorted(plain.select(catalog, probed)[0]) != ref_rows


@pytest.mark.parametrize(
    "compress",
    [
        None,  # the preset's MultiGrain
        MultiGrain(keep={"patch": 0.5, "frame": 0.5, "segment": 0.8}, patches=2),  # more tokens kept
    ],
    ids=["preset", "keep-half"],
)
def test_mukv_frame_and_patch_blocks_are_prefilled_alone(compress):
    """MuKV (IMBALDY/MuKV `model/mukv_dualsignal_compression.py` `_encode_granularity_chunk_with_compression`)
    encodes every block of every granularity on its own: `language_model(inputs_embeds=block_features,
    past_key_values=self.init_kv_cache)`, the 196-token frame and 49-token patch blocks as much as the
    784-token segment. Here, per stored frame and patch block, a plain transformers forward (its own SDPA) of
    [init tokens (the sinks), that frame piece / quarter alone] at positions 0..: the stored K/V are that
    forward's at the kept tokens, on every layer; and the kept tokens are MuKV's `topk(int(n keep))` of
    alpha minmax(attention) + beta minmax(FFT) from that forward's own last-layer attention (eager) and
    keys."""
    model, tok = get_tiny("llava_onevision")
    config = get_preset("mukv")
    if compress is not None:
        config = dataclasses.replace(config, compress=compress)
    mg = config.compress
    session, units = mukv_stream(model, tok, config, 8, seed=11)
    engine = session.engine
    n_sinks = engine.n_sinks
    lm = engine.adapter.language_model
    cfg = model.config.get_text_config()
    sinks = model.get_input_embeddings()(torch.tensor(engine.header_ids[:n_sinks]))
    checked = {"frame": 0, "patch": 0}
    k_diff = v_diff = 0.0
    misplaced = other_kept = 0
    saved = cfg._attn_implementation
    try:
        for row, b in enumerate(engine.store.blocks):
            if b.kind not in checked:
                continue
            frames = units[b.unit]
            a, e = mukv_block_range(frames, b, n_sinks, mg.patches)
            h = torch.cat([sinks, torch.cat([p.embeds for p in frames])[a:e]])[None]
            pos = torch.arange(h.shape[1])[None]
            with torch.no_grad():
                cfg._attn_implementation = "sdpa"
                out = lm(inputs_embeds=h, position_ids=pos, use_cache=True)
                cfg._attn_implementation = "eager"
                att = lm(inputs_embeds=h, position_ids=pos, output_attentions=True).attentions[-1][0]
            stored = engine.store.get(row)
            # the block's tokens within [a, e), known by their place in the unit (laid out after the sinks)
            idx = stored.positions[0][0] + getattr(stored, "origin", 0) - n_sinks - a
            for layer, kv in enumerate(out.past_key_values.layers):
                ref_k, ref_v = kv.keys[0][:, n_sinks:], kv.values[0][:, n_sinks:]
                k_diff = max(k_diff, (stored.keys[layer] - ref_k[:, idx]).abs().max().item())
                v_diff = max(v_diff, (stored.values[layer] - ref_v[:, idx]).abs().max().item())
                # stored at the positions of that forward: right after the sinks
                misplaced += not torch.equal(stored.positions[layer][0], idx + n_sinks)
            # the kept tokens: MuKV's score on this block's own forward (its queries, its columns)
            alpha = mg.alpha[b.kind]
            ref = mukv_reference(
                out.past_key_values.layers[-1].keys[0][:, n_sinks:],
                att[:, n_sinks:, n_sinks:],
                alpha,
                1 - alpha,
            )
            target_k = max(1, int((e - a) * mg.keep[b.kind]))
            other_kept += set(idx.tolist()) != set(sorted(range(e - a), key=lambda i: -ref[i])[:target_k])
            checked[b.kind] += 1
    finally:
        cfg._attn_implementation = saved
    assert checked == {"frame": 8, "patch": 8 * mg.patches}
    print(
        f"frame/patch blocks vs their own forward: K {k_diff:.1e}, V {v_diff:.1e}, {misplaced} misplaced, "
        f"{other_kept} with other tokens kept"
    )
    assert k_diff < 1e-5 and v_diff < 1e-5, (k_diff, v_diff)
    assert misplaced == 0 and other_kept == 0, (misplaced, other_kept)


# ---- StreamKV's guidance prompt (compression of each segment) ---------------------------------------------


@dataclasses.dataclass(frozen=True)
class RecordingGuidance(Guidance):
    """Guidance that also records, per unit, the frame scores it computed and the frames each layer kept."""

    log: list = dataclasses.field(default_factory=list, compare=False)

    def compress(self, unit):
        drafts = super().compress(unit)
        spans = [(a, b) for a, b in unit.frame_spans if b > a]
        kept = [
            {
                next(f for f, (a, b) in enumerate(spans) if a <= int(i) < b)
                for d in drafts
                for i in d.index[layer]
            }
            for layer in range(len(unit.keys))
        ]
        frames = [(int(unit.positions[0, a]), b - a) for a, b in spans]  # (first position, tokens)
        self.log.append((self.frame_scores(unit).double(), kept, frames))
        return drafts


def streamkv_guidance_scores(model, embeds, positions, past_k, past_v, n_prompt, frames, confined):
    """StreamKV's `_encode_video_chunk` for one segment, by hand: [segment | encode prompt] in one forward;
    the segment's tokens attend to the cached context and causally to themselves (`ContextManager.append`),
    the prompt's queries only to the segment and causally to the prompt (`streamkv_attention.py`: RoPE over
    the chunk's own keys, `sliding_window=n_local`; n_local = 15000 exceeds segment + prompt). Per layer:
    the prompt's mean pre-RoPE query . each frame's mean pre-RoPE key, GQA-repeated, summed over heads
    (`calculate_score`). confined=False lets the prompt see the context too (videokv before the fix).
    Returns (scores [layers, frames], the segment's rotated keys per layer [kv, n_segment, d])."""
    cfg = model.config.get_text_config()
    theta = cfg.rope_parameters["rope_theta"]
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    d = cfg.hidden_size // heads
    group = heads // kv
    h = embeds.float()
    n = h.shape[0]
    n_seg = n - n_prompt
    pos = positions[0]
    scores, seg_keys = [], []
    for layer_idx, layer in enumerate(model.model.language_model.layers):
        attn = layer.self_attn
        x = layer.input_layernorm(h)
        q = attn.q_proj(x).view(n, heads, d).transpose(0, 1)  # pre-RoPE
        k = attn.k_proj(x).view(n, kv, d).transpose(0, 1)
        v = attn.v_proj(x).view(n, kv, d).transpose(0, 1)
        qbar = q[:, n_seg:].mean(1)  # [H, d]
        row = []
        for start, length in frames:
            kbar = k[:, start : start + length].mean(1).repeat_interleave(group, 0)  # [H, d]
            row.append(float((qbar.double() * kbar.double()).sum()))
        scores.append(row)
        k_rot = rope(k, pos, theta)
        seg_keys.append(k_rot[:, :n_seg])
        past = past_k[layer_idx].shape[1]
        keys = torch.cat([past_k[layer_idx].float(), k_rot], 1).repeat_interleave(group, 0)
        values = torch.cat([past_v[layer_idx].float(), v], 1).repeat_interleave(group, 0)
        mask = torch.ones(n, past + n, dtype=torch.bool).tril(past)
        if confined:
            mask[n_seg:, :past] = False
        out = F.scaled_dot_product_attention(rope(q, pos, theta), keys, values, attn_mask=mask)
        h = h + attn.o_proj(out.transpose(0, 1).reshape(n, heads * d))
        h = h + layer.mlp(layer.post_attention_layernorm(h))
    return torch.tensor(scores, dtype=torch.float64), seg_keys


def test_guidance_matches_streamkv_prompt_attending_to_its_segment():
    """On a stream of several segments (the context before each non-empty), the guidance scores and the
    frames each layer keeps equal StreamKV's, whose encode prompt sees only the current segment (and the
    segment's summary pseudo-frame); the stream's own K/V are those of the segment seeing the context."""
    from tests.policies.test_parity import ref_cdf_num, ref_rescale, topk_set

    model, tok = get_tiny("llava_onevision")
    comp = RecordingGuidance(keep=0.6, temp=1.0)
    config = dataclasses.replace(get_preset("streamkv"), segment=Uniform(8), compress=comp)
    session = VideoQA.from_model(model, tok, memory=config).session()
    engine = session.engine
    forwards = []
    original = engine.adapter.forward

    def recording(embeds, positions, cache, logits="last"):
        past = ([la.keys[0] for la in cache.layers], [la.values[0] for la in cache.layers])
        out = original(embeds, positions, cache, logits)
        new_k = [k[0] for k in cache.new_kv()[0]]
        forwards.append((embeds, positions, past, new_k))
        return out

    engine.adapter.forward = recording
    with torch.no_grad():
        session.add_frames(random_frames(24, seed=7), fps=1.0)
        engine.flush()
    prompt = engine.adapter.text_piece(comp.prompt, 0)
    units = [f for f in forwards if torch.equal(f[0][-prompt.n_tokens :], prompt.embeds)]
    assert len(units) == len(comp.log) == 3
    assert all(f[2][0][0].shape[1] > 0 for f in units[1:])  # the context before a later segment is not empty
    worst, moved = 0.0, 0.0
    for (embeds, positions, (past_k, past_v), new_k), (got, kept, frames) in zip(units, comp.log):
        rows = [(int((positions[0] == p).nonzero()[0, 0]), n) for p, n in frames]  # in the forward
        with torch.no_grad():
            ref, seg_keys = streamkv_guidance_scores(
                model, embeds, positions, past_k, past_v, prompt.n_tokens, rows, confined=True
            )
            old, _ = streamkv_guidance_scores(
                model, embeds, positions, past_k, past_v, prompt.n_tokens, rows, confined=False
            )
        worst = max(worst, float((got - ref).abs().max()))
        assert worst < 1e-5, worst
        moved = max(moved, float((old[1:] - ref[1:]).abs().max()))
        assert torch.equal(old[0], ref[0])  # layer 0's queries come from the embeddings either way
        # the stream's K/V: the segment attends to the context as before (the prompt's K/V are dropped)
        n_seg = embeds.shape[0] - prompt.n_tokens
        kdiff = max(float((k[:, :n_seg].float() - s).abs().max()) for k, s in zip(new_k, seg_keys))
        assert kdiff < 1e-4, kdiff
        layers, n_frames = ref.shape
        nums = ref_cdf_num([ref[i].float() for i in range(layers)], int(layers * n_frames * 0.6))
        lo, hi = max(1, int(n_frames * 0.6 * 0)), min(n_frames, int(n_frames * 0.6 * 2))
        counts = [max(1, c) for c in ref_rescale(nums, lo, hi)]
        assert kept == [topk_set(ref[i].tolist(), c) for i, c in enumerate(counts)]
    assert moved > 1e-3, moved  # the check can tell: a prompt that sees the context scores otherwise
