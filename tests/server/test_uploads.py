"""Issue 34, item 8 (uploads.py): every byte of a multipart upload counts against --max-upload-mb, part
headers and framing included (before: 32 MiB of part headers were read under a 4 MiB cap, and the upload
went on). A real `videokv serve` subprocess with --max-upload-mb 1; each refused upload leaves the session
as it was and no file behind."""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx
import pytest

from tests.server.conftest import ServerHandle, make_clip
from tests.server.test_api import create, memory_of


def multipart(parts: list[tuple[dict[str, str], bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body of (headers, data) parts, and its Content-Type."""
    boundary = secrets.token_hex(16)
    out = b""
    for headers, data in parts:
        out += f"--{boundary}\r\n".encode()
        out += b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items()) + b"\r\n" + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out, f"multipart/form-data; boundary={boundary}"


def file_part(path: Path) -> tuple[dict[str, str], bytes]:
    disposition = f'form-data; name="file"; filename="{path.name}"'
    return {"Content-Disposition": disposition, "Content-Type": "video/mp4"}, path.read_bytes()


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> ServerHandle:
    from tests.server.conftest import _make

    handle = _make(tmp_path_factory.mktemp("uploads"), "t0ken", ["--memory", "rekv", "--max-upload-mb", "1"])
    handle.start()
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clip") / "c.mp4", seconds=2, fps=2)


def _upload(c: httpx.Client, sid: str, body: bytes, ctype: str) -> httpx.Response:
    return c.post(f"/v1/sessions/{sid}/video", content=body, headers={"Content-Type": ctype})


def test_part_headers_count_against_the_upload_cap(small: ServerHandle, clip: Path):
    with small.client() as c:
        sid = create(c, memory="rekv")["id"]
        before = memory_of(c, sid)
        # 1200 fields with 4 KB of headers each (4.8 MB) beside a small video, under a 1 MiB cap: refused
        # from its Content-Length, and (sent chunked, without one) while it streams in
        pad = [
            ({"Content-Disposition": f'form-data; name="f{i}"', "X-Pad": "a" * 4000}, b"")
            for i in range(1200)
        ]
        body, ctype = multipart([*pad, file_part(clip)])
        for content in (body, (body[i : i + 65536] for i in range(0, len(body), 65536))):
            r = c.post(f"/v1/sessions/{sid}/video", content=content, headers={"Content-Type": ctype})
            assert r.status_code == 413 and "--max-upload-mb" in r.json()["detail"], r.text[:300]
            assert "part headers" in r.json()["detail"]
        assert memory_of(c, sid) == before
        assert not list((small.data_dir / "sessions" / sid).rglob("uploads/*"))
        # the same video with ordinary headers is taken
        body, ctype = multipart([file_part(clip), ({"Content-Disposition": 'form-data; name="fps"'}, b"2")])
        r = _upload(c, sid, body, ctype)
        assert r.status_code == 200, r.text[:300]
        assert r.json()["status"]["frames"] == 4
