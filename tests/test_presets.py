"""Every preset on every tiny model family (kvpress-style), and invariant 2: retrieve-all is full."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.conftest import get_tiny, random_frames
from tests.test_engine import stream_items
from videokv import PRESETS, MemoryConfig, VideoQA
from videokv.errors import ConfigError
from videokv.policies.retrieve import AllBlocks, BilevelReload, Hierarchical, Recent, TopK
from videokv.policies.retrieve.uniform import UniformSample
from videokv.presets import get_preset, resolve_memory
from videokv.qa import question_text

QUESTION = "what colour is the umbrella?"


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_ingests_and_answers(family, preset):
    qa = VideoQA.from_model(*get_tiny(family), memory=preset, frame_tokens=16)
    s = qa.session()
    s.engine.ingest(stream_items(9), chunk_frames=3)
    s.add_frames(random_frames(3, seed=2))
    ans = s.ask(QUESTION, max_new_tokens=4)
    assert isinstance(ans.text, str) and ans.evidence
    assert ans.stats["memory"] == preset and ans.stats["frames"] == 12
    mc = s.ask(QUESTION, choices=["red", "blue", "green"])
    assert mc.choice in (0, 1, 2)
    if s.engine.memory_mode:
        store = s.engine.store
        assert ans.stats["memory_bytes"] == sum(b.nbytes for b in store.blocks)  # all resident here
        assert {e.level for e in ans.evidence} <= {b.level for b in store.blocks}


def probe_logits(session) -> torch.Tensor:
    """Logits of the question prompt given what the session's memory gives a question."""
    eng = session.engine
    prompt = question_text(QUESTION)
    eng.flush()
    with torch.no_grad():
        if eng.memory_mode:
            context, cursor, _ = eng._retrieve(prompt)
        else:
            context, cursor = eng.cache.fork(), eng.cursor
        piece = eng.adapter.text_piece(prompt, cursor)
        return eng.adapter.forward(piece.embeds, piece.positions, context, logits="all")


ALL_RETRIEVERS = [
    AllBlocks(),
    TopK(k=10_000),
    TopK(k=10_000, per_layer=False),
    Recent(n=10_000),
    UniformSample(k=10_000),
    BilevelReload(k_low=10_000),
    Hierarchical(k={"patch": 10_000, "frame": 10_000, "segment": 10_000}),
]


@pytest.mark.parametrize("retriever", ALL_RETRIEVERS, ids=lambda r: type(r).__name__)
def test_retrieve_all_equals_full(family, retriever):
    """Invariant 2: any retriever asked for every block, compression off, positions kept, answers as full."""
    model, tok = get_tiny(family)
    full = VideoQA.from_model(model, tok, memory="full").session()
    mem = VideoQA.from_model(model, tok, memory=MemoryConfig(name="all", retrieve=retriever)).session()
    for s in (full, mem):
        s.engine.ingest(stream_items(6), chunk_frames=2)
    assert (probe_logits(mem) - probe_logits(full)).abs().max().item() < 1e-4
    a, b = full.ask(QUESTION, max_new_tokens=5), mem.ask(QUESTION, max_new_tokens=5)
    assert a.text == b.text


def test_memory_set_reaches_nested_parameters():
    config = resolve_memory("x2l", ["compress.high.stride=4", "compress.low=knorm", "compress.low.keep=0.25"])
    assert config.compress.high.stride == 4
    assert type(config.compress.low).__name__ == "KeyNorm" and config.compress.low.keep == 0.25
    with pytest.raises(ConfigError, match="unknown parameter 'strid' of Pool"):
        resolve_memory("x2l", ["compress.high.strid=4"])
    with pytest.raises(ConfigError, match="'stride' of Pool is not a policy"):
        resolve_memory("x2l", ["compress.high.stride.x=4"])


def test_an_override_that_does_not_apply_is_an_error():
    for overrides in (["compress=knorm"], ["compress=knorm", "compress.keep=0.5"], ["segment=semantic"]):
        with pytest.raises(ConfigError, match="does not apply to memory 'full'.*what applies"):
            resolve_memory("full", overrides)
    # ...unless the same overrides make it a memory preset (in any order)
    config = resolve_memory("full", ["compress=knorm", "retrieve=topk"])
    assert config.retrieve is not None and type(config.compress).__name__ == "KeyNorm"


def test_length_positions_need_the_whole_selection_first():
    """positions=length (Video-XL-2) puts the question after the assembled context: a layerwise retriever
    (ReKV's retrieval forward) fixes the question's positions before the context exists."""
    assert resolve_memory("x2l", ["positions=length"]).positions == "length"
    assert resolve_memory("uniform", ["positions=length"]).positions == "length"
    with pytest.raises(ConfigError, match="positions=length.*layerwise"):
        resolve_memory("rekv", ["positions=length"])
    with pytest.raises(ConfigError, match="'keep', 'compact' or 'length'"):
        resolve_memory("x2l", ["positions=middle"])


def test_bilevel_with_a_guidance_level_runs():
    """Bilevel(low=Guidance) used to raise AttributeError (the engine read `compressor.prompt`)."""
    from videokv.policies.compress import Bilevel, Pool
    from videokv.policies.compress.guidance import Guidance

    model, tok = get_tiny("llava_onevision")
    base = get_preset("x2l")
    config = dataclasses.replace(base, compress=Bilevel(low=Guidance(keep=0.5), high=Pool(stride=4)))
    s = VideoQA.from_model(model, tok, memory=config).session()
    s.add_frames(random_frames(8, seed=2), fps=1.0)
    answer = s.ask("what is shown?", max_new_tokens=2)
    levels = {b.level for b in s.engine.store.blocks}
    assert levels == {"L", "H"} and answer.stats["blocks"] == len(s.engine.store.blocks)


def test_videokv_offloaded_blocks_answer_exactly_as_resident_ones(tmp_path):
    """`videokv` keeps every block off the fastest tier (on a CPU machine: on disk) and loads only the
    retrieved ones: the same tensors as the resident memory (`compress.offload=false`), so the same logits
    and answer, with no KV bytes resident."""
    model, tok = get_tiny("qwen2_vl")
    sessions = {}
    for offload in (True, False):
        config = resolve_memory("videokv", [f"compress.offload={str(offload).lower()}"])
        config = config.replace(spill_dir=str(tmp_path / f"spill-{offload}"))
        s = VideoQA.from_model(model, tok, memory=config).session()
        s.engine.ingest(stream_items(9), chunk_frames=3)
        s.add_text("[the umbrella is red]", t=4.0)
        sessions[offload] = s
    cold, hot = sessions[True], sessions[False]
    assert cold.stats["memory_bytes"] == 0 and cold.stats["offloaded_bytes"] > 0
    assert hot.stats["memory_bytes"] == cold.stats["offloaded_bytes"] and hot.stats["offloaded_bytes"] == 0
    assert torch.equal(probe_logits(cold), probe_logits(hot))
    a, b = cold.ask(QUESTION, max_new_tokens=5), hot.ask(QUESTION, max_new_tokens=5)
    assert a.text == b.text and [(e.t0, e.t1) for e in a.evidence] == [(e.t0, e.t1) for e in b.evidence]
