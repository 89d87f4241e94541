"""`videokv serve --ray` with Ray's token auth off, and on a local Ray it starts itself with token auth on
(Ray's default) and off. (tests/server/test_ray.py runs the whole cluster path with token auth on.) No test
reads or writes the real ~/.ray: the cluster's nodes get RAY_AUTH_MODE and RAY_AUTH_TOKEN_PATH explicitly
(tests/server/ray_cluster.py), a local Ray runs with a HOME and a Ray temp folder of its own."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.server.conftest import MODEL, TOKEN, free_port
from tests.server.test_api import QUESTION, create

pytest.importorskip("ray.serve")
pytestmark = pytest.mark.ray

START_TIMEOUT_S = 240.0


def _use(url: str) -> None:
    """A session through the cluster: created on a replica, fed frames, asked, deleted."""
    from tests.server.test_ray import raw_frames

    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=300) as c:
        s = create(c, memory="rekv")
        added = c.post(f"/v1/sessions/{s['id']}/frames", json=raw_frames(3))
        assert added.status_code == 200 and added.json()["status"]["blocks"] == 3
        r = c.post(f"/v1/sessions/{s['id']}/ask", json={"question": QUESTION, "max_new_tokens": 3})
        assert r.status_code == 200 and r.json()["stats"]["blocks"] == 3
        assert c.delete(f"/v1/sessions/{s['id']}").status_code == 204


def test_a_cluster_with_token_auth_off_serves_even_with_a_stale_token_around(tmp_path: Path):
    """Every node has RAY_AUTH_MODE=disabled (a worker joins the head by address). `videokv serve` is given
    no RAY_AUTH_MODE but finds a token of some other cluster (as a ~/.ray/auth_token left by a local Ray
    would be found): it runs with token auth, which joins a cluster without it too."""
    from tests.server.ray_cluster import RayCluster

    stale = tmp_path / "stale_token"
    stale.write_text("f" * 64)
    ray = RayCluster(workers=1, auth="disabled")
    try:
        ray.start()
        url = ray.serve(
            tmp_path / "data", ["--chunk-frames", "4"], replicas=1, auth={"RAY_AUTH_TOKEN_PATH": str(stale)}
        )
        _use(url)
        assert f"Ray auth: token (from RAY_AUTH_TOKEN_PATH={stale})" in ray.log("serve.log")
    finally:
        ray.stop()


@pytest.mark.parametrize("mode", ["default", "disabled"])
def test_a_local_ray_serves_with_token_auth_on_by_default_and_off(mode: str, tmp_path: Path):
    """`videokv serve --ray` with no address starts a local Ray. With RAY_AUTH_MODE unset Ray turns token
    auth on and, finding no token, writes one to $HOME/.ray/auth_token (here a HOME of the test's own); with
    RAY_AUTH_MODE=disabled it runs without and writes none. Either way the service serves, and SIGTERM takes
    it down."""
    home = tmp_path / "home"
    home.mkdir()
    ray_tmp = Path(tempfile.mkdtemp(prefix="vkl", dir="/tmp"))  # short: Ray's socket paths live under it
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS", "VIDEOKV_TOKEN"))
    }
    env |= {"HOME": str(home), "RAY_TMPDIR": str(ray_tmp), "RAY_USAGE_STATS_ENABLED": "0"}
    env |= {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    if mode == "disabled":
        env["RAY_AUTH_MODE"] = "disabled"
    port = free_port()
    cmd = [sys.executable, "-m", "videokv.server", "--ray", "--replicas", "1", "--model", MODEL]
    cmd += [
        "--data-dir",
        str(tmp_path / "data"),
        "--port",
        str(port),
        "--token",
        TOKEN,
        "--chunk-frames",
        "4",
    ]
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_serving(proc, url, log)
        _use(url)
        token = home / ".ray" / "auth_token"
        if mode == "default":
            assert token.is_file() and len(token.read_text().strip()) >= 32
            assert f"Ray auth: token (from {token})" in log.read_text(errors="replace")
        else:
            assert not token.exists() and "Ray auth: disabled" in log.read_text(errors="replace")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0, log.read_text(errors="replace")[-5000:]
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _wait_serving(proc: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"videokv serve --ray exited:\n{log.read_text(errors='replace')[-5000:]}")
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            r = httpx.get(f"{url}/v1/cluster", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
            if r.status_code == 200 and len(r.json()["replicas"]) == 1:
                return
        time.sleep(0.5)
    raise RuntimeError(f"videokv serve --ray did not come up:\n{log.read_text(errors='replace')[-5000:]}")
