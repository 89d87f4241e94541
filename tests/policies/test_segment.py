"""Segmenters: Uniform cuts every k frames; Semantic cuts at scene changes and bounds unit length."""

from __future__ import annotations

import pytest
import torch

from videokv.errors import ConfigError
from videokv.models.base import Piece
from videokv.policies.segment import Semantic, Uniform

HIDDEN = 8


def frame(vec: torch.Tensor, t: float, n: int = 3) -> Piece:
    embeds = vec.float().expand(n, HIDDEN).clone()
    pos = torch.full((3, n), int(t * 10))
    return Piece(embeds, pos, "frame", t0=t, t1=t + 1, token_ids=[int(t)] * n)


def text(t: float) -> Piece:
    return Piece(torch.zeros(2, HIDDEN), torch.zeros(3, 2, dtype=torch.long), "text", t0=t, t1=t, text="hi")


def run(seg, pieces: list[Piece]) -> list[list[Piece]]:
    state = seg.start()
    units = []
    for p in pieces:
        units += state.push(p)
    return units + state.flush()


def basis(i: int) -> torch.Tensor:
    v = torch.zeros(HIDDEN)
    v[i] = 1.0
    return v


def n_frames(unit: list[Piece]) -> int:
    return sum(p.kind == "frame" for p in unit)


def test_uniform_cuts_every_k_frames_and_text_joins():
    pieces = [frame(basis(0), 0), text(0.5), frame(basis(0), 1), frame(basis(0), 2), text(2.5)]
    pieces += [frame(basis(0), 3), frame(basis(0), 4)]
    units = run(Uniform(frames=2), pieces)
    assert [n_frames(u) for u in units] == [2, 2, 1]
    assert [p.kind for p in units[0]] == ["frame", "text", "frame"]
    assert [p.kind for p in units[1]] == ["frame", "text", "frame"]
    assert sum(len(u) for u in units) == len(pieces)


def test_uniform_push_returns_completed_unit_and_states_are_independent():
    seg = Uniform()
    a, b = seg.start(), seg.start()
    assert a.push(text(0)) == []
    done = a.push(frame(basis(0), 0))
    assert len(done) == 1 and [p.kind for p in done[0]] == ["text", "frame"]
    assert b.flush() == [] and a.flush() == []
    assert b.push(frame(basis(0), 0))[0][0].t0 == 0


def test_text_alone_never_cuts():
    state = Uniform(frames=1).start()
    for i in range(5):
        assert state.push(text(i)) == []
    assert [len(u) for u in state.flush()] == [5]


@pytest.mark.parametrize("bad", [dict(frames=0), dict(frames=1.5)])
def test_uniform_validates(bad):
    with pytest.raises(ConfigError):
        Uniform(**bad)


@pytest.mark.parametrize(
    "bad",
    [dict(threshold=1.5), dict(min_len=0), dict(min_len=5, max_len=4), dict(max_len=2.0)],
)
def test_semantic_validates(bad):
    with pytest.raises(ConfigError):
        Semantic(**bad)


def test_semantic_cuts_at_planted_scene_change():
    pieces = [frame(basis(0), t) for t in range(6)] + [frame(basis(1), t) for t in range(6, 12)]
    state = Semantic(threshold=0.99, min_len=4, max_len=64).start()
    done_at = [i for i, p in enumerate(pieces) if state.push(p)]
    assert done_at == [6]  # the seventh frame (first of scene B) closes the first unit
    units = run(Semantic(threshold=0.99, min_len=4, max_len=64), pieces)
    assert [n_frames(u) for u in units] == [6, 6]
    assert [p.t0 for p in units[1]] == list(range(6, 12))


def test_semantic_respects_min_len():
    # Every frame differs from the previous one, but a unit needs 4 frames before it may close.
    pieces = [frame(basis(t % HIDDEN), t) for t in range(10)]
    units = run(Semantic(threshold=0.99, min_len=4, max_len=64), pieces)
    assert [n_frames(u) for u in units] == [4, 4, 2]


def test_semantic_text_does_not_cut():
    pieces = [frame(basis(0), 0), text(0.5), frame(basis(0), 1), text(1.5), text(1.6)]
    units = run(Semantic(min_len=1), pieces)
    assert len(units) == 1 and len(units[0]) == 5


def test_semantic_never_exceeds_max_len_and_merges_most_similar_pair():
    # Five frames of one scene (no cut), max_len 4: the fifth push merges the most similar adjacent pair.
    # Frames 2 and 3 are nearly identical; every other adjacent pair is far apart.
    vecs = [basis(0), basis(1), basis(2) + 0.01 * basis(3), basis(2), basis(4)]
    pieces = [frame(v, t) for t, v in enumerate(vecs)]
    seg = Semantic(threshold=-1.0, min_len=1, max_len=4)  # threshold -1: never a scene cut
    units = run(seg, pieces)
    assert len(units) == 1
    unit = units[0]
    assert n_frames(unit) == 4
    merged = unit[2]
    assert (merged.t0, merged.t1) == (2, 4)  # t0 of the first, t1 of the second
    assert merged.token_ids == pieces[2].token_ids
    assert torch.equal(merged.positions, pieces[2].positions)
    assert torch.allclose(merged.embeds, (pieces[2].embeds + pieces[3].embeds) / 2)
    assert [p.t0 for p in unit] == [0, 1, 2, 4]


def test_semantic_long_scene_stays_bounded():
    torch.manual_seed(0)
    base = torch.randn(HIDDEN)
    pieces = [frame(base + 0.001 * torch.randn(HIDDEN), t) for t in range(50)]
    state = Semantic(threshold=0.5, min_len=2, max_len=8).start()
    for p in pieces:
        assert state.push(p) == []
        assert state.open_frames <= 8
    (unit,) = state.flush()
    assert n_frames(unit) == 8
    assert unit[0].t0 == 0 and unit[-1].t1 == 50


def test_semantic_closes_when_most_similar_pair_has_different_shapes():
    pieces = [frame(basis(0), 0, n=3), frame(basis(0), 1, n=4), frame(basis(1), 2, n=3)]
    units = run(Semantic(threshold=-1.0, min_len=1, max_len=2), pieces)
    assert [n_frames(u) for u in units] == [2, 1]
    assert units[1][0].t0 == 2


def labelled_frame(vec: torch.Tensor, t: float, label: torch.Tensor, n: int = 4) -> Piece:
    """A frame piece as Qwen3-VL and InternVL write one: two text tokens (a timestamp, a frame label) before
    its n visual tokens (`hw`)."""
    embeds = torch.cat([label.float().expand(2, HIDDEN), vec.float().expand(n, HIDDEN)])
    pos = torch.full((3, n + 2), int(t * 10))
    return Piece(embeds, pos, "frame", t0=t, t1=t + 1, token_ids=[int(t)] * (n + 2), hw=(2, n // 2))


def test_semantic_reads_a_frames_visual_tokens_not_the_text_before_them():
    """Identical frames whose timestamps differ are one scene; different frames behind one label are two.
    A merge averages the visual tokens and keeps the first frame's text."""
    same = [labelled_frame(basis(0), t, basis(t + 1)) for t in range(3)]
    assert [n_frames(u) for u in run(Semantic(threshold=0.9, min_len=1, max_len=8), same)] == [3]
    cut = [labelled_frame(basis(0), 0, basis(7)), labelled_frame(basis(1), 1, basis(7))]
    assert [n_frames(u) for u in run(Semantic(threshold=0.9, min_len=1, max_len=8), cut)] == [1, 1]
    merged = run(Semantic(threshold=-1.0, min_len=1, max_len=2), same)[0][0]
    assert torch.equal(merged.embeds[:2], same[0].embeds[:2])  # the first frame's timestamp, unaveraged
    assert torch.equal(merged.embeds[2:], (same[0].embeds[2:] + same[1].embeds[2:]) / 2)
