"""A real local Ray cluster for the `--ray` tests and benchmarks/ray_scale.py: a head node and worker nodes as
`ray start --block` processes on this machine (small: one CPU and a 200 MB object store each), and a
`videokv serve --ray ADDRESS` process on it. Everything is stopped by terminating the processes started
here (never `ray stop`, which would stop every Ray on the machine).

Ray's token auth is set explicitly for every process here, never read from the machine: `auth="token"` (Ray's
default) gives the cluster a token of its own (a file in its folder, RAY_AUTH_TOKEN_PATH, RAY_AUTH_MODE=token
on every node, as docs/SERVER.md tells a fleet to do); `auth="disabled"` sets RAY_AUTH_MODE=disabled. Either
way ~/.ray/auth_token is neither read nor written (a token left there by a local Ray once made the head turn
token auth on and the workers, joining by address, fail)."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.server.conftest import MODEL, TOKEN, free_port

RAY = str(Path(sys.executable).with_name("ray"))
NODE_ARGS = ["--num-cpus", "1", "--object-store-memory", str(200 * 10**6), "--disable-usage-stats", "--block"]
START_TIMEOUT_S = 240.0


AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def _env(auth: dict[str, str]) -> dict[str, str]:
    env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    for key in ("RAY_ADDRESS", "VIDEOKV_TOKEN", *AUTH_VARS):
        env.pop(key, None)
    return {**env, **auth}


@dataclass
class RayCluster:
    """A head + `workers` worker nodes; `serve(...)` starts `videokv serve --ray` on it. `auth`: "token" or
    "disabled" (Ray's token auth, see above)."""

    workers: int = 1
    auth: str = "token"
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="vkray", dir="/tmp")))
    port: int = field(default_factory=free_port)
    procs: list[subprocess.Popen] = field(default_factory=list)
    serve_proc: subprocess.Popen | None = None
    serve_port: int = 0
    log_path: Path | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def token_path(self) -> Path:
        """The cluster's token file (auth="token"), made on first use."""
        path = self.root / "auth_token"
        if not path.exists():
            path.write_text(secrets.token_hex(32))
        return path

    def auth_env(self) -> dict[str, str]:
        """The Ray auth variables of every node (and by default of `videokv serve`)."""
        if self.auth == "token":
            return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path)}
        return {"RAY_AUTH_MODE": self.auth}

    def _spawn(self, args: list[str], log: str, auth: dict[str, str] | None = None) -> subprocess.Popen:
        out = open(self.root / log, "ab")  # noqa: SIM115 - the child owns it
        env = _env(self.auth_env() if auth is None else auth)
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        out.close()
        self.procs.append(proc)
        return proc

    def start(self) -> RayCluster:
        """Start the head, then each worker node in turn (each started before the next: nodes started at
        once on a loaded machine can time out registering)."""
        head = [RAY, "start", "--head", "--port", str(self.port), "--include-dashboard=false"]
        head += [
            "--ray-client-server-port",
            str(free_port()),
            "--temp-dir",
            str(self.root / "ray"),
            *NODE_ARGS,
        ]
        self._wait_started(self._spawn(head, "head.log"), "head.log")
        for i in range(self.workers):
            args = [RAY, "start", "--address", self.address, *NODE_ARGS]
            self._wait_started(self._spawn(args, f"worker{i}.log"), f"worker{i}.log")
        return self

    def _wait_started(self, proc: subprocess.Popen, log: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while "Ray runtime started" not in self.log(log):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"a Ray node did not start ({log}):\n{self.log(log)}")
            time.sleep(0.2)

    def log(self, name: str) -> str:
        path = self.root / name
        return path.read_text(errors="replace")[-20000:] if path.exists() else ""

    def serve(
        self, data_dir: Path, extra: list[str], replicas: int = 2, auth: dict[str, str] | None = None
    ) -> str:
        """Start `videokv serve --ray` with `replicas` replicas; returns its URL once they all serve. `auth`:
        its Ray auth variables instead of the nodes' (`auth_env()`)."""
        self.serve_port = free_port()
        cmd = [sys.executable, "-m", "videokv.server", "--ray", self.address, "--replicas", str(replicas)]
        cmd += [
            "--model",
            MODEL,
            "--data-dir",
            str(data_dir),
            "--port",
            str(self.serve_port),
            "--token",
            TOKEN,
        ]
        self.serve_proc = self._spawn([*cmd, *extra], "serve.log", auth)
        url = f"http://127.0.0.1:{self.serve_port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        headers = {"Authorization": f"Bearer {TOKEN}"}
        while time.monotonic() < deadline:
            if self.serve_proc.poll() is not None:
                raise RuntimeError(f"videokv serve --ray exited:\n{self.log('serve.log')}")
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                r = httpx.get(f"{url}/v1/cluster", headers=headers, timeout=5)
                if r.status_code == 200 and len(r.json()["replicas"]) == replicas:
                    return url
            time.sleep(0.5)
        raise RuntimeError(f"videokv serve --ray did not come up:\n{self.log('serve.log')}")

    def stop_serve(self) -> None:
        if self.serve_proc is not None and self.serve_proc.poll() is None:
            self.serve_proc.send_signal(signal.SIGTERM)
            try:
                self.serve_proc.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(self.serve_proc.pid, signal.SIGKILL)
                self.serve_proc.wait(30)

    def stop(self) -> None:
        """Stop `videokv serve`, then the worker nodes, then the head (SIGTERM, SIGKILL after 60 s)."""
        self.stop_serve()
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
