"""Checking and normalising in-memory video frames.

Everything in videokv that takes frames from the user goes through :func:`validate_frames`, which turns
the many shapes frames arrive in (a numpy stack, one frame, a list of arrays or PIL images, torch tensors,
floats in ``[0, 1]``) into one canonical form: a contiguous ``uint8`` array ``[T, H, W, 3]`` plus
``float64`` timestamps ``[T]`` in seconds.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from videokv.errors import InputError

__all__ = ["frame_to_rgb_uint8", "validate_frames"]

_SHAPE_HINT = "frames must have shape [T, H, W, 3] (RGB)"


def _is_torch_tensor(obj: Any) -> bool:
    """Tell whether ``obj`` is a ``torch.Tensor``, without importing torch."""
    return type(obj).__module__.startswith("torch") and hasattr(obj, "detach")


def _is_pil_image(obj: Any) -> bool:
    """Tell whether ``obj`` is a ``PIL.Image.Image``, without importing PIL."""
    return type(obj).__module__.startswith("PIL") and hasattr(obj, "convert") and hasattr(obj, "mode")


def _to_numpy(obj: Any) -> np.ndarray:
    """Turn a torch tensor, a PIL image or an array-like into a numpy array."""
    if isinstance(obj, np.ndarray):
        return obj
    if _is_torch_tensor(obj):
        return obj.detach().cpu().numpy()
    if _is_pil_image(obj):
        return np.asarray(obj if obj.mode == "RGB" else obj.convert("RGB"))
    try:
        return np.asarray(obj)
    except (TypeError, ValueError) as exc:
        raise InputError(f"cannot read frames of type {type(obj).__name__}: {exc}") from exc


def _to_uint8(arr: np.ndarray, what: str) -> np.ndarray:
    """Convert pixel values to uint8: uint8 passes, floats must lie in [0, 1], integers in [0, 255]."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise InputError(f"{what} contain NaN or infinite values")
        if arr.size:
            lo, hi = float(arr.min()), float(arr.max())
            if lo < 0.0 or hi > 1.0:
                raise InputError(
                    f"float {what} must have values in [0, 1]; got values in [{lo:.4g}, {hi:.4g}] "
                    "(pass uint8 arrays for 0-255 pixel values)"
                )
        return np.rint(arr * 255.0).astype(np.uint8)
    if arr.dtype.kind in "iu":
        if arr.size:
            lo, hi = int(arr.min()), int(arr.max())
            if lo < 0 or hi > 255:
                raise InputError(f"integer {what} must have values in [0, 255]; got values in [{lo}, {hi}]")
        return arr.astype(np.uint8)
    raise InputError(f"{what} must be uint8 or float in [0, 1]; got dtype {arr.dtype}")


def frame_to_rgb_uint8(frame: Any, what: str = "frame") -> np.ndarray:
    """Return one frame (``[H, W, 3]`` array, PIL image or tensor; uint8 or float in [0, 1]) as uint8 RGB."""
    arr = _to_numpy(frame)
    if arr.ndim != 3 or arr.shape[-1] != 3 or 0 in arr.shape:
        hint = " (channels-first? move the channel axis last)" if arr.ndim == 3 and arr.shape[0] == 3 else ""
        raise InputError(f"{what} must have shape [H, W, 3] (RGB); got {tuple(arr.shape)}{hint}")
    return _to_uint8(arr, what)


def _stack(frames: Iterable[Any]) -> np.ndarray:
    """Stack a sequence of single frames into ``[T, H, W, 3]`` uint8, checking they all have one size."""
    items = list(frames)
    if not items:
        raise InputError("frames is empty: need at least one frame")
    out: list[np.ndarray] = []
    for i, item in enumerate(items):
        arr = frame_to_rgb_uint8(item, what=f"frame {i}")
        if out and arr.shape != out[0].shape:
            raise InputError(
                f"all frames must have the same size; frame {i} has shape {tuple(arr.shape)} "
                f"but frame 0 has shape {tuple(out[0].shape)}"
            )
        out.append(arr)
    return np.stack(out)


def _check_timestamps(timestamps: Any, count: int) -> np.ndarray:
    """Return ``timestamps`` as float64 ``[count]``, finite, non-negative and strictly increasing."""
    ts = _to_numpy(timestamps)
    try:
        ts = np.asarray(ts, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"timestamps must be numbers (seconds): {exc}") from exc
    if ts.ndim != 1:
        raise InputError(f"timestamps must be a 1-D sequence of seconds; got shape {tuple(ts.shape)}")
    if ts.shape[0] != count:
        raise InputError(f"got {ts.shape[0]} timestamps for {count} frames; need one timestamp per frame")
    if not np.isfinite(ts).all():
        raise InputError("timestamps contain NaN or infinite values")
    if count and ts.min() < 0:
        i = int(np.argmin(ts))
        raise InputError(f"timestamps must be >= 0 seconds; timestamp {i} is {ts[i]}")
    steps = np.diff(ts)
    if (steps <= 0).any():
        i = int(np.argmax(steps <= 0)) + 1
        raise InputError(
            f"timestamps must be strictly increasing; timestamp {i} ({ts[i]}) follows {ts[i - 1]}"
        )
    return np.ascontiguousarray(ts)


def validate_frames(
    frames: Any,
    timestamps: Any = None,
    fps: float = 1.0,
    start: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Check frames (and their timestamps) and return them in canonical form.

    Args:
        frames: a numpy array ``[T, H, W, 3]`` or ``[H, W, 3]`` (one frame), a torch tensor of the same
            shapes, or a list/tuple/iterable of ``[H, W, 3]`` arrays, tensors or PIL images. Pixel values are
            uint8, or float in ``[0, 1]`` (converted with rounding), or integers in ``[0, 255]``.
        timestamps: seconds of each frame, ``[T]``, non-negative and strictly increasing. When omitted,
            frame ``i`` is placed at ``start + i / fps``.
        fps: frame rate used for the default timestamps; must be > 0.
        start: time of the first frame for the default timestamps; must be >= 0.

    Returns:
        ``(frames, timestamps)``: a C-contiguous uint8 array ``[T, H, W, 3]`` (the input itself when it was
        already one) and a float64 array ``[T]``.

    Raises:
        InputError: wrong shape or channel count, no frames, frames of different sizes, NaN or out-of-range
            values, or timestamps of the wrong length, negative or not increasing.
    """
    if isinstance(frames, np.ndarray) or _is_torch_tensor(frames):
        arr = _to_numpy(frames)
        if arr.ndim == 3 and arr.shape[-1] == 3:
            arr = arr[None]
        if arr.ndim != 4 or arr.shape[-1] != 3:
            hint = ""
            if arr.ndim == 4 and arr.shape[1] == 3:
                hint = " (channels-first? move the channel axis last, e.g. frames.permute(0, 2, 3, 1))"
            raise InputError(f"{_SHAPE_HINT}; got {tuple(arr.shape)}{hint}")
        if arr.shape[0] == 0:
            raise InputError("frames is empty: need at least one frame")
        if 0 in arr.shape:
            raise InputError(f"{_SHAPE_HINT} with non-zero sizes; got {tuple(arr.shape)}")
        arr = _to_uint8(arr, "frames")
    elif _is_pil_image(frames):
        arr = _stack([frames])
    elif isinstance(frames, (str, bytes)) or not isinstance(frames, Iterable):
        raise InputError(
            "frames must be an array [T, H, W, 3], a tensor, or a list of frames; "
            f"got {type(frames).__name__}"
        )
    else:
        arr = _stack(frames)
    arr = np.ascontiguousarray(arr)
    count = arr.shape[0]

    if timestamps is None:
        if not np.isfinite(fps) or fps <= 0:
            raise InputError(f"fps must be a positive number; got {fps}")
        if not np.isfinite(start) or start < 0:
            raise InputError(f"start must be >= 0 seconds; got {start}")
        ts = float(start) + np.arange(count, dtype=np.float64) / float(fps)
    else:
        ts = _check_timestamps(timestamps, count)
    return arr, ts
