"""Issue 12: bounded cost per request, no cross-site access, validated time, server files, exact resume.

Every test talks to a real `videokv serve` subprocess (tiny model) on loopback, as an attacker or a careless
client would; each refused request must leave the session's memory exactly as it was.
"""

from __future__ import annotations

import base64
import http.server
import inspect
import io
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.server.conftest import TOKEN, ServerHandle, make_clip, srt_text
from tests.server.test_api import answer_of, create, memory_of, raw_body, upload, wait_for
from videokv.server.scheduler import Scheduler

QUESTION = "what colour is the umbrella?"
QUANTUM = inspect.signature(Scheduler).parameters["quantum"].default  # steps a job runs at level 0
FAST_S = 10.0  # a refusal is decided before any model work: well under this on the loaded CI machine

STRICT = [
    "--max-request-tokens", "64",
    "--max-request-pixels", "200000",
    "--max-json-mb", "1",
    "--allowed-host", "videokv.local",
]  # fmt: skip


@pytest.fixture(scope="module")
def strict(tmp_path_factory) -> ServerHandle:
    """A server with a token, no media folder, no URL sources, and a few small limits."""
    from tests.server.conftest import _make

    handle = _make(tmp_path_factory.mktemp("strict"), TOKEN, ["--memory", "rekv", *STRICT])
    handle.start()
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def sc(strict: ServerHandle):
    with strict.client() as c:
        yield c


@pytest.fixture(scope="module")
def filled(sc: httpx.Client, tmp_path_factory) -> str:
    """A session with 4 s of video in it."""
    clip = make_clip(tmp_path_factory.mktemp("clips") / "c.mp4", seconds=4, fps=4)
    sid = create(sc, memory="rekv", fps=1.0)["id"]
    assert upload(sc, sid, clip).status_code == 200
    return sid


def rss_mib(server: ServerHandle) -> float:
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def refused(r: httpx.Response, status: int, *needles: str) -> None:
    assert r.status_code == status, (r.status_code, r.text[:500])
    for n in needles:
        assert n in r.json()["detail"], (n, r.json()["detail"])


# ---- 1. bounded cost ------------------------------------------------------------------------------------
def test_long_question_choices_and_text_are_refused_before_work(sc: httpx.Client, filled: str):
    before = memory_of(sc, filled)
    cases = [
        ("/ask", {"question": "why " * 5000}, "--max-question-chars"),  # 20,000 characters
        ("/ask", {"question": QUESTION, "choices": ["a" * 50_000, "b" * 50_000]}, "--max-choice-chars"),
        ("/ask", {"question": "the umbrella " * 100}, "--max-request-tokens"),  # 1300 chars, > 64 tokens
        ("/text", {"events": [{"text": "x" * 20_000}] * 3}, "--max-text-chars"),
        ("/text", {"events": [{"text": "hi"}] * 300}, "--max-text-events"),
        ("/text", {"events": [{"text": "the red umbrella " * 60}]}, "--max-request-tokens"),
    ]
    for path, body, flag in cases:
        t0 = time.monotonic()
        r = sc.post(f"/v1/sessions/{filled}{path}", json=body)
        refused(r, 422, flag, "limit")
        assert time.monotonic() - t0 < FAST_S, (path, flag)
    assert memory_of(sc, filled) == before
    assert sc.get(f"/v1/sessions/{filled}").json()["state"] == "idle"
    ok = sc.post(f"/v1/sessions/{filled}/ask", json={"question": QUESTION, "max_new_tokens": 2})
    assert ok.status_code == 200


def _png(width: int, height: int) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (width, height)).save(buf, format="PNG")  # a few hundred KB for millions of pixels
    return base64.b64encode(buf.getvalue()).decode()


def test_pixels_are_checked_from_headers_before_decoding(
    strict: ServerHandle, sc: httpx.Client, filled: str, tmp_path: Path
):
    before = memory_of(sc, filled)
    r = sc.post(f"/v1/sessions/{filled}/frames", json={"images": [_png(4000, 2500)]})  # 10 Mpx > 8.3 Mpx
    refused(r, 413, "--max-frame-pixels", "4000x2500")
    r = sc.post(f"/v1/sessions/{filled}/frames", json={"images": [_png(300, 300)] * 3})  # 270,000 > 200,000
    refused(r, 413, "--max-request-pixels")
    r = sc.post(f"/v1/sessions/{filled}/frames", json={"raw": "", "shape": [1, 4096, 4096, 3]})
    refused(r, 413, "--max-frame-pixels")
    big = make_clip(tmp_path / "big.mp4", seconds=0.5, fps=2, size=(2304, 4096))  # 9.4 Mpx frames
    r = upload(sc, filled, big)
    refused(r, 413, "--max-frame-pixels", "4096x2304")
    assert memory_of(sc, filled) == before
    assert not any((strict.data_dir / "sessions" / filled / "uploads").glob("*"))
    ok = sc.post(f"/v1/sessions/{filled}/frames", json={"images": [_png(84, 56)] * 2})
    assert ok.status_code == 200, ok.text


def test_json_body_is_capped_while_it_streams(strict: ServerHandle, sc: httpx.Client, filled: str):
    before = memory_of(sc, filled)
    sent = {"bytes": 0}
    total = 200 * 2**20

    def body():  # a chunked body (no Content-Length): the cap must hold while it streams in
        yield b'{"raw": "'
        chunk = b"A" * 2**16
        while sent["bytes"] < total:
            sent["bytes"] += len(chunk)
            yield chunk
        yield b'", "shape": [1, 1, 1, 3]}'

    headers = {**strict.headers, "Content-Type": "application/json"}
    rss0 = rss_mib(strict)
    watch = {"rss": rss0, "health_s": 0.0, "stop": False}

    def watcher() -> None:  # the server's memory, and how long /v1/health takes, while the body streams in
        while not watch["stop"]:
            watch["rss"] = max(watch["rss"], rss_mib(strict))
            t = time.monotonic()
            httpx.get(f"{strict.url}/v1/health", headers=strict.headers, timeout=30)
            watch["health_s"] = max(watch["health_s"], time.monotonic() - t)
            time.sleep(0.05)

    thread = threading.Thread(target=watcher)
    thread.start()
    try:
        r = httpx.post(
            f"{strict.url}/v1/sessions/{filled}/frames", content=body(), headers=headers, timeout=120
        )
        refused(r, 413, "--max-json-mb")
    except httpx.HTTPError:  # the server answered 413 and closed the connection while we were still sending
        pass
    finally:
        watch["stop"] = True
        thread.join()
    assert watch["rss"] - rss0 < 64, watch  # 200 MiB sent; the server held at most about the cap
    assert watch["health_s"] < 3.0, watch
    # a declared Content-Length over the cap: refused from the header
    r = sc.post(f"/v1/sessions/{filled}/frames", content=b"{" + b" " * (2 * 2**20) + b"}", headers=headers)
    refused(r, 413, "--max-json-mb")
    # forms and text/plain are not JSON (a cross-site <form> could send them)
    r = sc.post("/v1/sessions", content=b"", headers={"Content-Type": "application/x-www-form-urlencoded"})
    refused(r, 415, "application/json")
    r = sc.post("/v1/sessions", content=b'{"memory": "rekv"}', headers={"Content-Type": "text/plain"})
    refused(r, 415)
    r = sc.post(f"/v1/sessions/{filled}/text", content=b'{"events": [', headers=headers)
    refused(r, 400, "JSON")
    assert sc.get("/v1/health").status_code == 200
    assert memory_of(sc, filled) == before


# ---- 2. no cross-site access ------------------------------------------------------------------------------
def test_dns_rebinding_and_cross_site_requests_are_refused(serve_factory, tmp_path: Path):
    server = serve_factory(token=None, media=False)  # the default: loopback, no token
    clip = make_clip(tmp_path / "c.mp4", seconds=2, fps=2)
    url = server.url
    for path in ("/", "/v1/health", "/openapi.json", "/static/app.js", "/v1/sessions"):
        r = httpx.get(f"{url}{path}", headers={"Host": "attacker.example"})
        refused(r, 403, "attacker.example", "--allowed-host")
    r = httpx.post(f"{url}/v1/sessions", json={}, headers={"Host": "attacker.example:8000"})
    refused(r, 403)
    evil = {"Origin": "http://evil.example"}
    r = httpx.post(f"{url}/v1/sessions", headers=evil)  # the empty cross-site form post of the issue
    refused(r, 403, "cross-site")
    r = httpx.post(f"{url}/v1/sessions", content=b"", headers={**evil, "Content-Type": "text/plain"})
    refused(r, 403)
    # another port on loopback is another origin too; "null" (sandboxed frames, file://) as well
    for origin in ("http://127.0.0.1:1", "null"):
        refused(httpx.post(f"{url}/v1/sessions", json={}, headers={"Origin": origin}), 403)
    assert httpx.get(f"{url}/v1/sessions").json() == []  # nothing was created
    with httpx.Client(base_url=url, timeout=300) as c:
        sid = create(c)["id"]
        files = {"file": (clip.name, clip.read_bytes(), "video/mp4")}
        refused(c.post(f"/v1/sessions/{sid}/video", files=files, headers=evil), 403)
        assert c.get(f"/v1/sessions/{sid}").json()["frames"] == 0
        # the page's own requests: same origin, names of loopback and IP literals
        same = {"Origin": url}
        assert c.post(f"/v1/sessions/{sid}/video", files=files, headers=same).status_code == 200
        assert c.get("/", headers={"Host": f"localhost:{server.port}"}).status_code == 200
        assert c.get("/v1/health", headers={"Host": f"[::1]:{server.port}"}).status_code == 200
        assert c.get("/", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403


def test_allowed_host_and_the_page_with_a_token(strict: ServerHandle):
    """--allowed-host adds a name (Host and the page's Origin); with --token the page and its calls work."""
    host = {"Host": f"videokv.local:{strict.port}"}
    assert httpx.get(f"{strict.url}/", headers=host).status_code == 200
    page_origin = {**host, "Origin": f"http://videokv.local:{strict.port}", **strict.headers}
    r = httpx.post(f"{strict.url}/v1/sessions", json={}, headers=page_origin)
    assert r.status_code == 201, r.text
    httpx.delete(f"{strict.url}/v1/sessions/{r.json()['id']}", headers=strict.headers)
    refused(httpx.get(f"{strict.url}/v1/health", headers={"Host": "other.example"}), 403)
    # the token is still needed, and the guard answers before the token check
    refused(httpx.get(f"{strict.url}/v1/health", headers={"Origin": strict.url}), 401)


# ---- 3. time ----------------------------------------------------------------------------------------------
def test_times_are_finite_bounded_and_monotonic(sc: httpx.Client, tmp_path: Path):
    sid = create(sc, memory="rekv", fps=1.0)["id"]
    frames = np.zeros((1, 56, 84, 3), np.uint8)
    assert sc.post(f"/v1/sessions/{sid}/frames", json=raw_body(np.repeat(frames, 2, 0))).status_code == 200
    before = memory_of(sc, sid)
    clock = before["clock"]
    for t in (1e250, clock + 10_000):
        r = sc.post(f"/v1/sessions/{sid}/frames", json={**raw_body(frames), "timestamps": [t]})
        refused(r, 422, "--max-time-jump")
    r = sc.post(
        f"/v1/sessions/{sid}/frames",
        content=json.dumps({**raw_body(frames), "timestamps": [float("nan")]}).encode(),
        headers={"Content-Type": "application/json"},
    )
    refused(r, 422, "finite")
    for start in (1e12, 3.6e11):
        r = sc.post(f"/v1/sessions/{sid}/text", json={"events": [{"text": "late", "start": start}]})
        refused(r, 422, "--max-time-jump")
    r = sc.post(f"/v1/sessions/{sid}/text", json={"events": [{"text": "long ago", "start": 0, "end": 0}]})
    assert r.status_code == 200  # 2 s late: placed at the clock (the late-text rule)
    r = sc.post(f"/v1/sessions/{sid}/text", json={"events": [{"text": "x", "start": 5.0, "end": 4.0}]})
    refused(r, 422, "ends")
    st = sc.get(f"/v1/sessions/{sid}").json()
    assert st["state"] == "idle" and st["clock"] == clock
    spans = sc.get(f"/v1/sessions/{sid}/timeline").json()["spans"]
    assert [s for s in spans if s["kind"] == "text"][0]["t0"] == clock
    # text more than --max-late-text (60 s) behind the clock is refused
    sc.post(f"/v1/sessions/{sid}/frames", json={**raw_body(frames), "timestamps": [clock + 100]})
    r = sc.post(f"/v1/sessions/{sid}/text", json={"events": [{"text": "old", "start": 1.0}]})
    refused(r, 422, "--max-late-text")

    # subtitles: a cue 99,999,999 h in is refused; cues after the video's end are left out, with a warning
    clip = make_clip(tmp_path / "c.mp4", seconds=4, fps=4)
    s2 = create(sc, memory="rekv", fps=1.0)["id"]
    r = upload(
        sc,
        s2,
        clip,
        subtitles=srt_text([(1.0, 2.0, "ok"), (99_999_999 * 3600.0, 99_999_999 * 3600.0 + 1, "x")]),
    )
    refused(r, 422, "--max-time-jump")
    assert sc.get(f"/v1/sessions/{s2}").json()["blocks"] == 0
    r = upload(
        sc, s2, clip, subtitles=srt_text([(1.0, 2.0, "in"), (3.5, 9.0, "clipped"), (20.0, 21.0, "past")])
    )
    assert r.status_code == 200, r.text
    assert r.json()["added"] == 4 + 2 and "1 subtitle event" in r.json()["warnings"][0]
    assert r.json()["status"]["clock"] == pytest.approx(4.0)
    spans = sc.get(f"/v1/sessions/{s2}/timeline").json()["spans"]
    assert max(s["t1"] for s in spans) <= 4.0 + 1e-6
    for x in (sid, s2):
        sc.delete(f"/v1/sessions/{x}")


# ---- 4. server files and URLs ----------------------------------------------------------------------------
def test_requests_cannot_read_server_files(strict: ServerHandle, sc: httpx.Client, tmp_path: Path):
    secret = tmp_path / "secret.env"
    secret.write_text("00:00:01,000 --> 00:00:02,000\nSECRET_API_KEY=hunter2\n")
    clip = make_clip(tmp_path / "c.mp4", seconds=2, fps=2)
    sid = create(sc)["id"]
    r = sc.post(f"/v1/sessions/{sid}/source", json={"url": str(clip)})
    refused(r, 403, "--media-dir")
    r = sc.post(f"/v1/sessions/{sid}/source", json={"url": f"file://{clip}"})
    refused(r, 403, "--media-dir")
    r = sc.post(f"/v1/sessions/{sid}/source", json={"url": "http://127.0.0.1:1/x.mp4"})
    refused(r, 403, "--allow-urls")
    r = sc.post(f"/v1/sessions/{sid}/source", json={"url": "concat:/etc/passwd"})
    assert r.status_code in (400, 403)
    # an uploaded non-video: the error names the upload, not the server's folder
    junk = tmp_path / "junk.mp4"
    junk.write_text("not a video\n" * 50)
    r = upload(sc, sid, junk)
    assert r.status_code == 415 and str(strict.data_dir) not in r.text and "/uploads/" not in r.text
    # memory_set errors do not list the server's own keys
    r = sc.post("/v1/sessions", json={"memory_set": ["no_such_key=1"]})
    assert r.status_code == 400 and "no_such_key" in r.text
    assert not any(k in r.text for k in ("spill_dir", "host_bytes", "device_bytes")), r.text
    sc.delete(f"/v1/sessions/{sid}")


def test_media_dir_url_allowlist_and_redirects(serve_factory, tmp_path: Path):
    media = tmp_path / "media"
    media.mkdir()
    make_clip(media / "c.mp4", seconds=2, fps=2)
    (media / "bad.srt").write_text("SECRET_API_KEY=hunter2 --> nope\n")
    outside = tmp_path / "secret.srt"
    outside.write_text(srt_text([(0.0, 1.0, "SECRET_API_KEY=hunter2")]))
    (media / "link.srt").symlink_to(outside)

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{other_port}/c.mp4")
            self.end_headers()

        def log_message(self, *a):
            pass

    redirector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    other_port = redirector.server_address[1] + 1
    threading.Thread(target=redirector.serve_forever, daemon=True).start()
    allowed = f"127.0.0.1:{redirector.server_address[1]}"
    server = serve_factory(media=False, extra=["--media-dir", str(media), "--allow-url-host", allowed])
    try:
        with server.client() as c:
            sid = create(c)["id"]
            for subs in (str(outside), str(media / "link.srt"), "../secret.srt"):
                r = c.post(f"/v1/sessions/{sid}/source", json={"url": "c.mp4", "subtitles": subs})
                refused(r, 403, "media folder")
                assert "hunter2" not in r.text
            r = c.post(f"/v1/sessions/{sid}/source", json={"url": "c.mp4", "subtitles": "bad.srt"})
            assert r.status_code == 400 and "hunter2" not in r.text and str(media) not in r.text
            r = c.post(f"/v1/sessions/{sid}/source", json={"url": "http://example.com/c.mp4"})
            refused(r, 403, "--allow-url-host")
            r = c.post(f"/v1/sessions/{sid}/source", json={"url": f"http://{allowed}/c.mp4"})
            refused(r, 403, "redirects")
            r = c.post(f"/v1/sessions/{sid}/source", json={"url": "c.mp4", "realtime": False})
            assert r.status_code == 202, r.text
            wait_for(lambda: c.get(f"/v1/sessions/{sid}").json()["source"]["state"] == "done", 120)
            assert c.get(f"/v1/sessions/{sid}").json()["frames"] == 2
        # (a save a kill interrupted: tests/server/test_regressions.py)
    finally:
        redirector.shutdown()


def test_serve_help_states_the_real_default_memory():
    out = subprocess.run(
        [sys.executable, "-m", "videokv.server", "--help"], capture_output=True, text=True, timeout=120
    ).stdout
    flat = " ".join(out.split())
    from videokv.presets import DEFAULT_PRESET

    assert DEFAULT_PRESET == "videokv"
    assert f"(default: {DEFAULT_PRESET})" in flat and "(default: full)" not in flat
    for flag in ("--max-question-chars", "--max-json-mb", "--allowed-host", "--media-dir", "--allow-urls"):
        assert flag in flat


# ---- 5. exact resume ------------------------------------------------------------------------------------
GRID_FRAMES = 48  # a 24 s clip at 5 fps sampled at 2 fps


def _grid_source(serve_factory, tmp_path: Path, seconds: int = 24) -> tuple[ServerHandle, dict]:
    """A server ingesting in chunks of 4 frames, and a source body: a 5 fps clip of `seconds` (24) sampled
    at 2 fps."""
    clip = make_clip(tmp_path / "five.mp4", seconds=seconds, fps=5)
    return serve_factory(extra=["--chunk-frames", "4"]), {"url": str(clip), "fps": 2.0, "realtime": False}


def _status(c: httpx.Client, sid: str) -> dict:
    return c.get(f"/v1/sessions/{sid}").json()


def _assert_matches_uninterrupted(c: httpx.Client, sid: str, body: dict, frames: int = GRID_FRAMES) -> None:
    """Wait for `sid`'s source to finish, run the same source uninterrupted in a new session and compare:
    identical frame times, frame and block counts, clock and (greedy) answers."""

    def finished(session: str) -> dict | None:
        s = _status(c, session)
        assert not (s["source"] and s["source"]["state"] == "error"), f"the source failed: {s}"
        return s if s["source"] and s["source"]["state"] == "done" else None

    done = wait_for(lambda: finished(sid))
    ref = create(c, memory="rekv", fps=1.0)["id"]
    assert c.post(f"/v1/sessions/{ref}/source", json=body).status_code == 202
    whole = wait_for(lambda: finished(ref))
    times = c.get(f"/v1/sessions/{sid}/timeline").json()["thumbnails"]
    ref_times = c.get(f"/v1/sessions/{ref}/timeline").json()["thumbnails"]
    assert times == ref_times and len(times) == whole["frames"] == frames
    assert (done["frames"], done["blocks"], done["clock"]) == (
        whole["frames"],
        whole["blocks"],
        whole["clock"],
    )
    assert answer_of(c, sid) == answer_of(c, ref)


def test_resume_after_kill_continues_the_sampling_grid(serve_factory, tmp_path: Path):
    """A 5 fps clip sampled at 2 fps, killed mid-source twice: the same frame times, blocks and answers
    as an uninterrupted run of the same source."""
    server, body = _grid_source(serve_factory, tmp_path)
    # pulled at stream pace: the tiny model otherwise can finish all 48 frames before the second kill, and a
    # restarted server does not report a source that had already finished (source None, never "done")
    body = dict(body, realtime=True)
    c = server.client()
    sid = create(c, memory="rekv", fps=1.0)["id"]
    assert c.post(f"/v1/sessions/{sid}/source", json=body).status_code == 202
    for at_least in (9, 22):
        seen = wait_for(lambda n=at_least, c=c: (s := _status(c, sid))["frames"] >= n and s, 240, 0.05)
        assert seen["frames"] < GRID_FRAMES, "the kill must land mid-source"
        c.close()
        server.restart()  # SIGKILL, then start on the same data dir: the source resumes
        c = server.client()
    _assert_matches_uninterrupted(c, sid, body)
    c.close()


CHAOS_KILLS = 6  # N >= 5 of them while the source runs
CHAOS_SEED = 12
CHAOS_SECONDS = (
    24  # of the 5 fps clip: 48 frames at 2 fps, pulled at stream pace so that kills land mid-source
)


def test_chaos_kills_at_random_moments_resume_exactly(serve_factory, tmp_path: Path):
    """kill -9 at CHAOS_KILLS random moments (seeded) of the same 5 fps -> 2 fps source, restarting each
    time: some right after a restart (while the source resumes), some mid-chunk, some between chunks. The
    result equals an uninterrupted run: frame times, blocks, clock and answers. Bounded: under ~3 min."""
    rng = np.random.default_rng(CHAOS_SEED)
    server, body = _grid_source(serve_factory, tmp_path, seconds=CHAOS_SECONDS)
    body = dict(body, realtime=True)  # the tiny model ingests far faster than a restart takes
    # a moment = 0 to 6 more committed frames than when the server last answered again (0: right after a
    # restart, while the source resumes), then a delay
    steps = rng.integers(0, 7, CHAOS_KILLS)
    delays = rng.uniform(0.0, 0.4, CHAOS_KILLS)
    c = server.client()
    sid = create(c, memory="rekv", fps=1.0)["id"]
    assert c.post(f"/v1/sessions/{sid}/source", json=body).status_code == 202
    started = time.monotonic()
    seen = []
    for step, delay in zip(steps, delays, strict=True):
        at_least = _status(c, sid)["frames"] + int(step)
        try:
            wait_for(lambda n=at_least, c=c: _status(c, sid)["frames"] >= n, 120, 0.02)
        except AssertionError:
            raise AssertionError(f"waiting for {at_least} frames after {seen}: {_status(c, sid)}") from None
        time.sleep(float(delay))
        state = _status(c, sid)
        seen.append((state["frames"], (state["source"] or {}).get("state", "done")))
        c.close()
        server.restart()  # SIGKILL at this moment, then start on the same data dir: the source resumes
        c = server.client()
    assert server.starts == CHAOS_KILLS + 1
    # at least 5 kills landed while the source was running (one racing the source's end measures nothing)
    assert sum(state == "running" for _, state in seen) >= 5, seen
    _assert_matches_uninterrupted(c, sid, body, frames=CHAOS_SECONDS * 2)
    c.close()
    assert time.monotonic() - started < 240, "the chaos test must stay bounded"


def test_refused_requests_slow_their_own_session_only(serve_factory):
    """--max-session-rps / --refusal-cost: a session whose requests keep being refused for a limit waits its
    turn (asleep, no work), another session's requests are not held up, and reads are never counted."""
    server = serve_factory(media=False, extra=["--max-session-rps", "1", "--refusal-cost", "5"])
    with server.client() as c:
        bad, good = create(c)["id"], create(c)["id"]
        started = time.monotonic()
        for _ in range(2):  # a burst of 2 fits the bucket; each refusal then costs 5 more requests
            refused(c.post(f"/v1/sessions/{bad}/ask", json={"question": "why " * 1000}), 422)
        t0 = time.monotonic()
        ok = c.post(f"/v1/sessions/{good}/text", json={"events": [{"text": "hello"}]})
        assert ok.status_code == 200 and time.monotonic() - t0 < 3.0
        for _ in range(20):
            assert c.get(f"/v1/sessions/{bad}").status_code == 200
        r = c.post(f"/v1/sessions/{bad}/text", json={"events": [{"text": "hello"}]})
        waited = time.monotonic() - started
        assert r.status_code == 200, r.text
        # 3 writes + 2 x 5 refusal costs = 13 tokens, 2 in the bucket, 1 a second: the third write ends
        # no sooner than 11 s after the first began
        assert waited > 10.5, waited
        assert c.get(f"/v1/sessions/{bad}").json()["blocks"] == 1


def test_memory_set_cannot_grow_the_ingest_context_past_the_limit(serve_factory):
    """`memory_set ingest.frames=100000` (or an unbounded window) would grow the ingest context outside the
    session's byte budget: refused (422 naming --max-ingest-tokens); past the limit at ingest time, the
    ingest is refused and the memory is unchanged."""
    server = serve_factory(media=False, extra=["--max-ingest-tokens", "200"])
    with server.client() as c:
        for pair in ("ingest.frames=100000", "window=none", "window=5000"):
            refused(c.post("/v1/sessions", json={"memory_set": [pair]}), 422, "--max-ingest-tokens")
        assert c.get("/v1/sessions").json() == []
        sid = create(c, memory_set=["ingest.frames=150"])["id"]  # 150 frames of a few tokens each: > 200
        frames = np.zeros((4, 56, 84, 3), np.uint8)
        assert c.post(f"/v1/sessions/{sid}/frames", json=raw_body(frames)).status_code == 200
        before = memory_of(c, sid)
        r = c.post(f"/v1/sessions/{sid}/frames", json=raw_body(np.repeat(frames, 25, 0)))
        refused(r, 422, "--max-ingest-tokens", "ingest context")
        assert memory_of(c, sid) == before


def test_a_redirect_given_to_ffmpeg_is_not_followed(serve_factory, tmp_path: Path):
    """The server checks an http source's redirects itself; a redirect the remote gives only to FFmpeg's own
    request (here: by its User-Agent) to a port not on --allow-url-host must not be followed."""
    clip = make_clip(tmp_path / "c.mp4", seconds=2, fps=2).read_bytes()
    hits: list[str] = []

    def send_clip(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(clip)))
        handler.end_headers()
        handler.wfile.write(clip)

    class Target(http.server.BaseHTTPRequestHandler):  # the disallowed port: must never be reached
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            send_clip(self)

        def log_message(self, *a):
            pass

    class Sly(http.server.BaseHTTPRequestHandler):  # the allowed port: 200 to the checker, 302 to FFmpeg
        def do_GET(self):  # noqa: N802
            if self.headers.get("User-Agent", "").startswith("Lavf"):
                self.send_response(302)
                self.send_header("Location", f"http://127.0.0.1:{target.server_address[1]}/c.mp4")
                self.end_headers()
                return
            send_clip(self)

        def log_message(self, *a):
            pass

    target = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Target)
    sly = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sly)
    for s in (target, sly):
        threading.Thread(target=s.serve_forever, daemon=True).start()
    allowed = f"127.0.0.1:{sly.server_address[1]}"
    server = serve_factory(media=False, extra=["--allow-url-host", allowed])
    try:
        with server.client() as c:
            sid = create(c)["id"]
            r = c.post(
                f"/v1/sessions/{sid}/source", json={"url": f"http://{allowed}/c.mp4", "realtime": False}
            )
            assert r.status_code == 202, r.text
            st = wait_for(lambda: (s := _status(c, sid))["source"]["state"] != "running" and s, 120)
            assert st["source"]["state"] == "error" and st["frames"] == 0, st
            assert hits == []
    finally:
        for s in (target, sly):
            s.shutdown()


def test_a_short_question_waits_for_one_slice_of_long_answers_not_for_them(
    serve_factory, tmp_path, monkeypatch
):
    """Short jobs first: with two 1024-token answers of another session under way, an honest session's short
    questions run after the slice in progress, even though the honest session has used more model time
    (by fair share alone, the long answers ran until the two sessions' model times met: ~1 s of slices,
    the credit a session gets when it starts). Read from the server's job trace (VIDEOKV_TRACE_JOBS).
    Levels and aging count steps and pieces, not seconds (issue 34, item 10): with aging by wall-clock
    seconds this failed 1 run in 3 beside busy processes (22 slices of the long answers inside one short
    question)."""
    trace = tmp_path / "jobs.tsv"
    monkeypatch.setenv("VIDEOKV_TRACE_JOBS", str(trace))
    server = serve_factory(media=False, extra=["--max-session-rps", "1000"])
    with server.client() as c:
        honest, hostile = create(c, memory="rekv")["id"], create(c, memory="rekv")["id"]
        for sid in (honest, hostile):
            assert (
                c.post(f"/v1/sessions/{sid}/text", json={"events": [{"text": "a red kite"}]}).status_code
                == 200
            )
        for _ in range(3):  # the honest session uses more model time than the hostile one first
            assert c.post(
                f"/v1/sessions/{honest}/ask", json={"question": QUESTION, "max_new_tokens": 48}
            ).is_success

        def long_answer() -> None:
            with server.client() as h:
                h.post(
                    f"/v1/sessions/{hostile}/ask", json={"question": QUESTION * 20, "max_new_tokens": 1024}
                )

        threads = [threading.Thread(target=long_answer, daemon=True) for _ in range(2)]
        for t in threads:
            t.start()

        def steps_run(sid: str) -> list[int]:
            """The steps each of `sid`'s questions has run so far (the trace's last column)."""
            steps: dict[str, int] = {}
            for line in trace.read_text().splitlines():
                r = line.split("\t")
                if r[1] == sid and r[2].endswith("ask.<locals>.run"):
                    steps[r[4] + r[5]] = max(steps.get(r[4] + r[5], 0), int(r[6]))
            return list(steps.values())

        # the long answers are under way: each past its first quantum of steps (counted, so this holds on a
        # slow or loaded machine as on a fast one: where a slice is one step, 10 pieces were not enough)
        wait_for(lambda: len(steps_run(hostile)) == 2 and min(steps_run(hostile)) >= 2 * QUANTUM)
        for _ in range(3):
            r = c.post(f"/v1/sessions/{honest}/ask", json={"question": QUESTION, "max_new_tokens": 4})
            assert r.status_code == 200, r.text
        c.delete(f"/v1/sessions/{hostile}")  # ends the long answers
        for t in threads:
            t.join(30)
        rows = [line.split("\t") for line in trace.read_text().splitlines()]
    jobs: dict[str, list[list[str]]] = {}
    for r in rows:
        if r[1] == honest and r[2].endswith("ask.<locals>.run"):
            jobs.setdefault(r[4] + r[5], []).append(r)
    short = list(jobs.values())[-3:]  # the three short questions
    hostile_starts = [float(r[0]) for r in rows if r[1] == hostile]
    for job in short:
        submitted, end = float(job[0][5]), float(job[-1][0]) + float(job[-1][3])
        between = sum(submitted <= t < end for t in hostile_starts)
        assert between <= 2, (between, len(job))  # the slice in progress (and one at most), not ~50
