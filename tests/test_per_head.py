"""Per-head selection stored in memory (kvpress KnormPress, InfiniPot-V TaR / VaN keep tokens per KV head).

The reference is kvpress's way, written out here on a plain transformers forward: one forward of the header
and the stream (SDPA) gives a DynamicCache; per layer and KV head, each memory unit's frame tokens are
scored by ``-||k||`` (``KnormPress.score``) and the top ``n_kept = int(n * (1 - compression_ratio))`` are
gathered along the sequence (``ScorerPress.compress``: ``keys.gather(2, indices)``, in top-k order); the
question is then run against that cache at its original positions. It shares no code with videokv's
compression, storage or assembly.
"""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from tests.conftest import get_tiny, random_frames, sdpa
from tests.test_engine import videos_of
from videokv import MemoryConfig, VideoQA
from videokv.engine import Frame
from videokv.models.rope import rotate
from videokv.policies.compress import InfiniPot, KeyNorm, Redundancy, ValueNorm
from videokv.policies.retrieve import AllBlocks
from videokv.policies.segment import Uniform
from videokv.qa import question_text

QUESTION = "what colour is the umbrella?"
KEEP = 0.3  # kvpress compression_ratio 0.7
FRAMES_PER_UNIT = 4  # 16 frame tokens per unit on the tiny LLaVA-OV: 4 kept per head


def frames_of(n: int, seed: int = 0) -> list[Frame]:
    return [Frame(float(i), f) for i, f in enumerate(random_frames(n, seed=seed))]


def per_head_qa(model, tok, compress=None, positions: str = "keep") -> VideoQA:
    """A VideoQA whose memory keeps per-head selections, every block attended (AllBlocks), the ingest
    context whole (each unit sees the whole stream before it, as the plain forward does)."""
    config = MemoryConfig(
        name="per-head",
        segment=Uniform(frames=FRAMES_PER_UNIT),
        compress=compress if compress is not None else KeyNorm(KEEP, per_head=True),
        retrieve=AllBlocks(),
        positions=positions,
    )
    return VideoQA.from_model(model, tok, memory=config)


def session_logits(session, question: str = QUESTION) -> torch.Tensor:
    """First-answer-token logits of `question` as `ask` prefills it (its context, its lead, its prompt)."""
    eng = session.engine
    prompt = question_text(question)
    with torch.no_grad():
        context, cursor, _, lead = eng._question_context(prompt, question)
        logits, _ = eng.decoder.prefill(context, cursor, prompt, lead)
    return logits.float()


def knorm_reference(model, tok, items: list[Frame], keep: float) -> dict:
    """kvpress's KnormPress per head on a plain transformers forward of the stream, by hand.

    One HF forward (SDPA) of header + stream + what the question prefills (the video's closing newline, the
    question turn: the processor's video ends with it, so the stream cannot be forwarded without it) gives
    the DynamicCache and the embeddings HF built; the stream's prefix of the cache (causal: it does not see
    what follows) is compressed per layer and KV head, unit by unit; the question's embeddings then run
    against it at their original positions. Returns the first-answer-token logits, the kept token indices
    per (unit, layer, head) (sorted, into the token sequence), the stream's length and the plain K/V."""
    full = VideoQA.from_model(model, tok, memory="full").session()
    eng = full.engine
    eng.trace = []
    eng.ingest(items)
    ad = eng.adapter
    assert ad.family == "llava_onevision"  # 1-D RoPE: a token's position is its index in the sequence
    pieces = eng.trace
    ids = eng.header_ids + [i for p in pieces for i in p.token_ids]
    question_pieces = eng.question_pieces(QUESTION)
    question_ids = [i for p in question_pieces for i in p.token_ids]
    videos = videos_of(pieces + question_pieces, {f.t: f.image for f in items}, ad.frames_per_piece)
    kw = ad.reference_inputs(ids + question_ids)
    kw["pixel_values_videos"] = torch.stack([ad.preprocessor(v) for v in videos])
    # the memory units: FRAMES_PER_UNIT frame pieces each; every other stream token is kept whole
    units, start, frames_seen = [], len(eng.header_ids), 0
    for p in pieces:
        if p.kind == "frame":
            if frames_seen % FRAMES_PER_UNIT == 0:
                units.append([])
            units[-1] += list(range(start, start + p.n_tokens))
            frames_seen += 1
        start += p.n_tokens
    in_unit = {t for u in units for t in u}
    whole = [t for t in range(len(ids)) if t not in in_unit]
    embeds = {}

    def grab(module, args, kwargs):
        embeds.setdefault("all", kwargs["inputs_embeds"][0])

    n = len(ids)
    with sdpa(model):
        hook = model.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
        try:
            cache = model(**kw, use_cache=True).cache
        finally:
            hook.remove()
        plain = [(la.keys[0, :, :n].clone(), la.values[0, :, :n].clone()) for la in cache.layers]
        kept: dict[tuple[int, int, int], list[int]] = {}
        compressed = DynamicCache()
        for layer, (k, v) in enumerate(plain):  # [kv, N, d]
            gathered = []
            for u, tokens in enumerate(units):
                n_kept = int(len(tokens) * keep)
                scores = -k[:, tokens].norm(dim=-1)  # [kv, n]: KnormPress.score
                top = scores.topk(n_kept, dim=-1).indices  # ScorerPress: top n_kept per KV head
                index = torch.tensor(tokens)[top]  # [kv, n_kept] into the sequence, in top-k order
                for h in range(index.shape[0]):
                    kept[u, layer, h] = sorted(index[h].tolist())
                gathered.append(index)
            index = torch.cat([torch.tensor(whole).expand(k.shape[0], -1), *gathered], dim=1)
            gather = index[:, :, None].expand(-1, -1, k.shape[-1])
            compressed.update(k.gather(1, gather)[None], v.gather(1, gather)[None], layer)
        positions = torch.arange(n, n + len(question_ids))[None]
        logits = model(
            inputs_embeds=embeds["all"][None, n:], position_ids=positions, cache=compressed
        ).logits[0, -1]
    return {"logits": logits.float(), "kept": kept, "tokens": n, "units": len(units), "plain": plain}


@pytest.fixture(scope="module")
def knorm_case():
    model, tok = get_tiny("llava_onevision")
    items = frames_of(12)
    qa = per_head_qa(model, tok)
    session = qa.session()
    session.engine.ingest(items)
    session.engine.flush()
    return qa, session, knorm_reference(model, tok, items, KEEP)


def test_per_head_knorm_answers_as_kvpress_on_a_plain_forward(knorm_case):
    """The session's first-token logits equal kvpress KnormPress's on a plain transformers DynamicCache,
    and the public `ask` picks the reference's top tokens."""
    _, session, ref = knorm_case
    assert session.engine.cursor == ref["tokens"]  # the question starts where the plain forward ended
    got = session_logits(session)
    diff = (got - ref["logits"]).abs().max().item()
    assert diff < 1e-5, diff
    answer = session.ask(QUESTION, max_new_tokens=1, logprobs=3)
    top = ref["logits"].log_softmax(-1).topk(3)
    assert [t["token_id"] for t in answer.logprobs[0]["top"]] == top.indices.tolist()


def test_per_head_blocks_keep_kvpress_top_n_per_head(knorm_case):
    """Every frame block holds, per layer and KV head, exactly the reference's top-n tokens (its positions
    are the tokens' indices in the stream under 1-D RoPE), and the heads differ somewhere (a real per-head
    selection, not one set repeated)."""
    _, session, ref = knorm_case
    blocks = [b for b in session.engine.store.blocks if b.kind != "text"]
    assert len(blocks) == ref["units"]
    differ = False
    for u, b in enumerate(blocks):
        for layer in range(b.num_layers):
            pos = b.positions[layer]
            assert pos.dim() == 3 and pos.shape[0] == b.keys[layer].shape[0]  # [kv_heads, P, n]
            for h in range(pos.shape[0]):
                assert pos[h, 0].tolist() == ref["kept"][u, layer, h]
            differ |= any(ref["kept"][u, layer, h] != ref["kept"][u, layer, 0] for h in range(pos.shape[0]))
    assert differ
    store = session.engine.store
    assert store.n_tokens == sum(b.tokens() for b in store.blocks)  # a head's count, not heads x count
    assert store.bytes_by_tier()["host"] == sum(b.nbytes for b in store.blocks)


def test_per_head_stored_keys_are_the_plain_forwards(knorm_case):
    """Each head's stored K/V are the plain forward's K/V of that head at its kept tokens, in stream order."""
    _, session, ref = knorm_case
    blocks = [b for b in session.engine.store.blocks if b.kind != "text"]
    worst = 0.0
    for layer, (k, v) in enumerate(ref["plain"]):
        for u, b in enumerate(blocks):
            for h in range(k.shape[0]):
                tokens = ref["kept"][u, layer, h]
                worst = max(
                    worst,
                    (b.keys[layer][h] - k[h, tokens]).abs().max().item(),
                    (b.values[layer][h] - v[h, tokens]).abs().max().item(),
                )
    assert worst < 1e-5, worst


def test_per_head_session_save_load_round_trip(knorm_case, tmp_path):
    """A saved and loaded per-head session holds bit-identical blocks (K/V, per-head positions, retrieval
    keys) and answers exactly as before."""
    qa, session, _ = knorm_case
    before = session_logits(session)
    session.save(tmp_path / "s")
    loaded = qa.load_session(tmp_path / "s")
    a, b = session.engine.store.blocks, loaded.engine.store.blocks
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for name in ("keys", "values", "positions"):
            for s, t in zip(getattr(x, name), getattr(y, name)):
                assert s.shape == t.shape and s.dtype == t.dtype and torch.equal(s, t)
        assert torch.equal(x.rkey, y.rkey)
    assert torch.equal(session_logits(loaded), before)
    assert loaded.ask(QUESTION, max_new_tokens=4).text == session.ask(QUESTION, max_new_tokens=4).text


@pytest.mark.parametrize(
    "compress",
    [
        ValueNorm(0.4, per_head=True),
        Redundancy(0.4, per_head=True),
        InfiniPot(0.4, per_head=True),
    ],
    ids=lambda c: type(c).__name__,
)
def test_every_per_head_compressor_runs_through_a_session(family, compress):
    """InfiniPot-V's per-head TaR / VaN (and their combination) store and answer, with positions kept and
    compacted, on both model families."""
    model, tok = get_tiny(family)
    for positions in ("keep", "compact"):
        s = per_head_qa(model, tok, compress, positions).session()
        s.add_frames(random_frames(8, seed=4))
        ans = s.ask(QUESTION, max_new_tokens=2)
        assert isinstance(ans.text, str) and ans.evidence
        frame_blocks = [b for b in s.engine.store.blocks if b.kind != "text"]
        assert frame_blocks and all(b.per_head(layer) for b in frame_blocks for layer in range(b.num_layers))


def test_journal_round_trip_of_a_per_head_session(tmp_path):
    """The journal (durability) writes per-head blocks and reads them back bit-identical."""
    from videokv.journal import Journal

    model, tok = get_tiny("qwen2_vl")
    qa = per_head_qa(model, tok, positions="compact")
    session = qa.session()
    session.add_frames(random_frames(6, seed=2))
    journal = Journal(tmp_path / "j")
    journal.commit(session, {})
    loaded = journal.load(qa)
    for x, y in zip(session.engine.store.blocks, loaded.engine.store.blocks, strict=True):
        for s, t in zip(x.positions, y.positions):
            assert s.dim() == 3 and torch.equal(s, t)
        assert all(torch.equal(s, t) for s, t in zip(x.keys, y.keys))
    assert torch.equal(session_logits(loaded), session_logits(session))


def test_per_head_compact_context_is_each_heads_tokens_at_contiguous_positions(knorm_case):
    """positions="compact" with per-head blocks (LLaVA-OV, 1-D RoPE): on layer 0, head h's assembled keys
    are the keys computed from scratch for the tokens head h kept, in stream order, at the contiguous
    positions right after the sinks, and the question follows them without a gap."""
    _, _, ref = knorm_case  # the kept tokens do not depend on the positions policy
    model, tok = get_tiny("llava_onevision")
    qa = per_head_qa(model, tok, positions="compact")
    s = qa.session()
    items = frames_of(12)
    s.engine.ingest(items)
    s.engine.flush()
    eng = s.engine
    full = VideoQA.from_model(model, tok, memory="full").session()
    full.engine.trace = []
    full.engine.ingest(items)
    stream = torch.cat([p.embeds for p in full.engine.trace])  # token i of the stream at row i - header
    prompt = question_text(QUESTION)
    with torch.no_grad():
        context, cursor, _ = eng._retrieve(prompt, QUESTION)
    ad = eng.adapter
    layer0 = ad.language_model.layers[0]
    n_sinks = eng.n_sinks
    worst = 0.0
    for h in range(ad.num_kv_heads):
        tokens = sorted(t for u in range(ref["units"]) for t in ref["kept"][u, 0, h])
        emb = stream[[t - eng.header_tokens for t in tokens]]
        with torch.no_grad():
            k = layer0.self_attn.k_proj(layer0.input_layernorm(emb)).view(len(tokens), ad.num_kv_heads, -1)
        n = len(tokens)
        expected = rotate(k[:, h], torch.arange(n_sinks, n_sinks + n)[None], ad.rotary_emb)
        got = context.layers[0].keys[0, h, n_sinks:]
        assert got.shape == expected.shape
        worst = max(worst, (got - expected).abs().max().item())
        assert cursor == n_sinks + n  # every head holds the same count; the question follows them
    assert worst < 1e-5, worst


def test_per_head_retrieval_keys_unrotate_each_head_at_its_positions(knorm_case):
    """A per-head block's retrieval key is, per layer and head, the mean of that head's kept keys un-rotated
    at that head's own positions (RoPE written out by hand, 1-D)."""
    from tests.test_retrieval_parity import rope

    _, session, _ = knorm_case
    theta = session.engine.adapter.model.config.get_text_config().rope_parameters["rope_theta"]
    worst = 0.0
    for b in (b for b in session.engine.store.blocks if b.kind != "text"):
        for layer in range(b.num_layers):
            heads = [
                rope(b.keys[layer][h].float(), -b.positions[layer][h, 0], theta).mean(0)
                for h in range(b.keys[layer].shape[0])
            ]
            worst = max(worst, (b.rkey[layer] - torch.cat(heads)).abs().max().item())
    assert worst < 1e-5, worst


def test_per_head_blocks_spill_to_disk_and_answer_the_same(knorm_case):
    """Under a host budget of one block the older per-head blocks wait on disk (their per-head positions in
    RAM, their K/V in spill files) and are read back for the question: the same logits, bit for bit."""
    qa, session, _ = knorm_case
    one = max(session.engine.store.nbytes_of)
    spilled = VideoQA.from_model(
        qa.adapter.model, qa.adapter.tokenizer, memory=qa.memory.replace(host_bytes=one)
    )
    s = spilled.session()
    s.engine.ingest(frames_of(12))
    s.engine.flush()
    store = s.engine.store
    assert "disk" in store.tier and store.resident_bytes <= one
    assert store.bytes_by_tier() == {
        t: sum(n for n, u in zip(store.nbytes_of, store.tier) if u == t) for t in ("device", "host", "disk")
    }
    assert torch.equal(session_logits(s), session_logits(session))
