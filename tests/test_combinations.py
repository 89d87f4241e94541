"""Any combination runs (issue 11.3, kvpress-style): every compressor x every retriever x every model
family, with the segmenters, ingest policies, positions and the summary policy cycled over them so that each
appears with many others, on a tiny model of each family. For each: a question's context never holds the
same stream tokens twice, the store's byte
counts are the bytes it holds (invariant 4), and questions leave the memory exactly as it was."""

from __future__ import annotations

import hashlib
import itertools

import pytest
import torch

from tests.conftest import get_tiny, random_frames
from videokv import MemoryConfig, TextEvent, VideoQA
from videokv.engine import Frame
from videokv.models.tiny import TINY_FAMILIES
from videokv.policies import registry
from videokv.policies.ingest import Independent, PrevBlocks, Window
from videokv.policies.segment import Semantic, Uniform
from videokv.policies.summary import SegmentSummary

COMPRESSORS = sorted(registry()["compress"])
RETRIEVERS = sorted(registry()["retrieve"])
SEGMENTERS = (Uniform(1), Uniform(3), Semantic(0.9, 2, 4))
INGESTS = (Window(None), Window(frames=4, batch=2), Independent(), PrevBlocks(1))
COMBOS = list(itertools.product(COMPRESSORS, RETRIEVERS))


def _positions(i: int, retriever) -> str:
    """keep / compact in turn; restart (i % 8 == 5) needs compact; every fourth "length" (Video-XL-2), where
    the retriever is not layerwise (a layerwise forward fixes the question's positions first)."""
    if i % 8 != 5 and i % 4 == 3 and not retriever.layerwise_query():
        return "length"
    return ("keep", "compact")[i % 2]


PER_HEAD = ("infinipot", "knorm", "redundancy", "value_norm")  # the compressors that can select per KV head
PER_HEAD_COMBOS = list(itertools.product(PER_HEAD, RETRIEVERS))


def _config(i: int, compress: str, retrieve: str, per_head: bool = False) -> MemoryConfig:
    retriever = registry()["retrieve"][retrieve]()
    compressor = registry()["compress"][compress](**({"per_head": True} if per_head else {}))
    return MemoryConfig(
        name=f"{compress}{'(per_head)' if per_head else ''}+{retrieve}",
        ingest=Independent(restart=True) if i % 8 == 5 else INGESTS[i % len(INGESTS)],  # 5: compact
        segment=SEGMENTERS[(i // 2) % len(SEGMENTERS)],
        compress=compressor,
        retrieve=retriever,
        positions=_positions(i, retriever),
        summary=SegmentSummary() if i % 3 == 0 else None,
    )


def _fingerprint(engine) -> list:
    """Everything a question must not change: per block its tier, bytes, metadata and K/V contents."""
    store = engine.store
    out = [len(store), list(store.tier), list(store.nbytes_of), engine.unit_tokens[:], engine.cursor]
    for r in range(len(store)):
        b = store.get(r)
        h = hashlib.sha256()
        for t in (*b.keys, *b.values, *b.positions):
            h.update(t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
        out.append((b.index, b.unit, b.kind, b.level, b.t0, b.t1, h.hexdigest()))
    return out


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize(("compress", "retrieve"), COMBOS, ids=[f"{c}-{r}" for c, r in COMBOS])
def test_every_combination_runs(compress, retrieve, family):
    i = COMBOS.index((compress, retrieve))
    check_combination(i, _config(i, compress, retrieve), family)


@pytest.mark.parametrize(
    ("compress", "retrieve"), PER_HEAD_COMBOS, ids=[f"{c}-per_head-{r}" for c, r in PER_HEAD_COMBOS]
)
def test_every_per_head_combination_runs(compress, retrieve):
    """The same checks with the compressors selecting per KV head (each head its own tokens, stored per
    head): a layer's context holds, on every head, exactly that head's distinct stream tokens."""
    i = PER_HEAD_COMBOS.index((compress, retrieve)) + 1  # another cycle of families and policies
    store = check_combination(i, _config(i, compress, retrieve, per_head=True)).store
    assert any(b.per_head(0) for b in store.blocks)  # frame blocks are stored per head


def check_combination(i: int, config: MemoryConfig, family: str | None = None):
    """Run the checks on a session of `config` (the stream chosen by `i`; the family too where none is
    given); returns its engine."""
    family = family or TINY_FAMILIES[i % len(TINY_FAMILIES)]
    model, tok = get_tiny(family)
    s = VideoQA.from_model(model, tok, memory=config).session()
    frames = [Frame(float(t), f) for t, f in enumerate(random_frames(8, seed=i))]
    lines = [
        TextEvent(2.0 * k + 0.4, 2.0 * k + 0.8, f"line {k}: the lifeguard is called Tomasz") for k in range(3)
    ]
    s.add_items(sorted([*frames, *lines], key=lambda x: x.start if isinstance(x, TextEvent) else x.t))
    s.engine.flush()
    engine = s.engine
    before = _fingerprint(engine)

    answer = s.ask("What is the lifeguard called?", max_new_tokens=2)
    assert answer.evidence, "a question over a non-empty memory attends to something"
    assert _fingerprint(engine) == before  # questions never change the memory

    # no stream token twice in a layer's context: one level per unit among the rows, and the context holds
    # exactly the distinct stream positions of the rows' blocks (overlapping granularities counted once)
    store = engine.store
    for layer, rows in enumerate(engine.retrieved):
        assert len(rows) == len(set(rows))
        levels: dict[int, set[str]] = {}
        for r in rows:
            levels.setdefault(store.blocks[r].unit, set()).add(store.blocks[r].level)
        assert all(len(v) == 1 for v in levels.values()), (
            f"layer {layer}: a unit at two levels ({config.name})"
        )
        # a token is known by its position in its unit (MuKV's frame and patch blocks, prefilled on their
        # own after the sinks, are stored at other positions: `unit_positions` maps them back); per KV head
        # where a block keeps its tokens per head (positions [kv_heads, P, n]), every head the same count
        blocks = [store.get(r) for r in rows]
        heads = blocks[0].keys[layer].shape[0] if blocks else 1
        for h in range(heads):
            cols = set()
            for b in blocks:
                pos = b.unit_positions(layer)
                cols |= {(b.unit, *c) for c in (pos[h] if pos.dim() == 3 else pos).T.tolist()}
            assert engine.context_lengths[layer] == engine.n_sinks + len(cols), (
                f"layer {layer} ({config.name})"
            )

    # invariant 4: the byte counts are the K/V bytes held, tier by tier
    held = [
        sum(t.numel() * t.element_size() for t in (*b.keys, *b.values))
        for b in map(store.get, range(len(store)))
    ]
    assert store.nbytes_of == held
    by_tier = store.bytes_by_tier()
    for tier in ("device", "host", "disk"):
        assert by_tier[tier] == sum(n for n, t in zip(held, store.tier) if t == tier)
    assert engine.memory_stats()["memory_bytes"] == by_tier["device"] + by_tier["host"]
    return engine
