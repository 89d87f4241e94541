"""Invariant 5: a session saved and loaded in another process answers exactly as before, and continues."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import get_tiny, random_frames
from tests.test_engine import stream_items
from tests.test_presets import probe_logits
from videokv import VideoQA
from videokv.persist import SaveError

CHILD = r"""
import sys, torch
from tests.conftest import get_tiny
from tests.test_presets import probe_logits
from tests.conftest import random_frames
from videokv import VideoQA
qa = VideoQA.from_model(*get_tiny(sys.argv[1]), frame_tokens=16)
s = qa.load_session(sys.argv[2])
out = {"before": probe_logits(s)}
s.add_frames(random_frames(2, seed=7))
s.add_text("a blue car passes", t=s.clock)
out["after"] = probe_logits(s)
out["answer"] = s.ask("what colour is the umbrella?", max_new_tokens=4).text
torch.save(out, sys.argv[3])
"""


@pytest.mark.parametrize("preset", ["full", "rekv", "streamkv", "x2l", "mukv"])
def test_save_load_in_fresh_process(tmp_path, preset):
    family = "qwen2_vl"
    qa = VideoQA.from_model(*get_tiny(family), memory=preset, frame_tokens=16)
    s = qa.session()
    s.engine.ingest(stream_items(9), chunk_frames=3)
    s.save(tmp_path / "save")
    s.save(tmp_path / "save")  # overwriting an existing save works
    before = probe_logits(s)
    s.add_frames(random_frames(2, seed=7))
    s.add_text("a blue car passes", t=s.clock)
    after = probe_logits(s)
    answer = s.ask("what colour is the umbrella?", max_new_tokens=4).text
    out = tmp_path / "child.pt"
    subprocess.run(
        [sys.executable, "-c", CHILD, family, str(tmp_path / "save"), str(out)],
        check=True,
        cwd=Path(__file__).parent.parent,
        timeout=300,
    )
    got = torch.load(out)
    assert torch.equal(got["before"], before)
    assert torch.equal(got["after"], after)
    assert got["answer"] == answer


def test_load_restores_every_scalar_of_the_stream_state(tmp_path):
    qa = VideoQA.from_model(*get_tiny("qwen2_vl"), memory="rekv", frame_tokens=16)
    s = qa.session()
    s.add_frames(random_frames(3))
    s.add_text("a line", t=s.clock)
    loaded = qa.load_session(s.save(tmp_path / "save"))
    for name in type(s.engine).SCALAR_STATE:
        assert getattr(loaded.engine, name) == getattr(s.engine, name), name
    assert loaded.engine.tokens_per_frame == s.engine.tokens_per_frame > 0


def test_crash_mid_save_leaves_previous_save_readable(tmp_path):
    qa = VideoQA.from_model(*get_tiny("qwen2_vl"), memory="rekv", frame_tokens=16)
    s = qa.session()
    s.add_frames(random_frames(3))
    folder = s.save(tmp_path / "save")
    # a crash after the old save was moved aside and before the new one was renamed into place
    folder.rename(tmp_path / ".save.old")
    loaded = qa.load_session(folder)
    assert torch.equal(probe_logits(loaded), probe_logits(s))


@pytest.mark.parametrize("damage", ["missing", "no_manifest", "bad_json", "truncated_tensors", "other_model"])
def test_corrupt_save_is_a_clear_error(tmp_path, damage):
    qa = VideoQA.from_model(*get_tiny("qwen2_vl"), memory="rekv", frame_tokens=16)
    s = qa.session()
    s.add_frames(random_frames(2))
    folder = s.save(tmp_path / "save")
    if damage == "missing":
        folder = tmp_path / "nowhere"
    elif damage == "no_manifest":
        (folder / "manifest.json").unlink()
    elif damage == "bad_json":
        (folder / "manifest.json").write_text("{not json")
    elif damage == "truncated_tensors":
        data = (folder / "tensors.safetensors").read_bytes()
        (folder / "tensors.safetensors").write_bytes(data[: len(data) // 2])
    else:
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["model"]["layers"] = 99
        (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SaveError) as info:
        qa.load_session(folder)
    assert str(info.value)
    # the live session is untouched by a failed load of its save
    assert s.ask("anything?", max_new_tokens=2).stats["frames"] == 2
