"""The optional FAISS index: the same top-k rows as the torch matrix product, and the same answers."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import get_tiny, random_frames
from videokv import MemoryConfig, VideoQA
from videokv.errors import ConfigError
from videokv.policies.retrieve import TopK
from videokv.qa import question_text

faiss = pytest.importorskip("faiss")
from videokv.memory.faiss_index import FaissIndex  # noqa: E402


def torch_topk(rkeys: torch.Tensor, q: torch.Tensor, k: int) -> list[list[int]]:
    scores = torch.einsum("nld,ld->ln", rkeys, q)
    return [torch.topk(s, k).indices.tolist() for s in scores]


def test_search_matches_matmul_topk_and_survives_truncate():
    g = torch.Generator().manual_seed(0)
    rkeys = torch.randn(500, 3, 32, generator=g)
    q = torch.randn(3, 32, generator=g)
    index = FaissIndex(3, 32)
    for r in rkeys:
        index.add(r)
    assert index.search(q, 10) == torch_topk(rkeys, q, 10)
    index.truncate(200)
    assert len(index) == 200
    assert index.search(q, 7) == torch_topk(rkeys[:200], q, 7)


def test_faiss_backend_answers_as_torch():
    model, tok = get_tiny("qwen2_vl")
    frames = random_frames(12)
    sessions = {}
    for backend in ("torch", "faiss"):
        config = MemoryConfig(name=backend, retrieve=TopK(k=3), positions="compact", index=backend)
        s = VideoQA.from_model(model, tok, memory=config, frame_tokens=16).session()
        s.add_frames(frames)
        sessions[backend] = s
    assert sessions["faiss"].engine.index.catalog().search is not None
    with torch.no_grad():
        ctx = {b: s.engine._retrieve(question_text("what is there?")) for b, s in sessions.items()}
    assert ctx["torch"][2] == ctx["faiss"][2]  # the same evidence: the same blocks were selected
    a, b = (sessions[k].ask("what is there?", max_new_tokens=4) for k in ("torch", "faiss"))
    assert a.text == b.text


def test_unknown_index_backend():
    with pytest.raises(ConfigError, match="index"):
        MemoryConfig(index="annoy")
