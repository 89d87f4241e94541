"""The adapter's contract with transformers: the cache argument, the cache-growth guard, no side effects."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import get_tiny, random_frames
from videokv import VideoQA
from videokv.memory.cache import ContextCache
from videokv.models.base import CacheNotUpdated, cache_argument


def test_cache_argument_follows_the_forward_signature(tiny):
    ad = VideoQA.from_model(*tiny).adapter
    assert cache_argument(ad.language_model) in ("cache", "past_key_values")

    class Old(torch.nn.Module):
        def forward(self, inputs_embeds=None, position_ids=None, past_key_values=None, **kwargs):
            return None

    class New(torch.nn.Module):
        def forward(self, inputs_embeds=None, cache=None, past_key_values=None, **kwargs):
            return None

    class Neither(torch.nn.Module):
        def forward(self, inputs_embeds=None, **kwargs):
            return None

    assert cache_argument(Old()) == "past_key_values"
    assert cache_argument(New()) == "cache"
    with pytest.raises(CacheNotUpdated, match="neither"):
        cache_argument(Neither())


def test_a_cache_the_model_ignores_is_an_error(qwen):
    """transformers swallows unknown keywords: a cache passed under a name it ignores would mean "no cache".
    The adapter checks after every forward that each layer grew by exactly the tokens fed."""
    ad = VideoQA.from_model(*qwen).adapter
    piece = ad.text_piece("hello there", 0)
    cache = ContextCache(ad.num_layers)
    saved = ad.cache_argument
    ad.cache_argument = "a_name_transformers_ignores"
    try:
        with pytest.raises(CacheNotUpdated, match="did not add the"):
            with torch.no_grad():
                ad.forward(piece.embeds, piece.positions, cache)
    finally:
        ad.cache_argument = saved
    with torch.no_grad():
        ad.forward(piece.embeds, piece.positions, cache)
    assert cache.lengths() == [piece.n_tokens] * ad.num_layers


def test_sessions_leave_the_callers_model_as_it_was(family):
    """A plain, left-padded HF forward on the caller's model gives identical logits before and after a
    videokv session ingests and answers (videokv's attention function is used only inside its forwards)."""
    model, tok = get_tiny(family)
    config = model.config.get_text_config()
    attn = config._attn_implementation
    ids = torch.tensor([[0, 0, 5, 17, 42, 99, 3], [11, 12, 13, 14, 15, 16, 17]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])

    def plain() -> torch.Tensor:
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=mask).logits

    before = plain()
    session = VideoQA.from_model(model, tok, memory="rekv").session()
    session.add_frames(random_frames(3))
    session.add_text("a red umbrella", t=3.0)
    session.ask("what colour?", max_new_tokens=2)
    assert config._attn_implementation == attn
    assert torch.equal(plain(), before)


def test_frame_pieces_carry_their_raster_token_grid(tiny):
    """`Piece.hw`: the last rows * cols tokens of a frame piece, in raster order (for M-RoPE, the height and
    width position rows say so); a video's opening token precedes them."""
    ad = VideoQA.from_model(*tiny).adapter
    n = 2 * ad.frames_per_piece
    pieces, _, _ = ad.video_pieces(random_frames(n), np.arange(n, dtype=float), 1.0, None, 3)
    for p in pieces:
        rows, cols = p.hw
        if ad.family in ("qwen2_vl", "llava_onevision"):  # no text per frame: a video's opening token at most
            assert rows * cols == p.n_tokens - (1 if p is pieces[0] and ad.family != "llava_onevision" else 0)
        # the visual tokens are the last rows * cols; what precedes them (a family's per-frame text) is text
        assert p.token_ids[-rows * cols :] == [ad.video_token_id] * (rows * cols)
        assert ad.video_token_id not in p.token_ids[: -rows * cols]
        if ad.rope_rows == 3:
            pos = p.positions[:, -rows * cols :]
            assert torch.equal(pos[1] - pos[1].min(), torch.arange(rows).repeat_interleave(cols))
            assert torch.equal(pos[2] - pos[2].min(), torch.arange(cols).repeat(rows))
    assert pieces[0].shifted(5).hw == pieces[0].hw
