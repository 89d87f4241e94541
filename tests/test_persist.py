"""Invariant 5: a session saved and loaded in another process answers exactly as before, and continues."""

from __future__ import annotations

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
    before = probe_logits(s)
    # a crash while the next save's tensors were written (a temporary file), or after they were written and
    # before the manifest naming them replaced the old one: the previous save is what loads
    (folder / ".tensors-abc.1234.tmp").write_bytes(b"half")
    (folder / "tensors-0123456789ab").write_bytes(b"whole but never named")
    loaded = qa.load_session(folder)
    assert torch.equal(probe_logits(loaded), before)
    s.add_frames(random_frames(2, seed=1))
    s.save(folder)  # the next save removes what the crashed one left
    assert len([p for p in folder.iterdir() if p.name.startswith("tensors-")]) == 1
    assert torch.equal(probe_logits(qa.load_session(folder)), probe_logits(s))


def _flip(path, at: float) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage",
    [
        "missing",
        "no_manifest",
        "manifest_byte",
        "truncated_tensors",
        "tensor_byte",
        "no_tensors",
        "other_model",
    ],
)
def test_corrupt_save_is_a_clear_error(tmp_path, damage):
    from videokv.persist import MANIFEST
    from videokv.storage import pack, unpack

    qa = VideoQA.from_model(*get_tiny("qwen2_vl"), memory="rekv", frame_tokens=16)
    s = qa.session()
    s.add_frames(random_frames(2))
    folder = s.save(tmp_path / "save")
    tensors = next(p for p in folder.iterdir() if p.name.startswith("tensors-"))
    if damage == "missing":
        folder = tmp_path / "nowhere"
    elif damage == "no_manifest":
        (folder / MANIFEST).unlink()
    elif damage == "manifest_byte":  # a flipped byte in the JSON header: caught by the checksum
        _flip(folder / MANIFEST, 0.5)
    elif damage == "truncated_tensors":
        data = tensors.read_bytes()
        tensors.write_bytes(data[: len(data) // 2])
    elif damage == "tensor_byte":  # a flipped byte in the K/V: caught, never served as NaN
        _flip(tensors, 0.9)
    elif damage == "no_tensors":
        tensors.unlink()
    else:  # a valid record of another model
        manifest, _ = unpack((folder / MANIFEST).read_bytes(), "m")
        manifest["model"]["layers"] = 99
        (folder / MANIFEST).write_bytes(pack({}, manifest))
    with pytest.raises(SaveError) as info:
        qa.load_session(folder)
    assert str(info.value)
    if damage in ("manifest_byte", "tensor_byte", "truncated_tensors"):
        assert "checksum" in str(info.value) or "truncated" in str(info.value)
    # the live session is untouched by a failed load of its save
    assert s.ask("anything?", max_new_tokens=2).stats["frames"] == 2


def test_save_and_load_through_an_object_store_answer_like_a_folder(tmp_path, s3_url):
    """A real S3 store (SeaweedFS): the same save through s3:// and through a folder loads to the same
    memory (the same log-probabilities), and a second save replaces the first atomically."""
    qa = VideoQA.from_model(*get_tiny("qwen2_vl"), memory="rekv", frame_tokens=16)
    s = qa.session()
    s.add_frames(random_frames(4))
    s.add_text("a red bicycle", t=s.clock)
    url = f"{s3_url}/saves/one"
    s.save(url)
    s.save(tmp_path / "one")
    from_s3, from_dir = qa.load_session(url), qa.load_session(tmp_path / "one")
    assert torch.equal(probe_logits(from_s3), probe_logits(from_dir))
    assert torch.equal(probe_logits(from_s3), probe_logits(s))
    a, b = from_s3.ask("what color?", max_new_tokens=4), s.ask("what color?", max_new_tokens=4)
    assert a.text == b.text
    s.add_frames(random_frames(2, seed=3))
    s.save(url)
    assert torch.equal(probe_logits(qa.load_session(url)), probe_logits(s))
    from videokv.storage import open_backend

    assert sum(k.startswith("tensors-") for k in open_backend(url).list()) == 1
