"""`videokv serve --ray` with sessions on an object store (a real S3 store: SeaweedFS) and each replica on a
folder of its own: a replica's `kill -9` mid-source, and its session comes back on the other replica, which
shares no disk with it, with every committed block."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.server.conftest import TOKEN, make_clip
from tests.server.test_api import answer_of, create, wait_for
from videokv.journal import Journal

pytest.importorskip("ray.serve")
pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def store_cluster(tmp_path_factory, seaweed) -> Iterator[tuple[str, Path, str]]:
    from tests.server.ray_cluster import RayCluster

    os.environ["AWS_ENDPOINT_URL"] = (
        seaweed.endpoint
    )  # the nodes inherit the store's endpoint and credentials
    url = f"s3://{seaweed.bucket()}/fleet"
    data = tmp_path_factory.mktemp("rayreplicas")
    ray = RayCluster(workers=2, auth="token")
    try:
        ray.start()
        extra = ["--media-dir", str(tmp_path_factory.getbasetemp()), "--chunk-frames", "4"]
        extra += ["--store", url, "--s3-endpoint", seaweed.endpoint]
        yield ray.serve(data, extra, auth={"RAY_AUTH_TOKEN_PATH": str(ray.token_path)}), data, url
    finally:
        ray.stop()


def test_replicas_on_their_own_folders_adopt_a_killed_replicas_session(store_cluster, tmp_path: Path):
    base, data, store = store_cluster
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=300) as rc:
        clip = make_clip(tmp_path / "five.mp4", seconds=16, fps=5)
        body = {"url": str(clip), "fps": 2.0, "realtime": True}
        victim = create(rc, memory="rekv", fps=1.0)
        ref = create(rc, memory="rekv", fps=1.0)
        assert victim["replica"]["id"] != ref["replica"]["id"]
        for s in (victim, ref):
            assert rc.post(f"/v1/sessions/{s['id']}/source", json=body).status_code == 202
        sid, pid = victim["id"], victim["replica"]["pid"]
        seen = wait_for(lambda: (s := rc.get(f"/v1/sessions/{sid}").json())["frames"] >= 10 and s, 120, 0.05)
        assert seen["frames"] < 32, "the kill must land mid-source"
        os.kill(pid, signal.SIGKILL)
        committed = int(Journal(f"{store}/sessions/{sid}/journal").read_header()["blocks"])
        assert committed >= 10
        t0 = time.monotonic()
        back = wait_for(
            lambda: (s := rc.get(f"/v1/sessions/{sid}")).status_code == 200 and s.json(), 60, 0.05
        )
        assert back["replica"]["pid"] != pid and back["blocks"] >= committed
        assert time.monotonic() - t0 < 30
        done = wait_for(lambda: _finished(rc, sid), 120)
        whole = wait_for(lambda: _finished(rc, ref["id"]), 120)
        assert (done["frames"], done["blocks"], done["clock"]) == (
            whole["frames"],
            whole["blocks"],
            whole["clock"],
        )
        assert answer_of(rc, sid) == answer_of(rc, ref["id"])
        # the journals are in the store only: no replica's folder holds one
        assert not list(data.rglob("state")) and not (data / "sessions").exists()
        for s in rc.get("/v1/sessions").json():
            rc.delete(f"/v1/sessions/{s['id']}")


def _finished(rc: httpx.Client, sid: str) -> dict | None:
    s = rc.get(f"/v1/sessions/{sid}").json()
    return s if s["source"] and s["source"]["state"] == "done" else None
