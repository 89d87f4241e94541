"""Issue 12's smaller defects, one focused test each (the broader tests in test_hardening.py check several at
once, so a failure there on the pre-fix code does not say which defect it was). Each test fails on the code
before the hardening (docs/SERVER.md, "Regression tests against the pre-fix code")."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.server.conftest import make_clip
from tests.server.test_api import create, upload

SECRET = "SECRET_API_KEY=hunter2"


def test_a_subtitles_path_outside_the_media_dir_is_not_read(serve_factory, tmp_path: Path):
    """A `subtitles` path in a source request must not make the server read a file it was not told to serve,
    nor echo its contents (a file with "-->" in its first line leaked it)."""
    media = tmp_path / "media"
    media.mkdir()
    clip = make_clip(media / "c.mp4", seconds=2, fps=2)
    secret = tmp_path / "secret.env"
    secret.write_text(f"{SECRET} --> nope\n")
    server = serve_factory(media=False, extra=["--media-dir", str(media)])
    with server.client() as c:
        sid = create(c)["id"]
        r = c.post(f"/v1/sessions/{sid}/source", json={"url": str(clip), "subtitles": str(secret)})
        assert "hunter2" not in r.text, r.text
        assert r.status_code in (400, 403), r.text
        assert c.get(f"/v1/sessions/{sid}").json()["frames"] == 0


def test_errors_do_not_show_server_paths(serve_factory, tmp_path: Path):
    """Uploads the server cannot use (malformed subtitles beside a good video, a file that is not a video):
    the error names the upload, not where the server keeps it (its data folder)."""
    server = serve_factory(media=False)
    clip = make_clip(tmp_path / "c.mp4", seconds=2, fps=2)
    junk = tmp_path / "junk.mp4"
    junk.write_text("not a video\n" * 50)
    bad_srt = "1\n00:00:01,000 --> 00:00:02,000\nok\n\n2\n00:00:0x,000 --> soon\nbad\n\n"
    with server.client() as c:
        sid = create(c)["id"]
        for r in (upload(c, sid, clip, subtitles=bad_srt), upload(c, sid, junk)):
            assert 400 <= r.status_code < 500, r.text
            for form in {str(server.data_dir), str(server.data_dir.resolve())}:
                assert form not in r.text, r.text
            assert "/uploads/" not in r.text, r.text
        assert c.get(f"/v1/sessions/{sid}").json()["frames"] == 0


def test_url_sources_are_off_by_default(serve_factory):
    """Without --allow-urls, a URL source is refused before anything is fetched."""
    server = serve_factory(media=False)
    with server.client() as c:
        sid = create(c)["id"]
        r = c.post(f"/v1/sessions/{sid}/source", json={"url": "http://127.0.0.1:9/c.mp4"})
        assert r.status_code == 403, (r.status_code, r.text)


def test_a_save_killed_midway_leaves_no_folder_behind(serve_factory):
    """The temporary folder of a save that a kill interrupted (.<name>.saving-<pid>) is removed at start."""
    server = serve_factory(media=False)
    server.stop()
    stale = server.data_dir / "snapshots" / ".snap.saving-12345"
    stale.mkdir(parents=True)
    (stale / "blocks.bin").write_bytes(b"x" * 100)
    server.start()
    assert not stale.exists()


def test_serve_help_states_the_memory_the_server_uses(serve_factory):
    """`videokv serve --help` names the default memory preset the server really gives a new session."""
    out = subprocess.run(
        [sys.executable, "-m", "videokv.server", "--help"], capture_output=True, text=True, timeout=120
    ).stdout
    flat = " ".join(out.split())
    said = re.search(r"--memory MEMORY .*?\(default: ([a-z0-9_]+)\)", flat)
    assert said, flat[:2000]
    server = serve_factory(media=False, memory=None)  # no --memory: the server's own default
    with server.client() as c:
        assert create(c)["memory"] == said.group(1)


def test_the_memory_set_error_lists_no_reserved_keys(serve_factory):
    """A bad memory_set key: the error lists the valid keys, not the server's own (spill_dir, ...)."""
    server = serve_factory(media=False)
    with server.client() as c:
        r = c.post("/v1/sessions", json={"memory_set": ["no_such_key=1"]})
        assert r.status_code in (400, 422) and "no_such_key" in r.text, r.text
        assert not any(k in r.text for k in ("spill_dir", "host_bytes", "device_bytes")), r.text
