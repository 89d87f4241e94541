"""Invariant 3: keys re-rotated from positions p to p' equal keys computed at p', for 1-D RoPE and M-RoPE."""

from __future__ import annotations

import numpy as np
import torch

from tests.conftest import random_frames
from videokv import VideoQA
from videokv.memory.cache import ContextCache
from videokv.models.rope import rerotate, rotate, unrotate


def layer0_keys(adapter, embeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Layer-0 keys depend only on each token and its position: the ground truth for a rotation."""
    cache = ContextCache(adapter.num_layers)
    with torch.no_grad():
        adapter.forward(embeds, positions, cache, logits="none")
    return cache.layers[0].keys


def test_rerotation_is_exact(tiny):
    ad = VideoQA.from_model(*tiny).adapter
    text = ad.text_piece("hello there, a red umbrella", 5)
    n = ad.frames_per_piece
    times = np.arange(n, dtype=float)
    frame = ad.video_pieces(random_frames(n), times, 1.0, None, ad.next_cursor(text))[0][0]
    embeds = torch.cat([text.embeds, frame.embeds])
    old = torch.cat([text.positions, frame.positions], dim=1)
    # a different placement: shift by 1000 and compact the frame's rows (as `compact` positions do)
    new = old.clone() + 1000
    if ad.rope_rows == 3:
        assert not torch.equal(old[0], old[1])  # the frame really has 3-D positions
        new[1:, text.n_tokens :] = new[0, text.n_tokens :]
    k_old = layer0_keys(ad, embeds, old)
    k_new = layer0_keys(ad, embeds, new)
    moved = rerotate(k_old, old, new, ad.rotary_emb)
    # 1e-5, or float32's resolution of an angle at these positions (~1.2e-7 * position rad) times the keys'
    # size where that is larger: Qwen3 text models (Qwen3-VL, InternVL3.5) normalise keys (k_norm) to O(1)
    resolution = 1.2e-7 * float(new.abs().max()) * k_new.abs().max().item()
    assert (moved - k_new).abs().max().item() < max(1e-5, resolution)
    assert (moved - k_old).abs().max().item() > 1e-2  # the rotation did something


def test_unrotate_inverts_rotate(tiny):
    ad = VideoQA.from_model(*tiny).adapter
    k = torch.randn(1, ad.num_kv_heads, 7, ad.head_dim)
    pos = torch.randint(0, 5000, (ad.rope_rows, 7))
    assert torch.allclose(unrotate(rotate(k, pos, ad.rotary_emb), pos, ad.rotary_emb), k, atol=1e-5)
    assert not torch.allclose(rotate(k, pos, ad.rotary_emb), k, atol=1e-3)
