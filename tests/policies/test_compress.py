"""Compressors on synthetic units: the draft contract, and every kept set checked against a score recomputed
here from its definition (numpy, loops), never through the compressor's own `score`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from videokv.errors import ConfigError, VideoKVError
from videokv.models.base import Piece
from videokv.policies.base import Unit, budget
from videokv.policies.compress import (
    COMPRESSORS,
    Bilevel,
    Compressor,
    DualSignal,
    InfiniPot,
    KeyNorm,
    NoCompression,
    Pool,
    Redundancy,
    ValueNorm,
)
from videokv.policies.compress.guidance import Guidance

# ---- synthetic units ---------------------------------------------------------------------------------------


def make_unit(
    frame_sizes=(6, 6, 6),
    layers: int = 2,
    heads: int = 2,
    dim: int = 8,
    rows: int = 3,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    attention_heads: int | None = 4,
) -> Unit:
    """A unit of frame pieces with random K/V, distinct positions and a random self-attention."""
    g = torch.Generator().manual_seed(seed)
    n = sum(frame_sizes)
    positions = torch.stack([torch.arange(n) * (r + 1) + 100 * r for r in range(rows)])
    pieces, spans, start = [], [], 0
    for i, size in enumerate(frame_sizes):
        end = start + size
        pieces.append(Piece(torch.zeros(size, 4), positions[:, start:end], "frame", float(i), float(i + 1)))
        spans.append((start, end))
        start = end
    keys = [torch.randn(heads, n, dim, generator=g, dtype=torch.float64).to(dtype) for _ in range(layers)]
    values = [torch.randn(heads, n, dim, generator=g, dtype=torch.float64).to(dtype) for _ in range(layers)]
    attention = {}
    if attention_heads:
        logits = torch.randn(attention_heads, n, n, generator=g, dtype=torch.float64)
        attention["self"] = torch.softmax(logits, dim=-1).to(dtype)
    return Unit(pieces, keys, values, positions, spans, attention)


def with_grids(unit: Unit, hw: tuple[int, int] | None) -> Unit:
    """`unit` with every frame piece's token grid set to `hw`."""
    for p in unit.pieces:
        p.hw = hw
    return unit


def np_(x: torch.Tensor) -> np.ndarray:
    return x.detach().double().numpy()


def check_top(kept: torch.Tensor, ref: np.ndarray, k: int, tol: float = 1e-9) -> None:
    """`kept` is exactly the top-k of `ref` (ties at the boundary, within tol, may go either way)."""
    kept_l = kept.tolist()
    n = len(ref)
    assert len(kept_l) == k
    assert kept_l == sorted(set(kept_l))
    order = sorted(range(n), key=lambda i: (-ref[i], i))
    if k == n or ref[order[k - 1]] - ref[order[k]] > tol:
        assert kept_l == sorted(order[:k])
    else:
        dropped = [i for i in range(n) if i not in set(kept_l)]
        assert min(ref[kept_l]) >= max(ref[dropped]) - tol


def minmax_ref(x: np.ndarray) -> np.ndarray:
    return (x - x.min()) / (x.max() - x.min() + 1e-8)


# ---- reference scores, from the definitions ----------------------------------------------------------------


def knorm_ref(unit: Unit, layer: int) -> np.ndarray:
    k = np_(unit.keys[layer])
    return -np.sqrt((k**2).sum(-1)).mean(0)


def vnorm_ref(unit: Unit, layer: int, smooth: int = 0) -> np.ndarray:
    v = np_(unit.values[layer])
    s = np.sqrt((v**2).sum(-1)).mean(0)
    if smooth <= 1:
        return s
    out = s.copy()
    for start, end in unit.frame_spans:
        for i in range(start, end):
            lo, hi = max(start, i - smooth // 2), min(end, i + smooth // 2 + 1)
            out[i] = s[lo:hi].mean()
    return out


def redundancy_ref(unit: Unit, layer: int, n_recent: int) -> tuple[np.ndarray, list[int]]:
    """TaR scores of the older tokens (recent ones: +inf) and the recent tokens."""
    k = np_(unit.keys[layer])
    spans = unit.frame_spans
    recent_spans = spans[-n_recent:]
    score = np.full(unit.n_tokens, np.inf)
    for start, end in spans[:-n_recent]:
        for j in range(end - start):
            cos = []
            for h in range(k.shape[0]):
                a = k[h, start + j]
                per_ref = [
                    a @ k[h, rs + j] / (np.linalg.norm(a) * np.linalg.norm(k[h, rs + j]))
                    for rs, _ in recent_spans
                ]
                cos.append(np.mean(per_ref))
            score[start + j] = -np.mean(cos)
    recent = [i for rs, re in recent_spans for i in range(rs, re)]
    return score, recent


def dual_ref(unit: Unit, alpha: float, beta: float, frequency: str) -> np.ndarray:
    n = unit.n_tokens
    score = np.zeros(n)
    if alpha:
        a = np_(unit.attention["self"]).mean(0).sum(0)  # received attention per key column
        score += alpha * minmax_ref(a)
    if beta:
        x = np_(unit.keys[-1]).mean(0)  # [n, d]
        if frequency == "diff":
            f = np.array([0.0] + [np.linalg.norm(x[i] - x[i - 1]) for i in range(1, n)])
        else:
            spec = np.fft.rfft(x, axis=0)
            spec[: max(1, spec.shape[0] // 2)] = 0
            f = np.abs(np.fft.irfft(spec, n=n, axis=0)).mean(-1)
        score += beta * minmax_ref(f)
    return score


# ---- the contract ------------------------------------------------------------------------------------------

ALL = [
    NoCompression(),
    Pool(),
    Pool(stride=1),
    Pool(stride=5),
    KeyNorm(),
    KeyNorm(keep=3),
    ValueNorm(),
    ValueNorm(keep=0.3, smooth=3),
    ValueNorm(keep=0.4, adaptive_pooling=True, per_head=True),
    Redundancy(),
    InfiniPot(),
    InfiniPot(keep=0.3, tar_ratio=0.8),
    InfiniPot(keep=0.75, adaptive_pooling=True),
    DualSignal(),
    DualSignal(keep=0.5, frequency="diff"),
    Bilevel(),
    Bilevel(low=KeyNorm(0.5), high=Pool(stride=2)),
]
UNITS = {
    "3 frames": make_unit(),
    "1 frame": make_unit(frame_sizes=(7,)),
    "unequal frames": make_unit(frame_sizes=(5, 7, 3, 6), rows=1),
    "bf16": make_unit(dtype=torch.bfloat16),
    "2x3 grids, an opening token": with_grids(make_unit(frame_sizes=(7, 6, 6), layers=4), (2, 3)),
}


def test_every_class_is_exported_and_registered():
    assert set(COMPRESSORS) == {
        "none",
        "pool",
        "knorm",
        "value_norm",
        "redundancy",
        "infinipot",
        "dual_signal",
        "bilevel",
        "multigrain",
    }
    for name, cls in COMPRESSORS.items():
        assert cls.name == name and issubclass(cls, Compressor)
        assert cls.__doc__ and ("Source" in cls.__doc__ or cls is NoCompression)


@pytest.mark.parametrize("unit_name", list(UNITS))
@pytest.mark.parametrize("comp", ALL, ids=repr)
def test_contract(comp: Compressor, unit_name: str):
    unit = UNITS[unit_name]
    n, layers = unit.n_tokens, len(unit.keys)
    heads, dim = unit.keys[0].shape[0], unit.keys[0].shape[2]
    assert set(comp.needs) <= set(unit.attention)
    drafts = comp.compress(unit)
    assert drafts
    levels = [d.level for d in drafts]
    if isinstance(comp, Bilevel):
        assert levels == ["L", "H"]
    elif isinstance(comp, Pool):
        assert levels == ["H"]
    else:
        assert levels == ["full"]
    for d in drafts:
        assert d.kind == ("frame" if len(unit.pieces) == 1 else "segment")
        assert (d.t0, d.t1) == (unit.t0, unit.t1)
        assert (d.index is None) != (d.keys is None)
        if d.index is not None:
            assert len(d.index) == layers
            for idx in d.index:  # [k], or [kv_heads, k] for a per-head selection
                assert idx.dtype == torch.long and idx.dim() in (1, 2) and idx.numel() >= 1
                rows = idx if idx.dim() == 2 else idx[None]
                assert rows.shape[0] in (1, heads)
                assert torch.all(rows[:, 1:] > rows[:, :-1])  # each row sorted and unique
                assert 0 <= int(idx.min()) and int(idx.max()) < n
        else:
            assert len(d.keys) == len(d.values) == len(d.positions) == layers
            for k, v, p in zip(d.keys, d.values, d.positions):
                m = p.shape[1]
                assert p.shape[0] == unit.positions.shape[0]
                assert k.shape == v.shape == (heads, m, dim)
                assert k.dtype == unit.keys[0].dtype
                assert 1 <= m <= n


def test_frozen():
    with pytest.raises(AttributeError):
        KeyNorm().keep = 0.3  # type: ignore[misc]


# ---- scorers: the kept set is the top-budget of the score --------------------------------------------------


def test_no_compression_keeps_everything():
    unit = make_unit()
    (d,) = NoCompression().compress(unit)
    for idx in d.index:
        assert idx.tolist() == list(range(unit.n_tokens))


@pytest.mark.parametrize("keep", [0.5, 0.1, 1.0, 4, 100])
def test_keynorm_keeps_lowest_key_norms(keep):
    unit = make_unit(seed=1)
    (d,) = KeyNorm(keep, per_head=False, rounding="round").compress(unit)
    for layer, idx in enumerate(d.index):
        check_top(idx, knorm_ref(unit, layer), budget(unit.n_tokens, keep))


@pytest.mark.parametrize("smooth", [0, 1, 3, 5])
@pytest.mark.parametrize("keep", [0.5, 0.25, 3])
def test_value_norm_keeps_highest_value_norms(keep, smooth):
    unit = make_unit(seed=2)
    (d,) = ValueNorm(keep, smooth=smooth, per_head=False, rounding="round").compress(unit)
    for layer, idx in enumerate(d.index):
        check_top(idx, vnorm_ref(unit, layer, smooth), budget(unit.n_tokens, keep))


keeps = st.one_of(st.floats(0.01, 1.0), st.integers(1, 40))
shapes = st.fixed_dictionaries(
    {
        "frame_sizes": st.lists(st.integers(1, 8), min_size=1, max_size=4).map(tuple),
        "layers": st.integers(1, 3),
        "heads": st.integers(1, 3),
        "dim": st.integers(1, 8),
        "rows": st.sampled_from([1, 3]),
        "seed": st.integers(0, 2**16),
    }
)


@settings(max_examples=60, deadline=None)
@given(shape=shapes, keep=keeps)
def test_keynorm_property(shape, keep):
    unit = make_unit(**shape, dtype=torch.float64, attention_heads=None)
    (d,) = KeyNorm(keep, per_head=False, rounding="round").compress(unit)
    for layer, idx in enumerate(d.index):
        check_top(idx, knorm_ref(unit, layer), budget(unit.n_tokens, keep))


@settings(max_examples=60, deadline=None)
@given(shape=shapes, keep=keeps, smooth=st.sampled_from([0, 3, 5]))
def test_value_norm_property(shape, keep, smooth):
    unit = make_unit(**shape, dtype=torch.float64, attention_heads=None)
    (d,) = ValueNorm(keep, smooth=smooth, per_head=False, rounding="round").compress(unit)
    for layer, idx in enumerate(d.index):
        check_top(idx, vnorm_ref(unit, layer, smooth), budget(unit.n_tokens, keep))


def test_value_norm_adaptive_pooling_layers_grid_and_opening_token():
    """4 layers, one per quarter: 3-D, 2-D, 1-D (kernel 3 each here: min(7 or 5, 3 frames, 3 rows, 4 cols)
    = 3), none; a video's opening token (frame 0's first) is outside the grid, so only 1-D pools it."""
    unit = with_grids(make_unit(frame_sizes=(13, 12, 12), layers=4, dtype=torch.float64), (3, 4))
    plain = ValueNorm(per_head=True).score(unit)
    pooled = ValueNorm(adaptive_pooling=True, per_head=True).score(unit)
    grid = np_(plain)[:, :, 1:].reshape(4, 2, 3, 3, 4)  # [layers, heads, frames, rows, cols]
    pad = np.pad(grid, ((0, 0), (0, 0), (1, 1), (1, 1), (1, 1)))
    r3 = sum(pad[0, :, f : f + 3, a : a + 3, b : b + 4] for f in range(3) for a in range(3) for b in range(3))
    r2 = sum(pad[1, :, 1:4, a : a + 3, b : b + 4] for a in range(3) for b in range(3))
    np.testing.assert_allclose(np_(pooled[0, :, 1:]), (r3 / 27).reshape(2, -1), atol=1e-12)
    np.testing.assert_allclose(np_(pooled[1, :, 1:]), (r2 / 9).reshape(2, -1), atol=1e-12)
    line = np.pad(np_(plain[2]), ((0, 0), (1, 1)))
    np.testing.assert_allclose(np_(pooled[2]), (line[:, :-2] + line[:, 1:-1] + line[:, 2:]) / 3, atol=1e-12)
    assert torch.equal(pooled[3], plain[3])
    assert torch.equal(pooled[:2, :, 0], plain[:2, :, 0])  # the opening token: not in the grid


@pytest.mark.parametrize(
    "unit",
    [
        make_unit(frame_sizes=(12, 12), layers=4),  # no grid known
        with_grids(make_unit(frame_sizes=(12,), layers=4), (3, 4)),  # one frame: kernel min(.., 1) < 2
        with_grids(make_unit(frame_sizes=(12, 12), layers=4), (2, 8)),  # the grid does not fit the frames
    ],
    ids=["no grid", "one frame", "grid too large"],
)
def test_value_norm_adaptive_pooling_without_a_usable_grid_pools_only_1d(unit):
    plain = ValueNorm(per_head=True).score(unit)
    pooled = ValueNorm(adaptive_pooling=True, per_head=True).score(unit)
    assert torch.equal(pooled[[0, 1, 3]], plain[[0, 1, 3]])
    assert not torch.allclose(pooled[2], plain[2])


def test_adaptive_pooling_layer_schedule():
    from videokv.policies.compress.value_norm import adaptive_pooling_of

    assert [adaptive_pooling_of(i, 28) for i in (0, 6, 7, 13, 14, 20, 21, 27)] == [
        (3, 7), (3, 7), (2, 5), (2, 5), (1, 3), (1, 3), (0, 1), (0, 1)
    ]  # fmt: skip
    assert [adaptive_pooling_of(i, 3)[0] for i in range(3)] == [3, 2, 1]
    assert adaptive_pooling_of(29, 30) == (0, 1)  # 30 // 4 = 7: layer 28 on would index past the lists


def test_infinipot_adaptive_pooling_is_value_norm_pooled_at_tar_ratio_0():
    unit = with_grids(make_unit(frame_sizes=(12, 12, 12, 12), layers=4), (3, 4))
    a = InfiniPot(0.5, tar_ratio=0.0, adaptive_pooling=True).compress(unit)[0]
    b = ValueNorm(0.5, adaptive_pooling=True).compress(unit)[0]
    assert all(torch.equal(x, y) for x, y in zip(a.index, b.index))


@pytest.mark.parametrize(
    ("frames", "recent", "keep", "n_recent"),
    [(4, 0.25, 0.5, 1), (8, 0.25, 0.6, 2), (3, 0.5, 0.5, 1), (2, 0.25, 0.75, 1), (5, 0.9, 0.9, 4)],
)
def test_redundancy_keeps_recent_frames_then_least_redundant(frames, recent, keep, n_recent):
    unit = make_unit(frame_sizes=(5,) * frames, seed=3, dtype=torch.float64)
    (d,) = Redundancy(keep, recent=recent, per_head=False, rounding="round").compress(unit)
    k = budget(unit.n_tokens, keep)
    for layer, idx in enumerate(d.index):
        ref, recent_tokens = redundancy_ref(unit, layer, n_recent)
        assert len(recent_tokens) == 5 * n_recent <= k
        assert set(recent_tokens) <= set(idx.tolist())  # every recent-frame token is kept
        check_top(idx, np.where(np.isinf(ref), 10.0, ref), k)


@settings(max_examples=40, deadline=None)
@given(
    frames=st.integers(2, 6),
    size=st.integers(1, 6),
    recent=st.floats(0.05, 0.95),
    extra=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_redundancy_property(frames, size, recent, extra, seed):
    unit = make_unit(frame_sizes=(size,) * frames, seed=seed, dtype=torch.float64, attention_heads=None)
    n_recent = min(max(1, math.floor(recent * frames)), frames - 1)
    keep = size * n_recent + round(extra * size * (frames - n_recent))  # the recent frames + some older
    (d,) = Redundancy(keep, recent=recent, per_head=False, rounding="round").compress(unit)
    for layer, idx in enumerate(d.index):
        ref, recent_tokens = redundancy_ref(unit, layer, n_recent)
        assert set(recent_tokens) <= set(idx.tolist())
        check_top(idx, np.where(np.isinf(ref), 10.0, ref), keep)


def test_redundancy_falls_back_to_key_norm():
    for sizes in [(5, 7, 3, 6), (9,)]:
        unit = make_unit(frame_sizes=sizes, seed=4)
        (d,) = Redundancy(0.4, per_head=False, rounding="round").compress(unit)
        (ref,) = KeyNorm(0.4, per_head=False, rounding="round").compress(unit)
        assert [i.tolist() for i in d.index] == [i.tolist() for i in ref.index]


def test_redundancy_budget_is_a_hard_cap():
    unit = make_unit(frame_sizes=(4,) * 4)
    (d,) = Redundancy(keep=2, recent=0.5, per_head=False, rounding="round").compress(
        unit
    )  # 2 recent frames = 8 tokens > budget 2
    for idx in d.index:
        assert idx.tolist() == [8, 9]


@pytest.mark.parametrize("frequency", ["fft", "diff"])
@pytest.mark.parametrize(("alpha", "beta"), [(0.5, 0.5), (0.7, 0.3), (1.0, 0.0), (0.0, 1.0), (2.0, 1.0)])
@pytest.mark.parametrize("keep", [0.1, 0.5, 5])
def test_dual_signal_keeps_top_combined_score(alpha, beta, frequency, keep):
    unit = make_unit(seed=5, dtype=torch.float64)
    (d,) = DualSignal(keep, alpha=alpha, beta=beta, frequency=frequency, rounding="round").compress(unit)
    ref = dual_ref(unit, alpha, beta, frequency)
    for idx in d.index:
        check_top(idx, ref, budget(unit.n_tokens, keep))
        assert torch.equal(idx, d.index[0])  # one kept set for every layer


def test_dual_signal_attention_only_keeps_most_attended():
    unit = make_unit(seed=6)
    chosen = [2, 5, 11, 17]
    att = torch.zeros(4, unit.n_tokens, unit.n_tokens)
    att[:, :, chosen] = 1.0 / len(chosen)  # every query attends only to `chosen`
    unit.attention["self"] = att
    (d,) = DualSignal(keep=len(chosen), alpha=1.0, beta=0.0).compress(unit)
    for idx in d.index:
        assert idx.tolist() == chosen


@pytest.mark.parametrize(("frequency", "expected"), [("diff", [9, 10]), ("fft", [9])])
def test_dual_signal_frequency_only_keeps_changes(frequency, expected):
    unit = make_unit(seed=7, attention_heads=None)  # no attention statistic: not needed with alpha = 0
    last = torch.ones_like(unit.keys[-1])
    last[:, 9] = 6.0  # a spike on a constant background, in every head
    unit.keys[-1] = last
    (d,) = DualSignal(keep=len(expected), alpha=0.0, beta=1.0, frequency=frequency).compress(unit)
    for idx in d.index:
        assert idx.tolist() == expected


def test_dual_signal_needs_self_attention():
    assert DualSignal.needs == ("self",)
    unit = make_unit(attention_heads=None)
    with pytest.raises(VideoKVError, match="attention"):
        DualSignal().compress(unit)
    unit.attention["self"] = torch.zeros(2, 3, 3)
    with pytest.raises(VideoKVError, match="attention"):
        DualSignal().compress(unit)


# ---- pooling -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stride", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("sizes", [(6, 6, 6), (5, 7, 1, 4)])
def test_pool_means_and_positions(stride, sizes):
    unit = make_unit(frame_sizes=sizes, seed=8)
    (d,) = Pool(stride, partial="keep").compress(unit)
    windows = [(s, min(s + stride, e)) for s, e in unit.frame_spans for s in range(s, e, stride)]
    assert len(windows) == sum(math.ceil(m / stride) for m in sizes)
    for layer in range(len(unit.keys)):
        keys, values, pos = d.keys[layer], d.values[layer], d.positions[layer]
        assert keys.shape[1] == values.shape[1] == pos.shape[1] == len(windows)
        for w, (a, b) in enumerate(windows):
            for h in range(keys.shape[0]):
                for name, pooled, full in (("k", keys, unit.keys), ("v", values, unit.values)):
                    hand = sum(full[layer][h, t] for t in range(a, b)) / (b - a)
                    assert torch.allclose(pooled[h, w], hand, atol=1e-6), (name, layer, w, h)
            assert pos[:, w].tolist() == unit.positions[:, a].tolist()


def test_pool_stride_one_is_identity_and_keeps_dtype():
    unit = make_unit(dtype=torch.bfloat16)
    (d,) = Pool(1).compress(unit)
    for layer in range(len(unit.keys)):
        assert torch.equal(d.keys[layer], unit.keys[layer])
        assert torch.equal(d.values[layer], unit.values[layer])
        assert torch.equal(d.positions[layer], unit.positions)


# ---- bilevel -----------------------------------------------------------------------------------------------


def test_bilevel_defaults_full_and_pooled():
    unit = make_unit(frame_sizes=(20, 20))
    low, high = Bilevel().compress(unit)
    assert (low.level, high.level) == ("L", "H")
    assert all(idx.tolist() == list(range(unit.n_tokens)) for idx in low.index)
    assert high.keys[0].shape[1] == 2 * (20 // 8)  # Video-XL-2 drops the partial last window


def test_bilevel_levels_wrap_the_given_compressors():
    unit = make_unit(seed=9)
    bl = Bilevel(low=KeyNorm(0.5), high=Pool(2))
    low, high = bl.compress(unit)
    (ref_low,) = KeyNorm(0.5).compress(unit)
    (ref_high,) = Pool(2).compress(unit)
    assert (low.level, high.level) == ("L", "H")
    assert [i.tolist() for i in low.index] == [i.tolist() for i in ref_low.index]
    assert all(torch.equal(a, b) for a, b in zip(high.keys, ref_high.keys))
    assert Bilevel(low=DualSignal(), high=Pool()).needs == ("self",)
    assert Bilevel().needs == ()
    # the forward prompt's scope follows the level that forwards one (StreamKV's sees only the unit)
    assert Bilevel(low=NoCompression(), high=Guidance()).prompt_sees_unit
    assert not Bilevel().prompt_sees_unit and not KeyNorm(0.5).prompt_sees_unit


# ---- parameters --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: Pool(0),
        lambda: Pool(-2),
        lambda: Pool(2.5),
        lambda: Pool(True),
        lambda: Pool(4, partial="pad"),
        lambda: KeyNorm(0.5, rounding="ceil"),
        lambda: KeyNorm(0.5, per_head=1),
        lambda: KeyNorm(0),
        lambda: KeyNorm(0.0),
        lambda: KeyNorm(1.5),
        lambda: KeyNorm(-3),
        lambda: KeyNorm(True),
        lambda: KeyNorm("half"),
        lambda: ValueNorm(0.5, smooth=2),
        lambda: ValueNorm(0.5, smooth=-1),
        lambda: ValueNorm(-0.5),
        lambda: ValueNorm(0.5, adaptive_pooling=1),
        lambda: ValueNorm(0.5, smooth=3, adaptive_pooling=True),
        lambda: Redundancy(recent=0.0),
        lambda: Redundancy(recent=1.0),
        lambda: Redundancy(keep=2.0),
        lambda: InfiniPot(tar_ratio=1.5),
        lambda: InfiniPot(tar_ratio=True),
        lambda: InfiniPot(recent=1.0),
        lambda: InfiniPot(adaptive_pooling="yes"),
        lambda: DualSignal(alpha=-0.1),
        lambda: DualSignal(beta=float("nan")),
        lambda: DualSignal(alpha=0.0, beta=0.0),
        lambda: DualSignal(frequency="wavelet"),
        lambda: DualSignal(keep=0),
        lambda: Bilevel(low="none"),
        lambda: Bilevel(high=Bilevel()),
    ],
)
def test_bad_parameters_raise_config_error(make):
    with pytest.raises(ConfigError):
        make()
