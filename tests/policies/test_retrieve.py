"""Retrievers over synthetic catalogs: ReKV top-k, StreamKV layer-adaptive, MuKV hierarchical, X²L bilevel."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from videokv.errors import ConfigError
from videokv.policies.retrieve import (
    AllBlocks,
    BilevelReload,
    Catalog,
    Hierarchical,
    LayerAdaptive,
    Query,
    Recent,
    Retriever,
    TopK,
)

L, D = 3, 8


def make_catalog(rkeys, kinds=None, units=None, levels=None, t0=None, pinned=None) -> Catalog:
    n = rkeys.shape[0]
    t0 = torch.arange(n, dtype=torch.float) if t0 is None else torch.as_tensor(t0, dtype=torch.float)
    return Catalog(
        rkeys=rkeys.float(),
        kinds=kinds or ["frame"] * n,
        units=torch.arange(n) if units is None else torch.as_tensor(units),
        levels=levels or ["full"] * n,
        t0=t0,
        t1=t0 + 1,
        pinned=torch.zeros(n, dtype=torch.bool) if pinned is None else torch.as_tensor(pinned),
    )


def random_case(n: int = 20, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    rkeys = torch.randn(n, L, D, generator=g)
    t0 = torch.randperm(n, generator=g).float()  # stream time differs from row order
    cat = make_catalog(rkeys, units=t0.long(), t0=t0)
    query = Query(q=torch.randn(L, D, generator=g), last_key=torch.randn(L, D, generator=g))
    return cat, query


def stream_sorted(cat: Catalog, rows) -> list[int]:
    return sorted(rows, key=lambda r: (float(cat.t0[r]), r))


def test_topk_picks_top_k_by_inner_product_per_layer():
    cat, query = random_case()
    out = TopK(k=5).select(cat, query)
    assert len(out) == L
    for layer in range(L):
        score = [float((cat.rkeys[r, layer] * query.q[layer]).sum()) for r in range(cat.n)]
        top = sorted(range(cat.n), key=lambda r: -score[r])[:5]
        assert out[layer] == stream_sorted(cat, top)
    assert len({tuple(x) for x in out}) > 1  # layers choose differently


def test_topk_pinned_and_recent_always_included():
    cat, query = random_case()
    cat.pinned[3] = True
    out = TopK(k=4, recent=2).select(cat, query)
    newest = [r for r in range(cat.n) if int(cat.units[r]) in (18, 19)]
    for rows in out:
        assert 3 in rows and set(newest) <= set(rows)
        assert len(rows) == 4 + 1 + len(newest)
        assert rows == stream_sorted(cat, rows)


def test_topk_not_per_layer_is_identical_across_layers():
    cat, query = random_case()
    out = TopK(k=6, per_layer=False).select(cat, query)
    assert all(rows == out[0] for rows in out)
    mean = torch.stack([cat.rkeys[:, layer] @ query.q[layer] for layer in range(L)]).mean(0)
    assert out[0] == stream_sorted(cat, torch.argsort(-mean)[:6].tolist())


def test_topk_large_k_is_every_row_like_allblocks():
    cat, query = random_case()
    every = stream_sorted(cat, range(cat.n))
    assert TopK(k=cat.n + 5).select(cat, query) == [every] * L
    assert AllBlocks().select(cat, query) == [every] * L


def test_text_blocks_compete_in_topk():
    cat, query = random_case(n=6)
    cat.kinds[2] = "text"
    cat.rkeys[2] = query.q * 100  # the best match on every layer
    assert all(2 in rows for rows in TopK(k=1).select(cat, query))


def test_allblocks_takes_one_level_per_unit():
    kinds = ["frame", "frame", "frame", "frame", "text", "frame", "summary"]
    units = [0, 0, 1, 1, 1, 2, 2]
    levels = ["full", "L", "L", "H", "full", "H", "full"]
    pinned = [False, False, False, False, False, False, True]
    cat = make_catalog(torch.randn(7, L, D), kinds, units, levels, pinned=pinned)
    out = AllBlocks().select(cat, Query(torch.randn(L, D), torch.randn(L, D)))
    assert out == [[0, 2, 4, 5, 6]] * L


def test_recent_takes_newest_units():
    cat, query = random_case(n=10)
    cat.pinned[cat.units == 0] = True
    out = Recent(n=3).select(cat, query)
    rows = [r for r in range(cat.n) if int(cat.units[r]) in (0, 7, 8, 9)]
    assert out == [stream_sorted(cat, rows)] * L
    assert Recent(n=0).select(cat, query)[0] == [r for r in range(cat.n) if int(cat.units[r]) == 0]


@pytest.mark.parametrize(
    "make",
    [
        lambda: TopK(k=-1),
        lambda: TopK(recent=-1),
        lambda: Recent(n=-2),
        lambda: LayerAdaptive(k=0),
        lambda: LayerAdaptive(temp=-0.1),
        lambda: LayerAdaptive(min_k=10, max_k=5),
        lambda: Hierarchical(k={"clip": 3}),
        lambda: Hierarchical(over=0.5),
        lambda: Hierarchical(alpha=2.0),
        lambda: Hierarchical(context_top=0),
        lambda: Hierarchical(rotated="yes"),
        lambda: BilevelReload(k_low=-1),
        lambda: BilevelReload(keep_ends=1),
    ],
)
def test_parameters_are_validated(make):
    with pytest.raises(ConfigError):
        make()


def test_empty_catalog_selects_nothing():
    cat = make_catalog(torch.zeros(0, L, D))
    query = Query(torch.randn(L, D), torch.randn(L, D))
    for r in (AllBlocks(), TopK(), Recent(), LayerAdaptive(), Hierarchical(), BilevelReload()):
        assert r.select(cat, query) == [[]] * L


# ---- LayerAdaptive (StreamKV) ------------------------------------------------------------------------------


def adaptive_case(n: int = 60, layers: int = 4):
    """Layers 0 and 2: one block far above the rest (peaked). Layers 1 and 3: nearly equal scores (flat)."""
    q = torch.zeros(layers, D)
    q[:, 0] = 1.0
    rkeys = torch.zeros(n, layers, D)
    rkeys[:, :, 0] = torch.linspace(0, 1e-3, n)[:, None]
    rkeys[5, 0::2, 0] = 50.0
    rkeys[:, 0::2, 0] += torch.linspace(0, 1, n)[:, None]
    return make_catalog(rkeys), Query(q=q, last_key=q.clone())


def test_layer_adaptive_counts_sum_and_range():
    cat, query = adaptive_case()
    ret = LayerAdaptive(k=10, temp=0.5, recent=0)
    scores = cat.scores(query)
    counts = ret.budgets(list(scores))
    assert sum(counts) == 4 * 10
    assert all(5 <= c <= 15 for c in counts)
    assert counts[0] < counts[1] and counts[2] < counts[3]  # peaked layers retrieve fewer blocks
    out = ret.select(cat, query)
    assert [len(rows) for rows in out] == counts
    for layer, rows in enumerate(out):
        top = torch.argsort(-scores[layer], stable=True)[: counts[layer]].tolist()
        assert rows == sorted(top)


def test_layer_adaptive_clamp_and_recent():
    cat, query = adaptive_case()
    ret = LayerAdaptive(k=10, temp=0.5, recent=3, min_k=8, max_k=11)
    counts = ret.budgets(list(cat.scores(query)))
    assert all(8 <= c <= 11 for c in counts)
    out = ret.select(cat, query)
    for rows, c in zip(out, counts):  # StreamKV: the newest blocks count inside the layer's budget
        assert {57, 58, 59} <= set(rows) and len(rows) == c


# ---- Hierarchical (MuKV) -----------------------------------------------------------------------------------


def test_hierarchical_context_reranking_changes_the_pick():
    e = torch.eye(D)
    last = [
        e[0] + 0.5 * e[2],  # 0 frame a: most similar to the query
        e[0] + 0.6 * e[1],  # 1 frame b: a bit less similar, but agrees with the segments
        e[3],  # 2 frame c: unrelated
        e[0] + 2 * e[1],  # 3 segment s1
        e[0] + 3 * e[1],  # 4 segment s2
        -e[0],  # 5 segment s3: opposite of the query
        e[3] + 0.1 * e[0],  # 6 text: counts as a frame
        e[0] + 0.55 * e[1],  # 7 patch
    ]
    rkeys = torch.randn(len(last), L, D)
    rkeys[:, -1] = torch.stack(last)
    kinds = ["frame", "frame", "frame", "segment", "segment", "segment", "text", "patch"]
    cat = make_catalog(rkeys, kinds, t0=[7, 6, 5, 4, 3, 2, 1, 0])
    lk = torch.randn(L, D)
    lk[-1] = e[0]
    query = Query(q=torch.randn(L, D), last_key=lk)

    k = {"frame": 1, "segment": 1, "patch": 1}
    plain = Hierarchical(k=k, over=2.0, context_top=2, alpha=0.0).select(cat, query)
    assert plain[0] == [7, 3, 0]  # stream order (t0 descending in rows)
    ranked = Hierarchical(k=k, over=2.0, context_top=2, alpha=0.3).select(cat, query)
    assert ranked == [[7, 3, 1]] * L  # frame b overtakes frame a; the same rows on every layer


def test_hierarchical_context_without_segments_uses_best_candidates():
    e = torch.eye(D)
    rkeys = torch.randn(3, L, D)
    # 0: the best match (becomes the context); 1: more similar to the query than 2, but 2 agrees with 0.
    rkeys[:, -1] = torch.stack([e[0] + 0.2 * e[1], e[0] + 0.5 * e[2], e[0] + 0.6 * e[1]])
    cat = make_catalog(rkeys)
    query = Query(q=torch.randn(L, D), last_key=e[0].expand(L, D).clone())
    out = Hierarchical(k={"frame": 2}, over=1.5, context_top=1, alpha=0.0).select(cat, query)
    assert out[0] == [0, 1]
    out = Hierarchical(k={"frame": 2}, over=1.5, context_top=1, alpha=0.5).select(cat, query)
    assert out == [[0, 2]] * L


def test_hierarchical_rotated_scores_with_the_cached_keys():
    """rotated=True (MuKV): the similarity is the cosine of the question's cached last-layer key with each
    block's mean cached key (`Catalog.rotated_keys`), and the context is formed from those; the un-rotated
    keys no longer matter. Without them it refuses to guess."""
    import dataclasses

    e = torch.eye(D)
    rkeys = torch.randn(3, L, D)
    # un-rotated: row 0 matches the query; rotated: row 2 does
    rkeys[:, -1] = torch.stack([e[0], e[1], e[2]])
    rotated = torch.stack([e[3], e[1] + 0.1 * e[4], e[4]])
    cat = dataclasses.replace(make_catalog(rkeys), rotated_keys=rotated)
    lk = torch.randn(L, D)
    lk[-1] = e[0]
    query = Query(q=torch.randn(L, D), last_key=lk, rotated_key=e[4])
    assert Hierarchical(k={"frame": 1}).select(cat, query)[0] == [0]
    out = Hierarchical(k={"frame": 1}, rotated=True).select(cat, query)
    assert out == [[2]] * L
    keys, sim = Hierarchical(rotated=True).similarity(cat, query)
    assert torch.equal(keys, rotated) and torch.allclose(sim, torch.tensor([0.0, 0.1 / 1.01**0.5, 1.0]))
    with pytest.raises(ConfigError, match="cached keys"):
        Hierarchical(rotated=True).select(make_catalog(rkeys), query)
    with pytest.raises(ConfigError, match="cached keys"):
        Hierarchical(rotated=True).select(cat, Query(q=query.q, last_key=lk))


# ---- BilevelReload (Video-X²L) -----------------------------------------------------------------------------


def bilevel_case(relevance: torch.Tensor):
    """One "L" and one "H" row per unit; unit u's "L" rkey is relevance[:, u] along the query direction."""
    n_units = relevance.shape[1]
    q = torch.zeros(L, D)
    q[:, 0] = 1.0
    rows, kinds, units, levels, t0 = [], [], [], [], []
    for u in range(n_units):
        for level in ("L", "H"):
            key = torch.zeros(L, D)
            key[:, 0] = relevance[:, u] if level == "L" else 1000.0  # "H" rkeys must not matter
            rows.append(key)
            kinds.append("segment")
            units.append(u)
            levels.append(level)
            t0.append(float(u))
    rows.append(torch.zeros(L, D))  # a text block in unit 2
    kinds.append("text")
    units.append(2)
    levels.append("full")
    t0.append(2.5)
    cat = make_catalog(torch.stack(rows), kinds, units, levels, t0=t0)
    return cat, Query(q=q, last_key=q.clone())


def test_bilevel_reload_low_for_top_units_high_for_rest():
    relevance = torch.tensor([0.1, 0.9, 0.3, 0.8, 0.2]).expand(L, 5).clone()
    cat, query = bilevel_case(relevance)
    out = BilevelReload(k_low=2).select(cat, query)
    expected = [0 * 2 + 1, 1 * 2, 2 * 2 + 1, 10, 3 * 2, 4 * 2 + 1]  # H, L, H, text, L, H
    assert out == [expected] * L
    assert [cat.levels[r] for r in expected] == ["H", "L", "H", "full", "L", "H"]


def test_bilevel_reload_keep_ends_adds_the_first_and_last_units():
    relevance = torch.tensor([0.1, 0.9, 0.3, 0.8, 0.2]).expand(L, 5).clone()
    cat, query = bilevel_case(relevance)
    out = BilevelReload(k_low=2, keep_ends=True).select(cat, query)
    assert [cat.levels[r] for r in out[0]] == ["L", "L", "H", "full", "L", "L"]  # units 0 and 4 join 1 and 3
    out = BilevelReload(k_low=1, keep_ends=True).select(cat, query)
    assert [int(cat.units[r]) for r in out[0] if cat.levels[r] == "L"] == [0, 1, 4]


def test_bilevel_reload_per_layer():
    relevance = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.1, 0.9]])
    cat, query = bilevel_case(relevance)
    out = BilevelReload(k_low=1, per_layer=True).select(cat, query)
    for layer in range(L):
        low = [int(cat.units[r]) for r in out[layer] if cat.levels[r] == "L"]
        assert low == [layer]
    shared = BilevelReload(k_low=1).select(cat, query)
    assert all(rows == shared[0] for rows in shared)


def test_bilevel_reload_single_level_units_read_as_is():
    cat = make_catalog(torch.randn(3, L, D), units=[0, 1, 1], levels=["full", "L", "H"])
    out = BilevelReload(k_low=0).select(cat, Query(torch.randn(L, D), torch.randn(L, D)))
    assert out == [[0, 2]] * L


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.integers(-3, 3), min_size=1, max_size=40),  # few distinct values: many ties
    excluded=st.sets(st.integers(0, 39), max_size=10),
    k=st.integers(0, 45),
)
def test_top_masked_equals_top_rows_ties_included(values, excluded, k):
    """The vectorised top-k (TopK's path) returns exactly the rows of the reference `top_rows`, in the same
    order, whatever the ties and the excluded rows."""
    scores = torch.tensor(values, dtype=torch.float)
    excluded = sorted(r for r in excluded if r < len(values))
    candidates = [r for r in range(len(values)) if r not in excluded]
    assert Retriever.top_masked(scores, excluded, k) == Retriever.top_rows(scores, candidates, k)


def test_in_stream_order_sorts_by_time_then_row():
    catalog = make_catalog(torch.zeros(5, L, D), t0=[3.0, 1.0, 1.0, 0.0, 2.0])
    assert catalog.in_stream_order([0, 2, 1, 4, 2, 3]) == [3, 1, 2, 4, 0]
    assert catalog.in_stream_order([]) == []


def test_scores_same_for_layer_major_storage():
    """`Catalog.scores` takes a batched product when rkeys is a view of [L, N, D] storage (as the Index
    stores it): the same scores as over [N, L, D]."""
    g = torch.Generator().manual_seed(3)
    keys = torch.randn(30, L, D, generator=g)
    q = Query(q=torch.randn(L, D, generator=g), last_key=torch.zeros(L, D))
    plain = make_catalog(keys)
    stored = make_catalog(keys.permute(1, 0, 2).contiguous().permute(1, 0, 2))
    assert stored.rkeys.permute(1, 0, 2).is_contiguous() and not plain.rkeys.permute(1, 0, 2).is_contiguous()
    assert torch.allclose(stored.scores(q), plain.scores(q), atol=1e-5)
    assert torch.allclose(plain.scores(q), torch.einsum("nld,ld->ln", keys, q.q), atol=1e-5)
