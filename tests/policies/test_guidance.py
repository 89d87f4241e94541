"""Guidance compression (StreamKV) and the shared layer-adaptive count routine."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from videokv.errors import ConfigError
from videokv.models.base import Piece
from videokv.policies.adaptive import adaptive_counts
from videokv.policies.base import Unit
from videokv.policies.compress.guidance import DEFAULT_PROMPT, Guidance

LAYERS, HEADS, KV, DIM, TOK = 3, 2, 1, 4, 4


def make_unit(n_frames: int, attention: torch.Tensor | None = None) -> Unit:
    pieces = [
        Piece(torch.zeros(TOK, 8), torch.zeros(3, TOK, dtype=torch.long), "frame", t0=i, t1=i + 1)
        for i in range(n_frames)
    ]
    n = n_frames * TOK
    keys = [torch.randn(KV, n, DIM) for _ in range(LAYERS)]
    values = [torch.randn(KV, n, DIM) for _ in range(LAYERS)]
    spans = [(i * TOK, (i + 1) * TOK) for i in range(n_frames)]
    att = {} if attention is None else {"guidance": attention}
    return Unit(pieces, keys, values, torch.zeros(3, n, dtype=torch.long), spans, att)


def test_guidance_keeps_the_frames_its_prompt_attends_to():
    torch.manual_seed(0)
    att = torch.rand(LAYERS, HEADS, 5 * TOK) * 0.01
    for f in (1, 3):
        att[:, :, f * TOK : (f + 1) * TOK] += 1.0
    unit = make_unit(5, att)
    (draft,) = Guidance(keep=0.4).compress(unit)
    expected = torch.cat([torch.arange(TOK, 2 * TOK), torch.arange(3 * TOK, 4 * TOK)])
    assert draft.kind == "segment" and draft.level == "full"
    assert (draft.t0, draft.t1) == (0, 5)
    assert len(draft.index) == LAYERS
    for index in draft.index:
        assert torch.equal(index, expected)


def test_guidance_single_frame_unit_is_a_frame_draft():
    unit = make_unit(1, torch.rand(LAYERS, HEADS, TOK))
    (draft,) = Guidance(keep=0.5).compress(unit)
    assert draft.kind == "frame"
    assert all(torch.equal(i, torch.arange(TOK)) for i in draft.index)


def test_guidance_layer_budgets_follow_peakedness():
    # StreamKV's shared cumulative-mass threshold: a layer whose attention mass sits on one frame reaches the
    # threshold with fewer frames than a layer whose attention is spread out.
    n_frames = 20
    att = torch.zeros(LAYERS, HEADS, n_frames * TOK)
    att[0, :, :TOK] = 1.0  # peaked: frame 0 only
    att[1] = torch.linspace(0, 1, n_frames * TOK)  # spread out, favouring late frames
    att[2] = torch.linspace(1, 0, n_frames * TOK)  # spread out, favouring early frames
    (draft,) = Guidance(keep=0.25, temp=1.0).compress(make_unit(n_frames, att))
    frames = [len(i) // TOK for i in draft.index]
    assert frames[0] < frames[1] and frames[0] < frames[2]
    assert sum(frames) == LAYERS * 5
    assert torch.equal(draft.index[0], torch.arange(TOK))
    for index, n in zip(draft.index[1:], frames[1:]):
        assert len(index) == n * TOK and torch.equal(index, index.sort().values)
        assert all(int(s) % TOK == 0 for s in index[::TOK])  # whole frames
    late, early = draft.index[1], draft.index[2]
    assert int(late[0]) == (n_frames - frames[1]) * TOK and int(early[-1]) == frames[2] * TOK - 1


def test_guidance_validates_and_needs_attention():
    assert 30 <= len(DEFAULT_PROMPT.split()) <= 60
    assert Guidance.needs == ("guidance",) and Guidance.name == "guidance"
    for bad in (dict(keep=0.0), dict(keep=1.5), dict(temp=-1.0), dict(prompt="  ")):
        with pytest.raises(ConfigError):
            Guidance(**bad)
    with pytest.raises(ConfigError, match="guidance"):
        Guidance().compress(make_unit(2))


def test_adaptive_counts_peaked_layers_get_fewer():
    n = 40
    flat = torch.linspace(0, 1e-3, n)
    peaked = torch.zeros(n)
    peaked[:3] = 10.0
    counts = adaptive_counts([peaked, flat, flat, peaked], target=10, temp=0.5)
    assert sum(counts) == 40
    assert counts[0] < counts[1] and counts[3] < counts[2]
    assert all(5 <= c <= 15 for c in counts)


def test_adaptive_counts_temp_zero_is_uniform():
    scores = [torch.randn(20) for _ in range(4)]
    assert adaptive_counts(scores, target=7, temp=0.0) == [7, 7, 7, 7]


def test_adaptive_counts_validates():
    with pytest.raises(ConfigError):
        adaptive_counts([torch.randn(3)], target=0, temp=0.5)
    with pytest.raises(ConfigError):
        adaptive_counts([torch.randn(3), torch.randn(0)], target=1, temp=0.5)
    assert adaptive_counts([], target=3, temp=0.5) == []


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 30), min_size=1, max_size=8),
    target=st.integers(1, 20),
    temp=st.floats(0.0, 2.0),
    seed=st.integers(0, 2**16),
    peak=st.floats(0.0, 20.0),
)
def test_adaptive_counts_properties(sizes, target, temp, seed, peak):
    g = torch.Generator().manual_seed(seed)
    scores = [torch.randn(n, generator=g) * (peak if i % 2 else 1.0) for i, n in enumerate(sizes)]
    counts = adaptive_counts(scores, target, temp)
    assert len(counts) == len(sizes)
    lo, hi = max(1.0, target * (1 - temp)), max(1.0, target * (1 + temp))
    for c, n in zip(counts, sizes):
        assert 1 <= c <= n
        assert c <= hi + 1e-9
        assert c >= min(n, lo - 1e-9)
    assert sum(counts) == sum(min(target, n) for n in sizes)
