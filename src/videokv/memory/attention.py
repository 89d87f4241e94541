"""The project's attention function, registered in transformers' attention registry as "videokv".

Layers of a videokv cache may hold different numbers of tokens (per-layer retrieval), so the causal mask
that transformers builds from the first layer does not fit every layer. This function receives each layer's
full K/V and applies the causal rule itself: the new queries are the last `q_len` positions of the keys,
and each sees every cached key plus the new keys up to itself. It is numerically the same computation as
transformers' SDPA path. An optional observer (set with `observe_attention`) receives, per layer, the
attention weights of chosen query rows: that is how policies get attention statistics for a few queries
without turning on eager attention for the whole model. Chosen new-token rows can also be confined (with
`confine_to_new`) to the tokens of their own forward, the cache hidden from them: StreamKV's guidance prompt
sees only the segment it follows. The new tokens can also be split into groups (with `separate_groups`),
each seeing the cache and only its own group: several sequences prefilled side by side after one shared
prefix, each as if it were forwarded alone (MuKV's frame and patch blocks, each encoded after the init
tokens).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

ATTN_NAME = "videokv"

# observer(layer_idx, weights [B, heads, n_rows, kv_len]); rows = which new-token rows to report;
# layers = which layers report (None: all)
_OBSERVER: contextvars.ContextVar[tuple[Callable, slice, frozenset | None] | None] = contextvars.ContextVar(
    "videokv_obs", default=None
)


# new-token rows that see only the new tokens of their forward (causally), not the cached ones
_CONFINED: contextvars.ContextVar[slice | None] = contextvars.ContextVar("videokv_confined", default=None)


# per new token, the id of its group: a new token sees the cached keys and the new tokens of its own group
_GROUPS: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar("videokv_groups", default=None)


def _causal_mask(q_len: int, kv_len: int, device: torch.device) -> torch.Tensor | None:
    confined, groups = _CONFINED.get(), _GROUPS.get()
    if q_len == 1 and confined is None and groups is None:
        return None
    mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=device).tril(diagonal=kv_len - q_len)
    if confined is not None:
        mask[confined, : kv_len - q_len] = False
    if groups is not None:
        if groups.numel() != q_len:
            raise ValueError(f"separate_groups covers {groups.numel()} new tokens; the forward has {q_len}")
        g = groups.to(device)
        mask[:, kv_len - q_len :] &= g[:, None] == g[None, :]
    return mask


def videokv_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """query [B, H, q, D], key/value [B, H_kv, kv, D] -> (output [B, q, H, D], None)."""
    q_len, kv_len = query.shape[2], key.shape[2]
    mask = _causal_mask(q_len, kv_len, query.device)
    out = F.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, scale=scaling, enable_gqa=key.shape[1] != query.shape[1]
    )
    obs = _OBSERVER.get()
    layer = int(getattr(module, "layer_idx", 0))
    if obs is not None and (obs[2] is None or layer in obs[2]):
        fn, rows, _ = obs
        q = query[:, :, rows]
        k = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)
        scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * (scaling or q.shape[-1] ** -0.5)
        if mask is not None:
            scores = scores.masked_fill(~mask[rows], float("-inf"))
        fn(layer, scores.softmax(-1))
    return out.transpose(1, 2).contiguous(), None


@contextlib.contextmanager
def observe_attention(
    fn: Callable[[int, torch.Tensor], None], rows: slice, layers: set[int] | None = None
) -> Iterator[None]:
    """Within the block, call fn(layer_idx, weights) with the attention of the new-token `rows` (at
    `layers`, default all)."""
    token = _OBSERVER.set((fn, rows, None if layers is None else frozenset(layers)))
    try:
        yield
    finally:
        _OBSERVER.reset(token)


@contextlib.contextmanager
def confine_to_new(rows: slice) -> Iterator[None]:
    """Within the block, the new-token `rows` of a forward attend only to that forward's new tokens, each
    to those up to itself: the cached keys are masked for them (for the other rows nothing changes)."""
    token = _CONFINED.set(rows)
    try:
        yield
    finally:
        _CONFINED.reset(token)


@contextlib.contextmanager
def separate_groups(sizes: list[int]) -> Iterator[None]:
    """Within the block, the new tokens of a forward form consecutive groups of `sizes` tokens: each token
    attends to the cached keys and to the tokens of its own group up to itself, as if its group had been
    forwarded alone after the cache (the other groups are masked for it)."""
    ids = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes, dtype=torch.long))
    token = _GROUPS.set(ids)
    try:
        yield
    finally:
        _GROUPS.reset(token)


def register() -> str:
    """Register the attention function (idempotent) and return its name."""
    AttentionInterface.register(ATTN_NAME, videokv_attention)
    return ATTN_NAME


def use_videokv_attention(model: torch.nn.Module) -> None:
    """Make the language model of `model` attend with the videokv function (the vision tower is untouched)."""
    register()
    text_config = model.config.get_text_config()
    text_config._attn_implementation = ATTN_NAME
