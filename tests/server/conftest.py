"""Fixtures for the service tests: a real `videokv serve` subprocess on a free loopback port.

`serve_factory(**options)` starts one (tiny random model, a temp data dir, a bearer token) and returns a
`ServerHandle` with `url`, `token`, `headers`, `data_dir`, `proc`, `kill()` (SIGKILL), `restart()` (same
data dir, same port) and `client()` (an httpx.Client with the token). `server` is one shared server per
test module (default options); `client` is an httpx.Client on it. Nothing runs in-process: every request
goes over TCP to uvicorn.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest

from videokv.video.decode import write_video

TOKEN = "test-token-videokv"
MODEL = "tiny-llava_onevision"  # one frame piece per frame: block counts per frame
START_TIMEOUT_S = 180.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerHandle:
    """A running `videokv serve` subprocess and how to reach, kill and restart it."""

    data_dir: Path
    port: int
    token: str | None
    args: list[str]
    log_path: Path
    proc: subprocess.Popen | None = None
    starts: int = field(default=0)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "videokv.server", "--model", MODEL, "--data-dir", str(self.data_dir)]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port), *self.args]
        if self.token:
            cmd += ["--token", self.token]
        return cmd

    def start(self) -> ServerHandle:
        """Start the server and wait until /v1/health answers (raises with the server's log if it dies)."""
        self.starts += 1
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it for its lifetime
        log.write(f"\n---- start {self.starts}: {' '.join(self.command())}\n".encode())
        log.flush()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
        env.pop("VIDEOKV_TOKEN", None)
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"videokv serve exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                r = httpx.get(f"{self.url}/v1/health", headers=self.headers, timeout=2.0)
                if r.status_code == 200:
                    return self
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"videokv serve did not answer /v1/health in {START_TIMEOUT_S}s:\n{self.log()}")

    def log(self) -> str:
        """The server's stdout and stderr so far (every start appends)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL the server (no clean shutdown: what is on disk is what survives)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        """Shut the server down cleanly (SIGTERM), SIGKILL if it does not exit in 20 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> ServerHandle:
        """Kill (SIGKILL) if running, then start again on the same data dir and port."""
        self.kill()
        return self.start()

    def client(self, timeout: float = 300.0) -> httpx.Client:
        """An httpx.Client on this server with the bearer token set."""
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=timeout)


def _make(tmp: Path, token: str | None, args: list[str]) -> ServerHandle:
    data_dir = tmp / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = tmp / "serve.log"
    return ServerHandle(data_dir=data_dir, port=free_port(), token=token, args=args, log_path=log_path)


def make_clip(
    path: Path, seconds: float, fps: float = 4.0, size: tuple[int, int] = (56, 84), seed: int = 0
) -> Path:
    """Write a real H.264 (or mpeg4) clip: a moving colour pattern, `seconds` long at `fps`."""
    rng = np.random.default_rng(seed)
    h, w = size
    base = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    n = max(1, round(seconds * fps))
    frames = (np.roll(base, shift=3 * i, axis=1) // 2 + (i * 7 % 128) for i in range(n))
    write_video(path, (f.astype(np.uint8) for f in frames), fps=fps, keyframe_interval=1.0)
    return path


def srt_text(events: list[tuple[float, float, str]]) -> str:
    """An SRT file's text for (start, end, text) events."""

    def stamp(t: float) -> str:
        ms = round(t * 1000)
        return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"

    return "".join(f"{i}\n{stamp(a)} --> {stamp(b)}\n{text}\n\n" for i, (a, b, text) in enumerate(events, 1))


@pytest.fixture
def serve_factory(tmp_path_factory) -> Iterator[Callable[..., ServerHandle]]:
    """Start servers: `serve_factory(token=TOKEN, memory="rekv", max_upload_mb=None, max_sessions=None,
    session_mb=None, extra=[...], media=True)` returns a started ServerHandle; all are stopped after the
    test."""
    handles: list[ServerHandle] = []

    def start(
        token: str | None = TOKEN,
        memory: str | None = "rekv",
        max_upload_mb: float | None = None,
        max_sessions: int | None = None,
        session_mb: float | None = None,
        extra: list[str] | None = None,
        media: bool = True,
    ) -> ServerHandle:
        args: list[str] = []
        if media:  # server paths under the test's temp folders, and URL sources, are allowed
            args += ["--media-dir", str(tmp_path_factory.getbasetemp()), "--allow-urls"]
        if memory:
            args += ["--memory", memory]
        if max_upload_mb is not None:
            args += ["--max-upload-mb", str(max_upload_mb)]
        if max_sessions is not None:
            args += ["--max-sessions", str(max_sessions)]
        if session_mb is not None:
            args += ["--session-mb", str(session_mb)]
        args += extra or []
        handle = _make(tmp_path_factory.mktemp("serve"), token, args)
        handles.append(handle)
        return handle.start()

    yield start
    for h in handles:
        h.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ServerHandle]:
    """One server per test module: tiny model, rekv memory, token TOKEN, default limits; server paths under
    the test temp folders (--media-dir) and URL sources (--allow-urls) allowed."""
    media = ["--media-dir", str(tmp_path_factory.getbasetemp()), "--allow-urls"]
    handle = _make(tmp_path_factory.mktemp("serve"), TOKEN, ["--memory", "rekv", *media])
    handle.start()
    yield handle
    handle.stop()


@pytest.fixture
def client(server: ServerHandle) -> Iterator[httpx.Client]:
    """An httpx.Client on the module's server, with the bearer token."""
    with server.client() as c:
        yield c
