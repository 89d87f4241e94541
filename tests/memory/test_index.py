"""The retrieval index: its catalog is the blocks' own keys and metadata, row for row, however it grew."""

from __future__ import annotations

import torch

from videokv.memory.block import KVBlock
from videokv.memory.catalog import Query
from videokv.memory.index import Index

LAYERS, HEADS, DIM = 3, 2, 4


def block(i: int, n: int, kind: str = "frame") -> KVBlock:
    g = torch.Generator().manual_seed(i)
    per_layer = [n, n, 0 if i % 7 == 3 else n]  # some blocks hold nothing at the last layer
    keys = [torch.randn(HEADS, m, DIM, generator=g) for m in per_layer]
    values = [torch.randn(HEADS, m, DIM, generator=g) for m in per_layer]
    positions = [torch.arange(m)[None] for m in per_layer]
    rkey = torch.randn(LAYERS, HEADS * DIM, generator=g)
    text = f"line {i}" if kind == "text" else ""
    return KVBlock(
        i, i // 2, kind, float(i), i + 0.5, keys, values, positions, rkey, "full", text, i % 5 == 0
    )


def test_catalog_rows_are_the_blocks_after_growth_and_rollback():
    index = Index()
    held: list[KVBlock] = []
    for step, (add, keep) in enumerate([(40, 40), (0, 25), (30, 55), (0, 3), (17, 20)]):
        for _ in range(add):
            b = block(len(held) + 100 * step, 2 + len(held) % 3, "text" if len(held) % 4 == 1 else "frame")
            index.add(b)
            held.append(b)
        index.truncate(keep)
        del held[keep:]
        cat = index.catalog()
        assert cat.n == len(index) == len(held)
        assert torch.equal(cat.rkeys, torch.stack([b.rkey for b in held]))
        assert cat.units.tolist() == [b.unit for b in held] and cat.kinds == [b.kind for b in held]
        assert cat.t0.tolist() == [b.t0 for b in held] and cat.t1.tolist() == [b.t1 for b in held]
        assert cat.pinned.tolist() == [b.pinned for b in held]
        assert cat.texts == [b.text if b.kind == "text" else None for b in held]
        present = [[k.shape[1] > 0 for k in b.keys] for b in held]
        assert (cat.present is None) == all(all(p) for p in present)
        if cat.present is not None:
            assert cat.present.tolist() == present
        rotated = [
            b.keys[-1].mean(1).reshape(-1) if b.keys[-1].shape[1] else torch.zeros(HEADS * DIM) for b in held
        ]
        assert torch.allclose(cat.rotated_keys, torch.stack(rotated))
        q = torch.randn(LAYERS, HEADS * DIM)
        want = torch.stack([torch.stack([b.rkey[la] @ q[la] for b in held]) for la in range(LAYERS)])
        got = cat.scores(Query(q=q, last_key=q))
        if cat.present is not None:
            want = want.masked_fill(~torch.tensor(present).T, float("-inf"))
        assert torch.allclose(got, want, atol=1e-5)
