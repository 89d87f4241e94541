"""validate_frames: the one entry point for in-memory frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from videokv.errors import InputError
from videokv.video import validate_frames


def _frames(t: int = 4, h: int = 8, w: int = 10) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def test_uint8_stack_passes_through() -> None:
    frames = _frames()
    out, ts = validate_frames(frames)
    assert out is frames  # already canonical: no copy
    assert ts.dtype == np.float64
    np.testing.assert_array_equal(ts, [0, 1, 2, 3])


def test_default_timestamps_use_fps_and_start() -> None:
    _, ts = validate_frames(_frames(3), fps=4.0, start=10.0)
    np.testing.assert_allclose(ts, [10.0, 10.25, 10.5])


def test_single_frame_and_non_contiguous() -> None:
    out, ts = validate_frames(_frames(1)[0])
    assert out.shape == (1, 8, 10, 3) and ts.tolist() == [0.0]
    strided = _frames(4)[:, :, ::2]
    out, _ = validate_frames(strided)
    assert out.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(out, strided)


def test_float_frames_are_scaled() -> None:
    frames = np.zeros((2, 4, 4, 3), np.float32)
    frames[1] = 1.0
    frames[0, 0, 0] = 0.5
    out, _ = validate_frames(frames)
    assert out.dtype == np.uint8
    assert out[1].min() == 255 and out[0, 0, 0, 0] == 128 and out[0, 1, 1, 0] == 0


def test_lists_of_arrays_pil_images_and_tensors() -> None:
    frames = _frames(3)
    out, _ = validate_frames(list(frames))
    np.testing.assert_array_equal(out, frames)
    images = [Image.fromarray(f) for f in frames]
    images[1] = images[1].convert("RGBA")  # converted back to RGB
    out, _ = validate_frames(images, timestamps=[0.5, 1.5, 2.0])
    np.testing.assert_array_equal(out, frames)
    out, _ = validate_frames(Image.fromarray(frames[0]))
    assert out.shape == (1, 8, 10, 3)
    out, ts = validate_frames(torch.from_numpy(frames), timestamps=torch.tensor([0.0, 1.0, 2.0]))
    np.testing.assert_array_equal(out, frames)
    assert ts.dtype == np.float64
    out, _ = validate_frames([torch.from_numpy(f).float() / 255 for f in frames])
    np.testing.assert_array_equal(out, frames)
    out, _ = validate_frames(f for f in frames)  # any iterable
    assert out.shape == frames.shape


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        (
            np.zeros((4, 32, 32), np.uint8),
            r"frames must have shape \[T, H, W, 3\] \(RGB\); got \(4, 32, 32\)",
        ),
        (np.zeros((2, 8, 8, 4), np.uint8), r"got \(2, 8, 8, 4\)"),
        (np.zeros((2, 3, 8, 8), np.uint8), "channels-first"),
        (np.zeros((8, 8), np.uint8), r"got \(8, 8\)"),
        (np.zeros((0, 8, 8, 3), np.uint8), "empty"),
        (np.zeros((2, 0, 8, 3), np.uint8), "non-zero"),
        ([], "empty"),
        ([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8)], "same size.*frame 1"),
        ([np.zeros((8, 8, 3)), np.zeros((8, 8))], r"frame 1 must have shape \[H, W, 3\]"),
        (np.full((1, 2, 2, 3), np.nan), "NaN"),
        (np.full((1, 2, 2, 3), 2.0), r"\[0, 1\]"),
        (np.full((1, 2, 2, 3), 300, np.int32), r"\[0, 255\]"),
        (np.zeros((1, 2, 2, 3), bool), "dtype bool"),
        ("frames.mp4", "got str"),
        (42, "got int"),
    ],
)
def test_rejects_bad_frames(frames: object, message: str) -> None:
    with pytest.raises(InputError, match=message):
        validate_frames(frames)


@pytest.mark.parametrize(
    ("timestamps", "message"),
    [
        ([0.0, 1.0], "got 2 timestamps for 3 frames"),
        ([0.0, 2.0, 1.0], r"strictly increasing; timestamp 2"),
        ([0.0, 1.0, 1.0], "strictly increasing"),
        ([-1.0, 0.0, 1.0], ">= 0"),
        ([0.0, float("nan"), 1.0], "NaN"),
        ([[0.0, 1.0, 2.0]], "1-D"),
        (["a", "b", "c"], "numbers"),
    ],
)
def test_rejects_bad_timestamps(timestamps: object, message: str) -> None:
    with pytest.raises(InputError, match=message):
        validate_frames(_frames(3), timestamps=timestamps)


def test_rejects_bad_fps_or_start() -> None:
    with pytest.raises(InputError, match="fps"):
        validate_frames(_frames(2), fps=0)
    with pytest.raises(InputError, match="start"):
        validate_frames(_frames(2), start=-1.0)
