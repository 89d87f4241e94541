"""The journal's commit protocol under crashes at every point: a seeded chaos test.

A `Crashing` backend wraps the real one (a folder, or a real S3 store) and "kills the process" at its n-th
write or delete: the exception is a BaseException nothing in videokv catches, a local write it cuts leaves
its half-written temporary file, and everything in memory (journal object, session) is thrown away, as a
SIGKILL would. Recovery then runs on a fresh journal, itself crashed at random points and run again. Each
run must give back exactly the last acknowledged memory (the step in flight when the crash came may be in
it or not, never half); a batch (an upload) in flight is never in it.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path

import pytest
import torch

from tests.server.test_durability import same_memory, stream_steps
from videokv.api import VideoQA
from videokv.journal import Journal
from videokv.storage import Backend, LocalBackend, open_backend


class Crash(BaseException):
    """The process died here."""


class Crashing(Backend):
    """`inner`, dying at its `at`-th mutation (put or delete); None: never. Shared by its children."""

    def __init__(self, inner: Backend, at: int | None, counter: list[int] | None = None):
        self.inner, self.at, self.url = inner, at, inner.url
        self.counter = counter if counter is not None else [0]

    def _tick(self, key: str | None = None) -> None:
        self.counter[0] += 1
        if self.at is not None and self.counter[0] >= self.at:
            if key is not None and isinstance(self.inner, LocalBackend):  # cut mid-write: a partial file
                path = self.inner.path(key)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.with_name(f".{path.name}.dead.tmp").write_bytes(b"half")
            raise Crash

    def put(self, key: str, data: bytes) -> None:
        self._tick(key)
        self.inner.put(key, data)

    def get(self, key: str, cache: bool = False) -> bytes:
        return self.inner.get(key, cache)

    def list(self, prefix: str = "") -> list[str]:
        return self.inner.list(prefix)

    def children(self, prefix: str = "") -> list[str]:
        return self.inner.children(prefix)

    def delete(self, keys: Iterable[str]) -> None:
        self._tick()
        self.inner.delete(keys)

    def child(self, prefix: str) -> Crashing:
        return Crashing(self.inner.child(prefix), self.at, self.counter)

    def clean(self) -> None:
        self.inner.clean()

    @property
    def is_local(self) -> bool:
        return self.inner.is_local


@pytest.fixture(scope="module")
def qa() -> VideoQA:
    return VideoQA.from_pretrained("tiny-llava_onevision")


def run_until_crash(qa: VideoQA, store: Backend, memory: str, rng: random.Random) -> tuple[list, int | None]:
    """Stream and journal single steps and all-or-nothing batches until the crash; returns the acknowledged
    steps (their seeds) and the single step in flight at the crash (None: none, or a batch)."""
    session = qa.session(memory=memory, memory_set=["window=48"] if memory == "window" else None)
    journal = Journal(store)
    acked: list[int] = []
    in_flight = None
    try:
        journal.commit(session, {})
        for k in range(8):
            if rng.random() < 0.5:
                in_flight = k
                list(stream_steps(session, 1, seed=k))
                journal.commit(session, {})
                acked.append(k)
                in_flight = None
                continue
            batch = [k, 100 + k]
            journal.begin()
            fail = rng.random() < 0.4
            try:
                with session.engine.transaction():
                    for seed in batch:
                        list(stream_steps(session, 1, seed=seed))
                        journal.commit(session, {})
                    if fail:
                        raise RuntimeError("a later chunk of the upload failed")
            except RuntimeError:
                journal.rollback()
                continue
            journal.end()
            acked += batch
    except Crash:
        pass
    return acked, in_flight


def reference(qa: VideoQA, memory: str, steps: list[int]):
    session = qa.session(memory=memory, memory_set=["window=48"] if memory == "window" else None)
    for seed in steps:
        list(stream_steps(session, 1, seed=seed))
    return session


@pytest.mark.parametrize("where", ["folder", "s3"])
@pytest.mark.parametrize("memory", ["rekv", "window"])
def test_kills_at_random_points_of_ingest_and_recovery_never_lose_or_invent_memory(
    qa: VideoQA, tmp_path: Path, request, where: str, memory: str
):
    seeds = range(6) if where == "folder" else range(3)
    for seed in seeds:
        rng = random.Random(seed * 7919 + len(memory))
        raw: Backend = (
            LocalBackend(tmp_path / f"j{seed}")
            if where == "folder"
            else open_backend(f"{request.getfixturevalue('s3_url')}/j{seed}")
        )
        acked, in_flight = run_until_crash(qa, Crashing(raw, rng.randint(2, 60)), memory, rng)
        for attempt in range(6):  # recovery is killed too, then run again from the start
            try:
                journal = Journal(Crashing(raw, rng.randint(1, 4) if attempt < 3 else None))
                journal.recover()
                if raw.exists("state"):
                    journal.scrub()
                break
            except Crash:
                continue
        if not raw.exists("state"):  # killed before the first commit: nothing was ever acknowledged
            assert acked == [] and in_flight is None
            continue
        restored = Journal(raw).load(qa)
        candidates = [acked] + ([[*acked, in_flight]] if in_flight is not None else [])
        matches = 0
        for steps in candidates:
            ref = reference(qa, memory, steps)
            try:
                same_memory(restored, ref)
                matches += 1
            except AssertionError:
                pass
        assert matches == 1, (seed, acked, in_flight)
        assert not [p for p in raw.list() if p.endswith(".tmp")]
        # and the recovered journal keeps working: one more step, committed and read back
        journal = Journal(raw)
        session = journal.load(qa)
        list(stream_steps(session, 1, seed=50))
        journal.commit(session, {})
        same_memory(Journal(raw).load(qa), session)


# ---- kills during a save and during a session's deletion ----------------------------------------------
def test_kills_at_every_point_of_a_save_leave_the_old_save_or_the_new(qa: VideoQA, tmp_path: Path):
    from tests.test_presets import probe_logits

    session = qa.session(memory="rekv")
    list(stream_steps(session, 2))
    raw = LocalBackend(tmp_path / "save")
    session.save(raw)
    old = probe_logits(qa.load_session(raw))
    list(stream_steps(session, 1, seed=7))
    new = probe_logits(session)
    for at in range(1, 5):  # the tensors put, the manifest put, the deletion of the old tensors
        try:
            session.save(Crashing(raw, at))
        except Crash:
            pass
        got = probe_logits(qa.load_session(raw))
        assert torch.equal(got, old) or torch.equal(got, new), at
        session.save(raw)  # whole again, and it removes what the crash left
        assert torch.equal(probe_logits(qa.load_session(raw)), new)
        assert sum(k.startswith("tensors-") for k in raw.list()) == 1
        old = new


def test_a_kill_during_a_deletion_is_finished_at_the_next_start(qa: VideoQA, tmp_path: Path):
    from videokv.server.sessions import SessionManager

    data = tmp_path / "data"
    for at in range(1, 4):  # the tombstone, the objects, the tombstone's removal
        manager = SessionManager(qa, data)
        sid = f"s{at}"
        session = qa.session(memory="rekv")
        list(stream_steps(session, 1))
        Journal(manager.store.child(f"sessions/{sid}/journal")).commit(session, {"id": sid})
        manager.store = Crashing(manager.store, at)
        with pytest.raises(Crash):
            manager._remove(sid, data / "sessions" / sid)
        manager.scheduler.close(timeout=5)
        fresh = SessionManager(qa, data)
        restored = fresh.restore_all()
        assert fresh.quarantined == {}
        if at == 1:  # killed before the tombstone: nothing was deleted, the session is whole
            assert restored == [sid]
            same_memory(fresh.get(sid).session, session)
            fresh._remove(sid, data / "sessions" / sid)
        else:  # a deletion under way: finished, nothing of the session is served or left
            assert restored == []
        assert fresh.store.list(f"sessions/{sid}") == []
        fresh.scheduler.close(timeout=5)
