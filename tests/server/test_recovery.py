"""Recovery of a real server (issue: durability you can trust): bad or corrupt sessions are quarantined, not
served, not deleted, and never stop the server from starting; a restore refused for room leaves nothing; a
full disk mid-upload ends in a 507 with memory and journal as last acknowledged."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.server.conftest import ServerHandle
from videokv.storage import LocalBackend, pack, unpack


def raw_frames(n: int, seed: int = 0) -> dict:
    frames = np.random.default_rng(seed).integers(0, 256, (n, 56, 84, 3), dtype=np.uint8)
    return {"raw": base64.b64encode(frames.tobytes()).decode(), "shape": list(frames.shape)}


def journal(server: ServerHandle, sid: str) -> LocalBackend:
    return LocalBackend(server.data_dir / "sessions" / sid / "journal")


def rewrite_header(store: LocalBackend, change) -> None:
    """Rewrite the commit record's header with `change` applied, with a valid checksum (a well-formed record
    whose content is wrong)."""
    header, tensors = unpack(store.get("state"), "state")
    change(header)
    store.put("state", pack(tensors, header))


def flip(path: Path, at: float) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x10
    path.write_bytes(bytes(data))


DAMAGES = {
    "info_not_an_object": lambda s: rewrite_header(s, lambda h: h.update(info="x")),
    "blocks_null": lambda s: rewrite_header(s, lambda h: h.update(blocks=None)),
    "clock_not_a_number": lambda s: rewrite_header(s, lambda h: h["state"].update(clock="abc")),
    "unknown_context_block_key": lambda s: rewrite_header(
        s, lambda h: h.update(context_blocks=[{"nonsense": 1}])
    ),
    "blocks_4_to_0_in_place": lambda s: _edit_bytes(s.path("state"), b'\\"blocks\\": 4', b'\\"blocks\\": 0'),
    "state_byte_flipped": lambda s: flip(s.path("state"), 0.97),
    "state_missing": lambda s: s.path("state").unlink(),
    "index_byte_flipped": lambda s: flip(next(s.path("index").iterdir()), 0.9),
    "context_byte_flipped": lambda s: flip(next(s.path("context").iterdir()), 0.9),
    "base_byte_flipped": lambda s: (s.put("base", s.get("state")), flip(s.path("base"), 0.5)),
    "block_missing": lambda s: sorted(s.path("blocks").iterdir())[1].unlink(),
}


def _edit_bytes(path: Path, old: bytes, new: bytes) -> None:
    data = path.read_bytes()
    assert old in data
    path.write_bytes(data.replace(old, new, 1))


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_bad_sessions_are_quarantined_never_served_never_deleted(serve_factory):
    server: ServerHandle = serve_factory(max_sessions=32)
    with server.client() as client:
        sids = {}
        for name in [*DAMAGES, "good"]:
            sid = client.post("/v1/sessions", json={"memory": "rekv", "name": name}).json()["id"]
            r = client.post(f"/v1/sessions/{sid}/frames", json=raw_frames(4, seed=len(sids)))
            assert r.status_code == 200, r.text
            sids[name] = sid
        good_answer = client.post(
            f"/v1/sessions/{sids['good']}/ask", json={"question": "what is shown?", "max_new_tokens": 4}
        ).json()
    server.stop()
    for name, damage in DAMAGES.items():
        damage(journal(server, sids[name]))
    before = tree(server.data_dir / "sessions")

    server.start()  # one bad session never stops the server from starting
    with server.client() as client:
        listed = {s["id"] for s in client.get("/v1/sessions").json()}
        assert listed == {sids["good"]}
        again = client.post(
            f"/v1/sessions/{sids['good']}/ask", json={"question": "what is shown?", "max_new_tokens": 4}
        ).json()
        assert again["answer"] == good_answer["answer"]
        quarantined = {q["session"]: q["reason"] for q in client.get("/v1/quarantine").json()}
        assert set(quarantined) == {sids[n] for n in DAMAGES}
        for name in DAMAGES:
            r = client.get(f"/v1/sessions/{sids[name]}")
            assert r.status_code == 409 and "quarantined" in r.json()["detail"], (name, r.text)
        assert "checksum" in quarantined[sids["state_byte_flipped"]]
        assert "checksum" in quarantined[sids["blocks_4_to_0_in_place"]]
        assert "missing" in quarantined[sids["block_missing"]]
        assert "malformed" in quarantined[sids["info_not_an_object"]]
    # nothing of a quarantined session was deleted or changed (only the good one may have been touched)
    after = tree(server.data_dir / "sessions")
    for name in DAMAGES:
        mine = {k: v for k, v in before.items() if k.startswith(sids[name] + "/")}
        assert mine and {k: after.get(k) for k in mine} == mine, name


def test_a_corrupt_block_is_never_served(serve_factory):
    """A block's K/V fetched when a question selects it fail their checksum: the question ends in a clear
    error (not an empty answer from NaN), and the session is quarantined."""
    server: ServerHandle = serve_factory()
    with server.client() as client:
        sid = client.post("/v1/sessions", json={"memory": "rekv"}).json()["id"]
        assert client.post(f"/v1/sessions/{sid}/frames", json=raw_frames(4)).status_code == 200
    server.stop()
    for block in (journal(server, sid).path("blocks")).iterdir():
        flip(block, 0.8)
    server.start()
    with server.client() as client:
        r = client.post(f"/v1/sessions/{sid}/ask", json={"question": "what is shown?", "max_new_tokens": 4})
        assert r.status_code == 500 and "checksum" in r.json()["detail"], r.text
        assert client.get(f"/v1/sessions/{sid}").status_code == 409
        assert [q["session"] for q in client.get("/v1/quarantine").json()] == [sid]


def test_a_restore_refused_for_room_leaves_nothing(serve_factory):
    server: ServerHandle = serve_factory(max_sessions=2)
    with server.client() as client:
        a = client.post("/v1/sessions", json={"memory": "rekv"}).json()["id"]
        assert client.post(f"/v1/sessions/{a}/frames", json=raw_frames(2)).status_code == 200
        snap = client.post(f"/v1/sessions/{a}/save").json()["snapshot"]
        assert client.post("/v1/sessions", json={"memory": "rekv"}).status_code == 201
        r = client.post(f"/v1/snapshots/{snap}/restore")
        assert r.status_code == 429, r.text
        folders = sorted(p.name for p in (server.data_dir / "sessions").iterdir())
        assert len(folders) == 2
    server.restart()
    with server.client() as client:
        assert len(client.get("/v1/sessions").json()) == 2


# ---- a full disk ----------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path: Path):
    """A 48 MiB tmpfs (the test runs as root, as CI does); unmounted after."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Fill `disk` until `leave` bytes are free; returns the filler file."""
    filler = disk / "filler"
    free = shutil.disk_usage(disk).free
    with open(filler, "wb") as fh:
        fh.write(b"\0" * max(0, free - leave))
    return filler


def test_a_full_disk_mid_upload_is_a_507_and_memory_stays_as_acknowledged(serve_factory, small_disk: Path):
    server: ServerHandle = serve_factory(extra=["--chunk-frames", "4"])
    server.stop()
    shutil.copytree(server.data_dir, small_disk / "data")
    server.data_dir = small_disk / "data"
    server.start()
    question = {"question": "what is shown?", "max_new_tokens": 4, "logprobs": 2}
    with server.client() as client:
        sid = client.post("/v1/sessions", json={"memory": "rekv"}).json()["id"]
        assert client.post(f"/v1/sessions/{sid}/frames", json=raw_frames(4, seed=1)).status_code == 200
        used = sum(len(v) for v in tree(server.data_dir / "sessions" / sid).values())
        acked = client.get(f"/v1/sessions/{sid}").json()
        answer = client.post(f"/v1/sessions/{sid}/ask", json=question).json()
        # room for about one more chunk of 4 frames: a 16-frame push commits a chunk, then the disk is full
        filler = fill(small_disk, leave=int(used * 1.3) + 64 * 1024)
        r = client.post(f"/v1/sessions/{sid}/frames", json=raw_frames(16, seed=2))
        assert r.status_code == 507, r.text
        assert r.headers["content-type"].startswith("application/json") and "full" in r.json()["detail"]
        status = client.get(f"/v1/sessions/{sid}").json()
        assert {k: status[k] for k in ("frames", "blocks", "clock")} == {
            k: acked[k] for k in ("frames", "blocks", "clock")
        }
        assert client.post(f"/v1/sessions/{sid}/ask", json=question).json()["logprobs"] == answer["logprobs"]
        assert not list(server.data_dir.rglob("*.tmp"))
        filler.unlink()  # space is back: the same push is taken whole
        r = client.post(f"/v1/sessions/{sid}/frames", json=raw_frames(16, seed=2))
        assert r.status_code == 200, r.text
        after = client.post(f"/v1/sessions/{sid}/ask", json=question).json()
        assert r.json()["status"]["frames"] == 20
    server.restart()
    with server.client() as client:
        assert client.get(f"/v1/sessions/{sid}").json()["frames"] == 20
        assert client.post(f"/v1/sessions/{sid}/ask", json=question).json()["logprobs"] == after["logprobs"]
