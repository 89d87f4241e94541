"""Servers on an object store (a real S3 store: SeaweedFS), sharing no disk: a session outlives the server
that held it (`kill -9`), and a store that goes away mid-ingest ends requests in a retryable 503, losing
nothing."""

from __future__ import annotations

import base64
import threading
import time

import httpx
import numpy as np

from tests.server.conftest import ServerHandle
from videokv.journal import Journal

QUESTION = {"question": "what is shown?", "max_new_tokens": 4, "logprobs": 2}


def raw_frames(n: int, seed: int = 0) -> dict:
    frames = np.random.default_rng(seed).integers(0, 256, (n, 56, 84, 3), dtype=np.uint8)
    return {"raw": base64.b64encode(frames.tobytes()).decode(), "shape": list(frames.shape)}


def store_args(url: str, endpoint: str, lease_s: float = 3.0) -> list[str]:
    return ["--store", url, "--s3-endpoint", endpoint, "--lease-s", str(lease_s), "--chunk-frames", "4"]


def test_a_second_server_on_the_store_takes_over_after_kill_9(serve_factory, seaweed, s3_url):
    args = store_args(s3_url, seaweed.endpoint)
    first: ServerHandle = serve_factory(extra=args)
    second: ServerHandle = serve_factory(extra=args)
    assert first.data_dir != second.data_dir
    with first.client() as client:
        sid = client.post("/v1/sessions", json={"memory": "rekv", "name": "cam"}).json()["id"]
        assert client.post(f"/v1/sessions/{sid}/frames", json=raw_frames(8, seed=1)).status_code == 200
        acked = client.get(f"/v1/sessions/{sid}").json()
        answer = client.post(f"/v1/sessions/{sid}/ask", json=QUESTION).json()
    with second.client() as client:  # held by the first server: not taken while its lease is renewed
        r = client.get(f"/v1/sessions/{sid}")
        assert r.status_code == 503 and "held by another server" in r.json()["detail"], r.text

    cut: list = []

    def push() -> None:  # an upload the kill cuts: never acknowledged, so never in memory
        try:
            with first.client() as c:
                cut.append(c.post(f"/v1/sessions/{sid}/frames", json=raw_frames(256, seed=2)).status_code)
        except httpx.HTTPError:
            cut.append("cut")

    journal = Journal(f"{s3_url}/sessions/{sid}/journal")
    sender = threading.Thread(target=push, daemon=True)
    sender.start()
    deadline = time.monotonic() + 120
    # kill once the upload is under way: its base stored and a chunk of it committed
    while not (journal.store.exists("base") and journal.read_header()["blocks"] > acked["blocks"]):
        assert time.monotonic() < deadline and not cut, cut
        time.sleep(0.02)
    first.kill()
    sender.join(30)
    assert cut == ["cut"]
    killed = time.monotonic()
    with second.client() as client:
        while (r := client.get(f"/v1/sessions/{sid}")).status_code == 503:
            assert time.monotonic() - killed < 60, r.text
            time.sleep(0.25)
        assert r.status_code == 200, r.text
        status = r.json()
        assert {k: status[k] for k in ("frames", "blocks", "clock", "name")} == {
            k: acked[k] for k in ("frames", "blocks", "clock", "name")
        }
        again = client.post(f"/v1/sessions/{sid}/ask", json=QUESTION).json()
        assert (again["answer"], again["logprobs"]) == (answer["answer"], answer["logprobs"])
        assert client.post(f"/v1/sessions/{sid}/frames", json=raw_frames(4, seed=3)).status_code == 200
    # nothing of the session is on the second server's disk but caches and thumbnails: it is in the store
    assert not list(second.data_dir.rglob("state")) and not list(first.data_dir.rglob("state"))


def test_the_store_going_away_mid_ingest_is_a_503_and_nothing_is_lost(serve_factory, seaweed, s3_url):
    server: ServerHandle = serve_factory(extra=store_args(s3_url, seaweed.endpoint, lease_s=30))
    try:
        with server.client() as client:
            sid = client.post("/v1/sessions", json={"memory": "rekv"}).json()["id"]
            assert client.post(f"/v1/sessions/{sid}/frames", json=raw_frames(4, seed=1)).status_code == 200
            acked = client.get(f"/v1/sessions/{sid}").json()
            seaweed.stop()
            r = client.post(f"/v1/sessions/{sid}/frames", json=raw_frames(8, seed=2))
            assert r.status_code == 503 and "Retry-After" in r.headers, r.text
            assert "object store" in r.json()["detail"]
            status = client.get(f"/v1/sessions/{sid}").json()
            assert (status["frames"], status["blocks"]) == (acked["frames"], acked["blocks"])
            seaweed.start()
            r = client.post(f"/v1/sessions/{sid}/frames", json=raw_frames(8, seed=2))
            assert r.status_code == 200, r.text
            answer = client.post(f"/v1/sessions/{sid}/ask", json=QUESTION).json()
    finally:
        if seaweed.proc is None:
            seaweed.start()
    server.restart()
    with server.client() as client:
        status = client.get(f"/v1/sessions/{sid}").json()
        assert status["frames"] == 12
        assert client.post(f"/v1/sessions/{sid}/ask", json=QUESTION).json()["logprobs"] == answer["logprobs"]


def test_serve_refuses_a_store_it_cannot_use_before_loading_the_model(seaweed):
    import subprocess
    import sys

    for store, expected in [
        ("s3://no-such-bucket-here/x", "does not exist; create it first"),
        ("gs://bucket/x", "use a folder path or s3://BUCKET/PREFIX"),
    ]:
        cmd = [sys.executable, "-m", "videokv.server", "--model", "tiny-qwen2_vl", "--store", store]
        done = subprocess.run(
            [*cmd, "--s3-endpoint", seaweed.endpoint], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 2 and expected in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
