"""Guidance compression (StreamKV) and the shared layer-adaptive count routine (behaviour; the parity with
StreamKV's formulas is in test_parity.py)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from videokv.errors import ConfigError
from videokv.models.base import Piece
from videokv.policies.adaptive import cdf_counts, rescale_sum_match, streamkv_counts
from videokv.policies.base import Unit
from videokv.policies.compress.guidance import DEFAULT_PROMPT, Guidance

LAYERS, KV, DIM, TOK = 3, 1, 4, 4


def make_unit(n_frames: int, q: torch.Tensor | None = None, k: torch.Tensor | None = None) -> Unit:
    pieces = [
        Piece(torch.zeros(TOK, 8), torch.zeros(3, TOK, dtype=torch.long), "frame", t0=i, t1=i + 1)
        for i in range(n_frames)
    ]
    n = n_frames * TOK
    keys = [torch.randn(KV, n, DIM) for _ in range(LAYERS)]
    values = [torch.randn(KV, n, DIM) for _ in range(LAYERS)]
    spans = [(i * TOK, (i + 1) * TOK) for i in range(n_frames)]
    att = {} if q is None else {"guidance_q": q, "prerope_k": k}
    return Unit(pieces, keys, values, torch.zeros(3, n, dtype=torch.long), spans, att)


def test_guidance_keeps_the_frames_its_prompt_query_matches():
    torch.manual_seed(0)
    q = torch.zeros(LAYERS, KV, DIM)
    q[..., 0] = 1.0
    k = torch.randn(LAYERS, KV, 5 * TOK, DIM) * 0.01
    for f in (1, 3):
        k[:, :, f * TOK : (f + 1) * TOK, 0] += 1.0
    comp = Guidance(keep=0.4, temp=0.0)
    unit = make_unit(5, q, k)
    drafts = comp.compress(unit)
    counts = comp.budgets(comp.frame_scores(unit))
    # one block per kept frame (StreamKV's blocks are frames), present at the layers that kept it
    assert all(d.kind == "frame" and d.level == "full" for d in drafts)
    assert {(d.t0, d.t1) for d in drafts} <= {(1, 2), (3, 4)}
    for d in drafts:
        assert len(d.index) == LAYERS
        f = int(d.t0)
        for index in d.index:
            assert index.numel() in (0, TOK)
            assert index.numel() == 0 or torch.equal(index, torch.arange(f * TOK, (f + 1) * TOK))
    # StreamKV's rescale returns equal per-layer counts unclipped: here every layer's cdf count
    for layer, count in enumerate(counts):
        frames = sorted(int(d.t0) for d in drafts if d.index[layer].numel())
        assert set(frames) <= {1, 3} and len(frames) == count


def test_guidance_single_frame_unit_is_a_frame_draft():
    unit = make_unit(1, torch.randn(LAYERS, KV, DIM), torch.randn(LAYERS, KV, TOK, DIM))
    (draft,) = Guidance(keep=0.5).compress(unit)
    assert draft.kind == "frame"
    assert all(torch.equal(i, torch.arange(TOK)) for i in draft.index)


def test_guidance_validates_and_needs_prerope_statistics():
    assert 30 <= len(DEFAULT_PROMPT.split()) <= 60
    assert Guidance.needs == ("guidance_qk",) and Guidance.name == "guidance"
    for bad in (dict(keep=0.0), dict(keep=1.5), dict(temp=-1.0), dict(prompt="  ")):
        with pytest.raises(ConfigError):
            Guidance(**bad)
    with pytest.raises(ConfigError, match="guidance_q"):
        Guidance().compress(make_unit(2))


def test_cdf_counts_peaked_layers_get_fewer():
    n = 40
    flat = torch.linspace(0, 1e-3, n)
    peaked = torch.zeros(n)
    peaked[:3] = 10.0
    counts = cdf_counts([peaked, flat, flat, peaked], target=40)
    assert counts[0] < counts[1] and counts[3] < counts[2]
    assert abs(sum(counts) - 40) < 5


def test_rescale_sum_match_keeps_the_sum_and_equal_counts():
    assert rescale_sum_match([7, 7, 7], 1, 3) == [7, 7, 7]  # equal counts come back unclipped
    out = rescale_sum_match([2, 10, 30, 18], 8, 12)
    assert sum(out) == 48 and all(8 <= c <= 12 for c in out)


def test_streamkv_counts_validates():
    with pytest.raises(ConfigError):
        streamkv_counts([torch.randn(3)], target=0, lo=1, hi=2)
    with pytest.raises(ConfigError):
        streamkv_counts([torch.randn(3)], target=1, lo=3, hi=2)
    with pytest.raises(ConfigError):
        cdf_counts([torch.randn(3), torch.randn(0)], target=1)
    assert streamkv_counts([], target=3, lo=1, hi=2) == []


@settings(max_examples=100, deadline=None)
@given(
    layers=st.integers(1, 8),
    n=st.integers(2, 30),
    ratio=st.floats(0.1, 1.0),
    temp=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
    peak=st.floats(0.1, 20.0),
)
def test_guidance_budgets_properties(layers, n, ratio, temp, seed, peak):
    g = torch.Generator().manual_seed(seed)
    scores = torch.stack([torch.randn(n, generator=g) * (peak if i % 2 else 1.0) for i in range(layers)])
    counts = Guidance(keep=ratio, temp=temp).budgets(scores)
    assert len(counts) == layers
    assert all(1 <= c <= n for c in counts)
