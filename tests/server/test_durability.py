"""Durability: the journal on its own, and a real server killed with SIGKILL mid-ingest and restarted."""

from __future__ import annotations

import base64
import contextlib
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from tests.conftest import random_frames
from tests.server.conftest import ServerHandle, make_clip
from videokv.api import VideoQA
from videokv.journal import Journal

QUESTION = "what colour is the umbrella?"
CHOICES = ["red", "blue", "green"]


@pytest.fixture(scope="module")
def qa() -> VideoQA:
    return VideoQA.from_pretrained("tiny-llava_onevision")


def same_memory(a, b) -> None:
    """Two sessions hold the same memory: scalars, context K/V, and every block's tensors and metadata."""
    ea, eb = a.engine, b.engine
    for name in ea.SCALAR_STATE:
        if name == "ingest_seconds":  # wall time spent, not memory
            continue
        assert getattr(ea, name) == getattr(eb, name), name
    assert ea.unit_tokens == eb.unit_tokens and ea.blocks == eb.blocks
    for la, lb in zip(ea.cache.layers, eb.cache.layers):
        assert torch.equal(la.keys, lb.keys) and torch.equal(la.values, lb.values)
    assert len(ea.store) == len(eb.store)
    for row in range(len(ea.store)):
        x, y = ea.store.get(row), eb.store.get(row)
        assert (x.index, x.unit, x.kind, x.t0, x.t1, x.level, x.text) == (
            y.index,
            y.unit,
            y.kind,
            y.t0,
            y.t1,
            y.level,
            y.text,
        )
        for tx, ty in zip(
            [*x.keys, *x.values, *x.positions, x.rkey], [*y.keys, *y.values, *y.positions, y.rkey]
        ):
            assert torch.equal(tx, ty)


def answers(session) -> tuple:
    free = session.ask(QUESTION, max_new_tokens=6)
    pick = session.ask(QUESTION, choices=CHOICES)
    return free.text, [e.to_dict() for e in free.evidence], pick.choice


PRESET_CASES = {
    "rekv": None,
    "full": None,
    "window": ["window=48"],  # small enough that the context drops tokens from its front
    "x2l": None,
    "mukv": None,
    "streamkv": None,
}


def stream_steps(session, steps: int, seed: int = 0):
    """`steps` ingest steps of 3 frames and a subtitle, each ended as a commit ends it (unit closed)."""
    for k in range(steps):
        session.add_frames(random_frames(3, seed=seed + k))
        session.add_text(f"line {seed + k}: the umbrella is red")
        session.engine.flush()
        yield k


def objects(journal: Journal, folder: str) -> list[str]:
    return sorted(k for k in journal.store.list() if k.startswith(folder + "/"))


@pytest.fixture(params=["folder", "s3"])
def journal_root(request, tmp_path: Path):
    """Where a test's journals live: a local folder, or a real S3 store (SeaweedFS)."""
    if request.param == "folder":
        return lambda name: str(tmp_path / name)
    url = request.getfixturevalue("s3_url")
    return lambda name: f"{url}/{name}"


@pytest.mark.parametrize("memory", list(PRESET_CASES))
def test_journal_round_trip_and_interrupted_commit(qa: VideoQA, journal_root, memory: str):
    overrides = PRESET_CASES[memory]
    session = qa.session(memory=memory, memory_set=overrides)
    root = journal_root("journal")
    journal = Journal(root)
    journal.commit(session, {"name": "x"})
    for _ in stream_steps(session, 4):
        journal.commit(session, {"name": "x"})
    committed = journal.count
    assert committed == len(session.engine.store)
    engine = session.engine
    # the context is journaled incrementally: segments cover what is in it, each token written once
    segments = journal.segments
    if engine.first_kept == engine.non_sink_tokens:  # nothing past the sinks (mukv: independent units)
        assert segments == []
    else:
        assert segments[0][1] <= engine.first_kept and segments[-1][2] == engine.non_sink_tokens
    assert all(a == prev[2] for prev, (_, a, _) in zip(segments, segments[1:]))
    assert objects(journal, "context") == sorted(n for n, _, _ in segments)
    assert len(journal.index) <= 3  # index parts merge as the stream grows
    if memory == "window":
        assert engine.first_kept > 0 and segments[0][1] > 0  # segments wholly dropped were deleted

    # a commit interrupted by a kill: new block and context objects (never named by a record), and on a
    # folder a half-written temporary file
    later = qa.session(memory=memory, memory_set=overrides)
    list(stream_steps(later, 4))
    list(stream_steps(later, 1, seed=9))
    for row in range(committed, committed + 3):
        journal.store.put(f"blocks/{row:012d}-{journal.gen + 1:08d}", b"partial block")
    journal.store.put(f"context/{engine.non_sink_tokens:012d}-000000999999-{journal.gen + 1:08d}", b"x")
    if journal.store.is_local:
        (Path(root) / ".state.1a2b3c.tmp").write_bytes(b"half a state")
    named_blocks = sorted(r["name"] for r in journal.rows)

    fresh = Journal(root)
    assert fresh.recover() is False  # no batch was open
    assert fresh.scrub() == 4  # the 3 blocks and the context part the kill left, deleted
    restored = fresh.load(qa)
    same_memory(restored, session)
    assert answers(restored) == answers(session)
    assert objects(fresh, "blocks") == named_blocks and len(named_blocks) == committed
    assert objects(fresh, "context") == sorted(n for n, _, _ in segments)
    if journal.store.is_local:
        assert not list(Path(root).glob(".*.tmp"))
    # and it continues: the same input gives the same memory as the uninterrupted session
    list(stream_steps(restored, 1, seed=9))
    same_memory(restored, later)
    fresh.commit(restored, {"name": "x"})
    same_memory(Journal(root).load(qa), later)


@pytest.mark.parametrize("memory", ["rekv", "window"])
def test_journal_batch_rolls_back_in_process_and_after_a_crash(qa: VideoQA, journal_root, memory: str):
    overrides = PRESET_CASES[memory]
    session = qa.session(memory=memory, memory_set=overrides)
    root = journal_root("j")
    journal = Journal(root)
    list(stream_steps(session, 2))
    journal.commit(session, {})
    before = Journal(root).load(qa)
    n_before = journal.count

    # a batch whose later step fails: the engine rolls back and the journal goes back to the base
    engine = session.engine
    journal.begin()
    with pytest.raises(RuntimeError), engine.transaction():
        for _ in stream_steps(session, 3, seed=5):
            journal.commit(session, {})
        assert journal.segments[-1][2] == engine.non_sink_tokens > before.engine.non_sink_tokens
        raise RuntimeError("a later chunk failed")
    journal.rollback()
    assert journal.count == n_before and len(objects(journal, "blocks")) == n_before
    assert not journal.store.exists("base")
    same_memory(Journal(root).load(qa), before)

    # a batch cut by a crash (never ended): recover() undoes the whole batch, and again after a second
    # crash (recovery is idempotent; the same-inode bug of hard-linked bases cannot happen: bases are copies)
    journal.begin()
    crashed = Journal(root)  # killed right after begin: state and base hold the same record
    assert crashed.recover() is True
    journal = Journal(root)
    journal.load(qa)
    journal.begin()
    for _ in stream_steps(session, 3, seed=7):
        journal.commit(session, {})
    crashed = Journal(root)
    assert crashed.recover() is True
    assert Journal(root).recover() is False
    crashed.scrub()
    same_memory(crashed.load(qa), before)
    assert len(objects(crashed, "blocks")) == n_before
    assert objects(crashed, "context") == sorted(n for n, _, _ in crashed.segments)


# ---- SIGKILL a real server mid-ingest -------------------------------------------------------------------
def journal_blocks(folder: Path) -> int:
    return int(Journal(folder / "journal").read_header()["blocks"])


def test_sigkill_mid_ingest_then_restart(serve_factory, qa: VideoQA, tmp_path: Path):
    clip = make_clip(tmp_path / "long.mp4", seconds=60, fps=2, seed=7)
    total = 120  # frames at 2 fps
    server: ServerHandle = serve_factory()
    with server.client() as client:
        sid = client.post("/v1/sessions", json={"memory": "rekv", "fps": 2.0}).json()["id"]
        other = client.post("/v1/sessions", json={"memory": "full"}).json()["id"]
        r = client.post(f"/v1/sessions/{other}/frames", json={"raw": "", "shape": [1, 1, 1, 3]})
        assert r.status_code == 400
        client.post(
            f"/v1/sessions/{other}/text", json={"events": [{"text": "the umbrella is red", "start": 0.5}]}
        )
        r = client.post(f"/v1/sessions/{sid}/source", json={"url": str(clip), "realtime": False})
        assert r.status_code == 202
        folder = server.data_dir / "sessions" / sid
        deadline = time.monotonic() + 240
        while journal_blocks(folder) < 24 and time.monotonic() < deadline:
            time.sleep(0.05)
        committed = journal_blocks(folder)
        assert 24 <= committed < total, "the source must still be ingesting when the server is killed"
    server.kill()
    assert server.proc.returncode == -9
    at_kill = journal_blocks(folder)
    assert at_kill >= committed

    server.start()
    with server.client() as client:
        listed = {s["id"]: s for s in client.get("/v1/sessions").json()}
        assert set(listed) == {sid, other}
        assert listed[sid]["blocks"] >= at_kill and listed[sid]["memory"] == "rekv"
        assert listed[other]["clock"] == pytest.approx(0.5) and listed[other]["memory"] == "full"
        # the live source resumed where the journal ends: let it finish, then nothing is lost or doubled
        status = listed[sid]
        deadline = time.monotonic() + 300
        while status["source"] is None or status["source"]["state"] == "running":
            assert time.monotonic() < deadline
            time.sleep(0.2)
            status = client.get(f"/v1/sessions/{sid}").json()
        assert status["source"]["state"] == "done", status
        assert status["frames"] == total and status["blocks"] == total
        assert status["clock"] == pytest.approx(60.0)
        timeline = client.get(f"/v1/sessions/{sid}/timeline").json()
        assert timeline["thumbnails"] == [i / 2 for i in range(total)]
        served = client.post(
            f"/v1/sessions/{sid}/ask", json={"question": QUESTION, "max_new_tokens": 6}
        ).json()
        picked = client.post(
            f"/v1/sessions/{sid}/ask", json={"question": QUESTION, "choices": CHOICES}
        ).json()
        served_other = client.post(
            f"/v1/sessions/{other}/ask", json={"question": QUESTION, "choices": CHOICES}
        )

    # the server's memory is its journal: a session restored in this process answers the same
    assert journal_blocks(folder) == total
    local = Journal(folder / "journal").load(qa, spill_dir=str(tmp_path / "spill"))
    assert local.engine.frames_ingested == total and len(local.engine.store) == total
    text, evidence, choice = answers(local)
    assert (served["answer"], served["evidence"], picked["choice"]) == (text, evidence, choice)
    local_other = Journal(server.data_dir / "sessions" / other / "journal").load(qa)
    assert served_other.json()["choice"] == local_other.ask(QUESTION, choices=CHOICES).choice

    # frames the kill interrupted were ingested once: stream times strictly increase, one block per frame
    times = [local.engine.store.blocks[i].t0 for i in range(total)]
    assert times == sorted(set(times)) and np.allclose(np.diff(times), 0.5)


def raw_frames(n: int, seed: int = 0) -> dict:
    frames = np.random.default_rng(seed).integers(0, 256, (n, 56, 84, 3), dtype=np.uint8)
    return {"raw": base64.b64encode(frames.tobytes()).decode(), "shape": list(frames.shape)}


def test_sigkill_during_upload_rolls_the_upload_back(serve_factory, tmp_path: Path):
    """An upload is all-or-nothing, across a crash too: chunks of it were committed when the server was
    killed, but its client never got an answer, so after the restart the session is as before the upload
    (and a retry ingests it once)."""
    clip = make_clip(tmp_path / "up.mp4", seconds=40, fps=2, seed=9)
    server: ServerHandle = serve_factory()
    with server.client() as client:
        sid = client.post("/v1/sessions", json={"memory": "rekv", "fps": 2.0}).json()["id"]
        before = client.post(f"/v1/sessions/{sid}/frames", json=raw_frames(4)).json()["status"]
    folder = server.data_dir / "sessions" / sid

    def send() -> None:
        with contextlib.suppress(httpx.HTTPError), server.client() as c:  # the server dies under it
            c.post(f"/v1/sessions/{sid}/video", files={"file": ("up.mp4", clip.read_bytes(), "video/mp4")})

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    deadline = time.monotonic() + 240
    while journal_blocks(folder) < 4 + 16 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.kill()
    sender.join(30)
    assert 4 + 16 <= journal_blocks(folder) < 4 + 80

    server.start()
    with server.client() as client:
        status = client.get(f"/v1/sessions/{sid}").json()
        assert {k: status[k] for k in ("frames", "blocks", "clock", "memory_bytes")} == {
            k: before[k] for k in ("frames", "blocks", "clock", "memory_bytes")
        }
        assert journal_blocks(folder) == 4 and len(list((folder / "journal" / "blocks").iterdir())) == 4
        assert client.get(f"/v1/sessions/{sid}/timeline").json()["thumbnails"] == [0.0, 0.5, 1.0, 1.5]
        r = client.post(
            f"/v1/sessions/{sid}/video", files={"file": ("up.mp4", clip.read_bytes(), "video/mp4")}
        )
        assert r.status_code == 200, r.text
        assert r.json()["status"]["frames"] == 4 + 80 and journal_blocks(folder) == 4 + 80


def test_a_finished_source_is_reported_after_a_restart(serve_factory, tmp_path: Path):
    """A source that had ended before a SIGKILL shows its terminal state ("done") after the restart, not None
    (the journal keeps it), and is not resumed: nothing is ingested twice."""
    clip = make_clip(tmp_path / "short.mp4", seconds=3, fps=2, seed=3)
    server: ServerHandle = serve_factory()
    with server.client() as client:
        sid = client.post("/v1/sessions", json={"memory": "rekv", "fps": 2.0}).json()["id"]
        r = client.post(f"/v1/sessions/{sid}/source", json={"url": str(clip), "realtime": False})
        assert r.status_code == 202
        deadline = time.monotonic() + 120
        while (status := client.get(f"/v1/sessions/{sid}").json())["source"]["state"] == "running":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert status["source"]["state"] == "done" and status["frames"] == 6
    server.restart()
    with server.client() as client:
        after = client.get(f"/v1/sessions/{sid}").json()
        assert after["source"] == status["source"]
        assert (after["frames"], after["blocks"], after["state"]) == (6, status["blocks"], "idle")
        time.sleep(1.0)
        assert client.get(f"/v1/sessions/{sid}").json()["frames"] == 6
