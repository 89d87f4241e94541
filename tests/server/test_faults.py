"""Issue 34, items 7 and 9: faults of the machine end in a JSON answer naming the cause, nothing half-kept.

A real `videokv serve` subprocess (tiny model) is starved with prlimit(2): no file descriptors left
(RLIMIT_NOFILE below the descriptors it holds) and a full disk (RLIMIT_FSIZE: every write past a few bytes
fails, as on a full disk: EFBIG). A push of frames then gets a JSON 503 with Retry-After, or a JSON 507,
leaves no temporary file, and the session is as it was; once the limit is lifted the same push succeeds.
Storage errors that videokv raises itself (videokv.errors.StorageFull, StorageUnavailable) get the same
answers (faults.py).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import io
import resource
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.server.conftest import ServerHandle
from tests.server.test_api import create, memory_of
from videokv.errors import CorruptData, StorageFull, StorageUnavailable
from videokv.server.faults import fault_of


def _png(value: int) -> str:
    buf = io.BytesIO()
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 256, (56, 84, 3), dtype=np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@contextlib.contextmanager
def starved(server: ServerHandle, limit: int, value: int):
    """The server process with its soft `limit` (resource.RLIMIT_*) at `value` for the block."""
    old = resource.prlimit(server.proc.pid, limit)
    resource.prlimit(server.proc.pid, limit, (value, old[1]))
    try:
        yield
    finally:
        resource.prlimit(server.proc.pid, limit, old)


def _temp_files(server: ServerHandle) -> list[str]:
    return [str(p) for p in server.data_dir.rglob("*") if ".tmp" in p.name or p.name.endswith(".partial")]


def _push(c: httpx.Client, sid: str, start: int) -> httpx.Response:
    return c.post(f"/v1/sessions/{sid}/frames", json={"images": [_png(i) for i in range(start, start + 12)]})


@pytest.mark.parametrize(
    "limit,value,status,words",
    [
        (resource.RLIMIT_NOFILE, 3, 503, "Too many open files"),  # no descriptor can be opened
        (resource.RLIMIT_FSIZE, 64, 507, "space"),  # no file may grow past 64 bytes: a full disk
    ],
    ids=["no-file-descriptors", "disk-full"],
)
def test_a_push_the_machine_cannot_keep_is_a_json_error_and_leaves_nothing(
    server: ServerHandle, client: httpx.Client, limit: int, value: int, status: int, words: str
):
    sid = create(client, memory="rekv")["id"]
    assert _push(client, sid, 0).status_code == 200
    before = memory_of(client, sid)
    with starved(server, limit, value):
        r = _push(client, sid, 100)
    assert r.status_code == status, (r.status_code, r.text[:500])
    assert r.headers["content-type"] == "application/json", r.text[:200]
    assert words in r.json()["detail"], r.json()
    if status == 503:
        assert int(r.headers["retry-after"]) > 0
    assert "<server>" in r.json()["detail"] or str(server.data_dir) not in r.json()["detail"]
    assert _temp_files(server) == []
    assert memory_of(client, sid) == before  # rolled back: the session is as it was
    again = _push(client, sid, 100)  # the machine has recovered: the same push is taken
    assert again.status_code == 200, again.text
    assert again.json()["status"]["frames"] == before["frames"] + 12
    client.delete(f"/v1/sessions/{sid}")


def test_storage_errors_and_os_errors_map_to_their_status():
    assert fault_of(StorageFull("the disk is full")).status == 507
    busy = fault_of(StorageUnavailable("the store does not answer"))
    assert busy.status == 503 and busy.headers["Retry-After"]
    assert fault_of(CorruptData("block 3 failed its checksum")).status == 500
    for code, status in ((errno.ENOSPC, 507), (errno.EDQUOT, 507), (errno.EMFILE, 503), (errno.ENFILE, 503)):
        fault = fault_of(OSError(code, "x", "/srv/data/secret"))
        assert fault.status == status and "/srv/data/secret" not in fault.message
    try:  # raised from a disk-full error: still a full disk
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as e:
            raise RuntimeError("saving failed") from e
    except RuntimeError as e:
        assert fault_of(e).status == 507
    assert fault_of(OSError(errno.ENOENT, "missing")) is None and fault_of(ValueError("x")) is None


def test_a_thumbnail_the_disk_cannot_hold_leaves_no_temporary_file(tmp_path):
    """The thumbnail's temporary file is a link to /dev/full (every write: ENOSPC): the error comes out,
    and neither the temporary file nor a thumbnail stays."""
    from videokv.server.thumbnails import Thumbnails, _name

    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    thumbs = Thumbnails(tmp_path / "thumbs")
    thumbs.folder.mkdir()
    (thumbs.folder / f".{_name(1.0)}.tmp").symlink_to("/dev/full")
    with pytest.raises(OSError) as e:
        thumbs.add(1.0, np.zeros((8, 8, 3), np.uint8))
    assert e.value.errno == errno.ENOSPC
    assert list(thumbs.folder.iterdir()) == [] and thumbs.list() == []


def test_an_upload_without_file_descriptors_is_a_json_503_and_leaves_no_file(
    server: ServerHandle, client: httpx.Client, tmp_path: Path
):
    """The upload's part file cannot be opened (EMFILE): 503 with Retry-After, not a 400 "malformed body",
    and nothing is left in the session's folder."""
    from tests.server.conftest import make_clip

    clip = make_clip(tmp_path / "c.mp4", seconds=2, fps=2)
    sid = create(client, memory="rekv")["id"]
    before = memory_of(client, sid)
    with starved(server, resource.RLIMIT_NOFILE, 3):
        r = client.post(
            f"/v1/sessions/{sid}/video", files={"file": ("c.mp4", clip.read_bytes(), "video/mp4")}
        )
    assert r.status_code == 503 and int(r.headers["retry-after"]) > 0, r.text[:300]
    assert "Too many open files" in r.json()["detail"]
    assert not [p for p in server.data_dir.rglob("*") if "upload" in str(p) and p.is_file()]
    assert _temp_files(server) == [] and memory_of(client, sid) == before
    r = client.post(f"/v1/sessions/{sid}/video", files={"file": ("c.mp4", clip.read_bytes(), "video/mp4")})
    assert r.status_code == 200, r.text[:300]
    client.delete(f"/v1/sessions/{sid}")
