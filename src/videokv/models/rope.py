"""Rotate, un-rotate and re-rotate cached keys between positions, for 1-D RoPE and M-RoPE.

transformers caches keys *after* RoPE, rotated at the positions they were computed at. Moving a key from
position p to p' is one more rotation by (p' - p) on every frequency, because RoPE angles are linear in the
position; for M-RoPE (Qwen2-VL) each frequency takes its delta from its own row (t, h or w) of the position
ids. The angles come from the model's own rotary module, so this follows whatever frequencies and sections
the checkpoint configures (default RoPE: exact; scaled variants whose angle is not linear are rejected).
"""

from __future__ import annotations

import torch


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def angles(
    rotary: torch.nn.Module, positions: torch.Tensor, like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [n, head_dim] of the rotation to positions [P, n] (P = 3 for M-RoPE, 1 for 1-D), on
    `like`'s device: computed once, they can rotate several tensors (`apply_rotation`). Per-head positions
    [kv_heads, P, n] (each KV head at its own positions) give cos/sin [kv_heads, n, head_dim], which rotate
    keys [..., kv_heads, n, head_dim] head by head."""
    if positions.dim() == 3:
        heads, rows, n = positions.shape
        cos, sin = angles(rotary, positions.transpose(0, 1).reshape(rows, heads * n), like)
        return cos.view(heads, n, -1), sin.view(heads, n, -1)
    pos = positions.to(like.device)
    pos = pos.unsqueeze(1) if pos.shape[0] == 3 and getattr(rotary, "mrope_section", None) else pos[:1]
    rope_type = getattr(rotary, "rope_type", "default")
    if rope_type not in ("default", "linear"):
        raise NotImplementedError(
            f"re-rotation needs a RoPE linear in the position; got rope_type={rope_type!r}"
        )
    probe = torch.empty(0, dtype=torch.float32, device=like.device)
    cos, sin = rotary(probe, pos)
    scale = float(getattr(rotary, "attention_scaling", 1.0))
    return cos[0].float() / scale, sin[0].float() / scale


def rotate(keys: torch.Tensor, positions: torch.Tensor, rotary: torch.nn.Module) -> torch.Tensor:
    """Rotate un-rotated keys [..., n, head_dim] to `positions` [P, n] (or per head [kv_heads, P, n])."""
    return apply_rotation(keys, *angles(rotary, positions, keys))


def apply_rotation(keys: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate keys [..., n, head_dim] by angles whose cos/sin [n, head_dim] (or [kv_heads, n, head_dim])
    are given (see `angles`)."""
    k = keys.float()
    return (k * cos + _rotate_half(k) * sin).to(keys.dtype)


def unrotate(keys: torch.Tensor, positions: torch.Tensor, rotary: torch.nn.Module) -> torch.Tensor:
    """Undo the rotation of keys [..., n, head_dim] that were rotated at `positions` [P, n] (or per head
    [kv_heads, P, n])."""
    cos, sin = angles(rotary, positions, keys)
    return apply_rotation(keys, cos, -sin)


def rerotate(
    keys: torch.Tensor, old: torch.Tensor, new: torch.Tensor, rotary: torch.nn.Module
) -> torch.Tensor:
    """Move keys [..., n, head_dim] rotated at positions `old` to positions `new` (both [P, n], or per head
    [kv_heads, P, n])."""
    return rotate(keys, new.to(old.device) - old, rotary)
