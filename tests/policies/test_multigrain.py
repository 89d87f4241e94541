"""MultiGrain (MuKV): drafts at three granularities, each sub-block dual-signal compressed on its own."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import get_tiny, random_frames
from videokv import VideoQA, get_preset
from videokv.errors import ConfigError, VideoKVError
from videokv.models.base import Piece
from videokv.policies.base import Unit, budget, keep_top
from videokv.policies.compress import DualSignal
from videokv.policies.compress.multigrain import MultiGrain, raster_slices

QUESTION = "what colour is the umbrella?"


def make_unit(
    frame_sizes=(8, 8, 8, 8),
    layers: int = 2,
    heads: int = 2,
    dim: int = 8,
    seed: int = 0,
    attention: torch.Tensor | None = None,
) -> Unit:
    """A frames-only unit with random K/V and (unless given) a random self-attention."""
    g = torch.Generator().manual_seed(seed)
    n = sum(frame_sizes)
    positions = torch.stack([torch.arange(n) + 100 * r for r in range(3)])
    pieces, spans, start = [], [], 0
    for i, size in enumerate(frame_sizes):
        end = start + size
        pieces.append(Piece(torch.zeros(size, 4), positions[:, start:end], "frame", 2.0 * i, 2.0 * i + 1))
        spans.append((start, end))
        start = end
    keys = [torch.randn(heads, n, dim, generator=g) for _ in range(layers)]
    values = [torch.randn(heads, n, dim, generator=g) for _ in range(layers)]
    if attention is None:
        attention = torch.softmax(torch.randn(4, n, n, generator=g), dim=-1)
    return Unit(pieces, keys, values, positions, spans, {"self": attention})


def by_kind(drafts) -> dict[str, list]:
    out: dict[str, list] = {"patch": [], "frame": [], "segment": []}
    for d in drafts:
        out[d.kind].append(d)
    return out


def sub_block_bounds(unit: Unit, patches: int) -> dict[str, list[tuple[int, int]]]:
    """The expected (start, end) of every sub-block, recomputed here."""
    frames = unit.frame_spans
    return {
        "segment": [(0, unit.n_tokens)],
        "frame": list(frames),
        "patch": [s for a, b in frames for s in raster_slices(a, b, patches)],
    }


# ---- the draft contract ------------------------------------------------------------------------------------


def test_drafts_of_each_granularity_with_budgets():
    unit = make_unit()
    mg = MultiGrain(alone=False)
    drafts = mg.compress(unit)
    kinds = by_kind(drafts)
    assert [len(kinds[g]) for g in ("segment", "frame", "patch")] == [1, 4, 16]
    bounds = sub_block_bounds(unit, 4)
    assert bounds["patch"][:4] == [(0, 2), (2, 4), (4, 6), (6, 8)]
    for g, blocks in kinds.items():
        for d, (a, b) in zip(blocks, bounds[g]):
            assert d.level == "full" and len(d.index) == len(unit.keys)
            idx = d.index[0]
            assert all(torch.equal(i, idx) for i in d.index)  # the same tokens on every layer
            assert idx.dtype == torch.long and idx.tolist() == sorted(set(idx.tolist()))
            assert a <= int(idx.min()) and int(idx.max()) < b
            assert idx.numel() == budget(b - a, mg.keep[g], "floor")
    assert (kinds["segment"][0].t0, kinds["segment"][0].t1) == (unit.t0, unit.t1)
    for i, p in enumerate(unit.pieces):
        assert (kinds["frame"][i].t0, kinds["frame"][i].t1) == (p.t0, p.t1)
        for d in kinds["patch"][4 * i : 4 * i + 4]:
            assert (d.t0, d.t1) == (p.t0, p.t1)  # a patch has its frame's times


@settings(max_examples=40, deadline=None)
@given(
    frame_sizes=st.lists(st.integers(1, 11), min_size=1, max_size=4),
    patches=st.integers(1, 5),
    keep=st.sampled_from([0.1, 0.5, 1.0, 1, 3]),
    grains=st.sampled_from([("patch", "frame", "segment"), ("segment",), ("frame", "patch")]),
    frequency=st.sampled_from(["fft", "diff"]),
)
def test_sub_blocks_and_budgets_property(frame_sizes, patches, keep, grains, frequency):
    unit = make_unit(tuple(frame_sizes), seed=len(frame_sizes) * 7 + patches)
    mg = MultiGrain(
        keep={g: keep for g in grains},
        patches=patches,
        granularities=grains,
        frequency=frequency,
        alone=False,
    )
    kinds = by_kind(mg.compress(unit))
    bounds = sub_block_bounds(unit, patches)
    for g in ("patch", "frame", "segment"):
        expected = bounds[g] if g in grains else []
        assert len(kinds[g]) == len(expected)
        for d, (a, b) in zip(kinds[g], expected):
            idx = d.index[0]
            assert a <= int(idx.min()) and int(idx.max()) < b
            assert idx.numel() == budget(b - a, keep, "floor")
    # the patches of a frame tile it exactly, as consecutive raster slices of near-equal size
    for a, b in unit.frame_spans:
        cuts = raster_slices(a, b, patches)
        assert cuts[0][0] == a and cuts[-1][1] == b
        assert all(x[1] == y[0] for x, y in zip(cuts, cuts[1:]))
        assert max(e - s for s, e in cuts) - min(e - s for s, e in cuts) <= 1
        assert len(cuts) == min(patches, b - a)


def block_attention(n: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention whose within-block ranking (by `inside`) is the reverse of its whole-unit ranking.

    A[h, i, j] = inside[j] when i and j lie in the same `size`-token block, else 100 * (n - inside[j]): the
    attention token j receives from its own block is size * inside[j], but from the whole unit it is
    dominated by the outside term, which ranks the tokens the other way round."""
    inside = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).double() + 1
    block = torch.arange(n) // size
    same = block[:, None] == block[None, :]
    a = torch.where(same, inside[None, :].expand(n, n), 100.0 * (n - inside[None, :]).expand(n, n))
    return torch.stack([a, a]), inside


@pytest.mark.parametrize(
    ("grain", "size", "keep"), [("patch", 2, 0.5), ("frame", 8, 0.25), ("segment", 32, 0.25)]
)
def test_alpha_one_keeps_most_attended_within_sub_block(grain, size, keep):
    n = 32
    attention, inside = block_attention(n, size, seed=size)
    unit = make_unit(attention=attention)
    mg = MultiGrain(keep={grain: keep}, alpha={grain: 1.0}, granularities=(grain,), alone=False)
    drafts = mg.compress(unit)
    assert len(drafts) == n // size
    for j, d in enumerate(drafts):
        a, b = j * size, (j + 1) * size
        k = budget(size, keep, "floor")
        expected = (torch.argsort(-inside[a:b])[:k] + a).sort().values
        assert d.index[0].tolist() == expected.tolist()
        if grain != "segment":  # the whole-unit attention would have kept the least attended instead
            reverse = (torch.argsort(inside[a:b])[:k] + a).sort().values
            assert d.index[0].tolist() != reverse.tolist()


def test_each_sub_block_scored_like_dual_signal_on_its_own_tokens():
    """Random attention and keys: every draft equals DualSignal on a unit holding only that sub-block."""
    unit = make_unit(seed=3)
    mg = MultiGrain(alone=False)
    kinds = by_kind(mg.compress(unit))
    bounds = sub_block_bounds(unit, 4)
    for g in ("patch", "frame", "segment"):
        ds = DualSignal(keep=mg.keep[g], alpha=mg.alpha[g], beta=1 - mg.alpha[g])
        for d, (a, b) in zip(kinds[g], bounds[g]):
            piece = Piece(torch.zeros(b - a, 4), unit.positions[:, a:b], "frame", d.t0, d.t1)
            sub = Unit(
                [piece],
                [k[:, a:b] for k in unit.keys],
                [v[:, a:b] for v in unit.values],
                unit.positions[:, a:b],
                [(0, b - a)],
                {"self": unit.attention["self"][:, a:b, a:b].clone()},
            )
            (ref,) = ds.compress(sub)
            assert d.index[0].tolist() == (ref.index[0] + a).tolist()


def test_needs_self_attention():
    assert MultiGrain.needs == ("self",)
    unit = make_unit()
    unit.attention.clear()
    with pytest.raises(VideoKVError, match="attention"):
        MultiGrain(alone=False).compress(unit)
    with pytest.raises(VideoKVError, match="must be"):
        MultiGrain(alone=False).compress(make_unit(attention=torch.rand(2, 5, 5)))
    # frequency only (alpha 0 everywhere): no attention read
    zero = {"patch": 0.0, "frame": 0.0, "segment": 0.0}
    assert len(MultiGrain(alpha=zero, alone=False).compress(unit)) == 21


@pytest.mark.parametrize(
    "make",
    [
        lambda: MultiGrain(keep={"patch": 0.1, "frame": 0.1, "segment": 0.8, "tile": 0.5}),
        lambda: MultiGrain(keep={"patch": 0.0, "frame": 0.1, "segment": 0.8}),
        lambda: MultiGrain(keep={"patch": 1.5, "frame": 0.1, "segment": 0.8}),
        lambda: MultiGrain(keep={"patch": 0.1, "frame": 0.1}),  # no entry for segment
        lambda: MultiGrain(keep=0.5),
        lambda: MultiGrain(alpha={"patch": 1.5, "frame": 0.7, "segment": 0.8}),
        lambda: MultiGrain(alpha={"patch": 0.5, "frame": 0.7, "segment": float("nan")}),
        lambda: MultiGrain(alpha={"patch": 0.5, "frame": 0.7, "tile": 0.8}),
        lambda: MultiGrain(granularities=("patch", "tile")),
        lambda: MultiGrain(granularities=()),
        lambda: MultiGrain(granularities=("frame", "frame")),
        lambda: MultiGrain(patches=0),
        lambda: MultiGrain(patches=2.0),
        lambda: MultiGrain(frequency="wavelet"),
        lambda: MultiGrain(alone="yes"),
    ],
)
def test_bad_parameters_raise(make):
    with pytest.raises(ConfigError):
        make()


def test_subset_of_granularities_needs_only_their_entries():
    mg = MultiGrain(keep={"segment": 0.5}, alpha={"segment": 0.8}, granularities=("segment",))
    assert [d.kind for d in mg.compress(make_unit())] == ["segment"]


def alone_of(unit: Unit, a: int, b: int, seed: int) -> Unit:
    """A stand-in for sub-block [a, b) prefilled on its own: other K/V and attention, positions from 7."""
    g = torch.Generator().manual_seed(seed)
    n, heads, dim = b - a, unit.keys[0].shape[0], unit.keys[0].shape[2]
    keys = [torch.randn(heads, n, dim, generator=g) for _ in unit.keys]
    values = [torch.randn(heads, n, dim, generator=g) for _ in unit.keys]
    positions = unit.positions[:, a:b] - int(unit.positions[:, a:b].min()) + 7
    attention = {"self": torch.softmax(torch.randn(4, n, n, generator=g), dim=-1)}
    return Unit([], keys, values, positions, [], attention, [], int(unit.positions[:, a:b].min()) - 7)


def test_alone_sub_blocks_keep_their_own_prefill():
    """With `alone` (MuKV) the frame and patch sub-blocks are those the engine prefilled on their own: each
    draft holds the kept K/V of that prefill (DualSignal on it), at its positions, with the origin back into
    the unit; the segment is still cut from the unit."""
    unit = make_unit(seed=5)
    mg = MultiGrain()
    ranges = mg.alone_ranges(unit.pieces)
    bounds = sub_block_bounds(unit, 4)
    assert ranges == bounds["patch"] + bounds["frame"]  # sub_blocks order: patches, then frames
    with pytest.raises(VideoKVError, match="alone"):
        mg.compress(unit)
    unit.alone = [alone_of(unit, a, b, seed=i) for i, (a, b) in enumerate(ranges)]
    own = dict(zip(ranges, unit.alone))
    kinds = by_kind(mg.compress(unit))
    for g in ("patch", "frame"):
        ds = DualSignal(keep=mg.keep[g], alpha=mg.alpha[g], beta=1 - mg.alpha[g])
        for d, (a, b) in zip(kinds[g], bounds[g]):
            u = own[(a, b)]
            keep = keep_top(ds.score(u), budget(b - a, mg.keep[g], "floor"))
            assert d.index is None and d.origin == u.origin
            assert all(torch.equal(k, uk[:, keep]) for k, uk in zip(d.keys, u.keys))
            assert all(torch.equal(v, uv[:, keep]) for v, uv in zip(d.values, u.values))
            assert all(torch.equal(p + d.origin, unit.positions[:, a:b][:, keep]) for p in d.positions)
    (seg,) = kinds["segment"]
    (ref,) = MultiGrain(alone=False, granularities=("segment",)).compress(unit)
    assert seg.index[0].tolist() == ref.index[0].tolist()


# ---- with the engine ---------------------------------------------------------------------------------------


def test_engine_stores_three_granularities():
    memory = get_preset("mukv").replace(compress=MultiGrain())
    qa = VideoQA.from_model(*get_tiny("llava_onevision"), memory=memory)
    s = qa.session()
    s.add_frames(random_frames(8))
    ans = s.ask(QUESTION, max_new_tokens=4)
    blocks = s.engine.store.blocks
    kinds = [b.kind for b in blocks]
    assert {"patch", "frame", "segment"} <= set(kinds)
    assert (kinds.count("patch"), kinds.count("frame"), kinds.count("segment")) == (32, 8, 2)
    assert ans.evidence


def test_blocks_prefilled_alone_keep_their_origin_on_every_tier(tmp_path):
    """MuKV's frame and patch blocks are stored at the positions of their own prefill, with the origin that
    maps them back into their unit; the origin survives a spill to disk (and a question over it answers as
    from memory at hand)."""
    model, tok = get_tiny("qwen2_vl")
    answers, origins, budget_bytes = [], [], None
    for _ in range(2):  # all at hand, then tight budgets (the largest block's bytes): blocks on disk
        memory = get_preset("mukv").replace(device_bytes=budget_bytes, host_bytes=budget_bytes)
        s = VideoQA.from_model(model, tok, memory=memory).session()
        s.add_frames(random_frames(8, seed=2))
        s.engine.flush()
        store = s.engine.store
        origins.append([store.get(r).origin for r in range(len(store))])
        answers.append(s.ask(QUESTION, max_new_tokens=4).text)
        if budget_bytes:
            assert store.tier.count("disk") > 2
        budget_bytes = max(store.nbytes_of)
    assert origins[0] == origins[1] and any(origins[0])
    kinds = [b.kind for b in store.blocks]
    assert all(o == 0 for o, k in zip(origins[0], kinds) if k == "segment")
    assert answers[0] == answers[1]
