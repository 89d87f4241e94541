"""The HTTP API against a real `videokv serve` subprocess (tiny model) on loopback."""

from __future__ import annotations

import base64
import functools
import http.server
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.server.conftest import ServerHandle, free_port, make_clip, srt_text

QUESTION = "what colour is the umbrella?"


# ---- helpers ---------------------------------------------------------------------------------------------
def create(client: httpx.Client, **body) -> dict:
    r = client.post("/v1/sessions", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def upload(
    client: httpx.Client, sid: str, video: Path, subtitles: str | None = None, fps: float | None = None
):
    files = {"file": (video.name, video.read_bytes(), "video/mp4")}
    if subtitles is not None:
        files["subtitles"] = ("subs.srt", subtitles.encode(), "text/plain")
    data = {"fps": str(fps)} if fps is not None else {}
    return client.post(f"/v1/sessions/{sid}/video", files=files, data=data)


def png_b64(img: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def raw_body(frames: np.ndarray) -> dict:
    return {"raw": base64.b64encode(frames.tobytes()).decode(), "shape": list(frames.shape)}


def parse_sse(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        events.append((fields["event"], json.loads(fields["data"])))
    return events


MEMORY_FIELDS = (
    "clock",
    "frames",
    "blocks",
    "memory_tokens",
    "memory_bytes",
    "offloaded_bytes",
    "bytes_by_tier",
)


def memory_of(client: httpx.Client, sid: str) -> dict:
    status = client.get(f"/v1/sessions/{sid}").json()
    timeline = client.get(f"/v1/sessions/{sid}/timeline").json()
    return {**{k: status[k] for k in MEMORY_FIELDS}, "timeline": timeline}


def answer_of(client: httpx.Client, sid: str) -> tuple:
    free = client.post(f"/v1/sessions/{sid}/ask", json={"question": QUESTION, "max_new_tokens": 6}).json()
    pick = client.post(
        f"/v1/sessions/{sid}/ask", json={"question": QUESTION, "choices": ["red", "blue", "green"]}
    ).json()
    return free["answer"], free["evidence"], pick["choice"], pick["choice_scores"]


def wait_for(predicate, timeout: float = 240.0, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out waiting")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clips") / "clip.mp4", seconds=6, fps=4)


# ---- the life cycle --------------------------------------------------------------------------------------
def test_session_life_cycle(server: ServerHandle, client: httpx.Client, clip: Path):
    health = client.get("/v1/health").json()
    assert health["status"] == "ok" and health["model"] == "tiny-llava_onevision"
    assert {"rekv", "full", "window"} <= {p["name"] for p in client.get("/v1/presets").json()}

    s = create(client, memory="rekv", fps=1.0, name="life")
    sid = s["id"]
    assert (s["name"], s["memory"], s["state"], s["frames"], s["blocks"]) == ("life", "rekv", "idle", 0, 0)
    assert (server.data_dir / "sessions" / sid / "journal" / "state").exists()

    # upload with subtitles: 6 frames at 1 fps + 2 subtitle events
    subs = srt_text([(1.0, 2.0, "a red umbrella"), (4.0, 5.0, "the umbrella closes")])
    r = upload(client, sid, clip, subtitles=subs)
    assert r.status_code == 200, r.text
    assert r.json()["added"] == 8
    st = r.json()["status"]
    assert (st["frames"], st["clock"], st["state"]) == (6, 6.0, "idle")
    assert st["blocks"] == 8 and st["memory_bytes"] > 0 and st["ingest_fps"] > 0

    # pushed frames: PNG images (timestamps given), then raw uint8 (timestamps default to the clock)
    rng = np.random.default_rng(1)
    imgs = np.zeros((2, 56, 84, 3), np.uint8)
    imgs[0, ..., 0], imgs[1, ..., 2] = 220, 220  # a red frame at 6 s, a blue one at 7 s
    r = client.post(
        f"/v1/sessions/{sid}/frames", json={"images": [png_b64(i) for i in imgs], "timestamps": [6.0, 7.0]}
    )
    assert r.status_code == 200, r.text
    assert r.json()["added"] == 2 and r.json()["status"]["frames"] == 8
    r = client.post(
        f"/v1/sessions/{sid}/frames", json=raw_body(rng.integers(0, 256, (3, 56, 84, 3), np.uint8))
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"]["frames"] == 11 and r.json()["status"]["clock"] == pytest.approx(11.0)

    # pushed text: at the clock by default, or at a given time
    r = client.post(f"/v1/sessions/{sid}/text", json={"events": [{"text": "someone waves"}]})
    assert r.status_code == 200 and r.json()["added"] == 1
    assert r.json()["status"]["blocks"] == st["blocks"] + 5 + 1

    # ask: JSON, multiple choice, and server-sent events that agree with the JSON answer
    answer = client.post(f"/v1/sessions/{sid}/ask", json={"question": QUESTION, "max_new_tokens": 8}).json()
    assert answer["question"] == QUESTION and isinstance(answer["answer"], str)
    assert answer["evidence"] and all(e["t0"] <= e["t1"] <= 11.0 + 1e-6 for e in answer["evidence"])
    assert answer["stats"]["blocks"] == r.json()["status"]["blocks"]
    scored = client.post(
        f"/v1/sessions/{sid}/ask", json={"question": QUESTION, "max_new_tokens": 8, "logprobs": 3}
    ).json()
    assert scored["answer"] == answer["answer"]  # greedy either way
    steps = scored["logprobs"]
    assert 1 <= len(steps) <= 8 and all(len(step["top"]) == 3 for step in steps)
    assert all(step["token_id"] == step["top"][0]["token_id"] for step in steps)  # greedy picks the top-1
    bad = client.post(f"/v1/sessions/{sid}/ask", json={"question": QUESTION, "logprobs": 99})
    assert bad.status_code == 422
    pick = client.post(
        f"/v1/sessions/{sid}/ask", json={"question": QUESTION, "choices": ["red", "blue", "green"]}
    ).json()
    assert pick["choice"] in (0, 1, 2) and pick["answer"] == ["red", "blue", "green"][pick["choice"]]
    assert len(pick["choice_scores"]) == 3
    if pick["stats"].get("choice_by", "likelihood") == "likelihood":
        assert pick["choice_scores"][pick["choice"]] == max(pick["choice_scores"])
    with client.stream(
        "POST", f"/v1/sessions/{sid}/ask", json={"question": QUESTION, "max_new_tokens": 8, "stream": True}
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = parse_sse(resp.read().decode())
    kinds = [k for k, _ in events]
    assert kinds[-1] == "answer" and set(kinds[:-1]) <= {"token"}
    final = events[-1][1]
    assert final["answer"] == answer["answer"] and final["evidence"] == answer["evidence"]
    streamed = "".join(d["text"] for k, d in events if k == "token").strip()
    assert final["answer"].startswith(streamed)

    # status, list, timeline, thumbnails
    status = client.get(f"/v1/sessions/{sid}").json()
    assert status["frames"] == 11 and status["blocks"] == 14
    assert sid in [x["id"] for x in client.get("/v1/sessions").json()]
    timeline = client.get(f"/v1/sessions/{sid}/timeline").json()
    assert timeline["clock"] == status["clock"]
    assert timeline["thumbnails"] == [float(t) for t in range(11)]
    assert min(s["t0"] for s in timeline["spans"]) == 0.0 and max(s["t1"] for s in timeline["spans"]) >= 11.0
    assert {"frame", "text"} <= {s["kind"] for s in timeline["spans"]}
    r = client.get(f"/v1/sessions/{sid}/thumbnail", params={"t": 7.3})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    thumb = Image.open(io.BytesIO(r.content))
    assert thumb.format == "JPEG" and thumb.width <= 160
    # the thumbnail nearest 7.3 s is the (blue) frame pushed at 7.0 s
    mean = np.asarray(thumb.convert("RGB"), dtype=np.float32).mean(axis=(0, 1))
    assert mean[2] > 180 and mean[0] < 40

    # save, list snapshots, restore into a new session that answers the same
    snap = client.post(f"/v1/sessions/{sid}/save").json()["snapshot"]
    listed = {x["snapshot"]: x for x in client.get("/v1/snapshots").json()}
    assert listed[snap]["session"] == sid and listed[snap]["clock"] == status["clock"]
    r = client.post(f"/v1/snapshots/{snap}/restore")
    assert r.status_code == 201, r.text
    twin = r.json()
    assert twin["id"] != sid
    assert {k: twin[k] for k in MEMORY_FIELDS} == {k: status[k] for k in MEMORY_FIELDS}
    assert answer_of(client, twin["id"]) == answer_of(client, sid)

    # delete: gone from the API and from disk
    for x in (sid, twin["id"]):
        assert client.delete(f"/v1/sessions/{x}").status_code == 204
        assert client.get(f"/v1/sessions/{x}").status_code == 404
        assert not (server.data_dir / "sessions" / x).exists()
    assert client.post("/v1/snapshots/no-such-snapshot/restore").status_code == 404


def test_context_preset_and_openapi(client: httpx.Client, clip: Path):
    """A context-mode preset (full) through the API, and the published schema."""
    sid = create(client, memory="full", fps=2.0)["id"]
    r = upload(client, sid, clip)
    assert r.status_code == 200, r.text
    assert r.json()["status"]["frames"] == 12 and r.json()["status"]["memory"] == "full"
    answer = client.post(f"/v1/sessions/{sid}/ask", json={"question": QUESTION, "max_new_tokens": 4}).json()
    assert answer["evidence"] and answer["evidence"][-1]["t1"] == pytest.approx(6.0)
    schema = httpx.get(f"{client.base_url}/openapi.json").json()  # published without the token
    paths = schema["paths"]
    for path in (
        "/v1/sessions",
        "/v1/sessions/{sid}/video",
        "/v1/sessions/{sid}/source",
        "/v1/sessions/{sid}/frames",
        "/v1/sessions/{sid}/text",
        "/v1/sessions/{sid}/ask",
        "/v1/sessions/{sid}/timeline",
        "/v1/sessions/{sid}/thumbnail",
        "/v1/snapshots/{name}/restore",
    ):
        assert path in paths, path
    assert "multipart/form-data" in paths["/v1/sessions/{sid}/video"]["post"]["requestBody"]["content"]
    client.delete(f"/v1/sessions/{sid}")


# ---- fairness --------------------------------------------------------------------------------------------
def test_question_on_one_session_is_not_starved_by_a_live_ingest(client: httpx.Client, tmp_path: Path):
    long_clip = make_clip(tmp_path / "long.mp4", seconds=80, fps=2)
    a = create(client, memory="rekv", fps=2.0)["id"]
    b = create(client, memory="rekv", fps=1.0)["id"]
    small = make_clip(tmp_path / "small.mp4", seconds=2, fps=2)
    assert upload(client, b, small).status_code == 200
    r = client.post(f"/v1/sessions/{a}/source", json={"url": str(long_clip), "realtime": False})
    assert r.status_code == 202, r.text
    assert r.json()["state"] == "live" and r.json()["source"]["state"] == "running"
    wait_for(lambda: client.get(f"/v1/sessions/{a}").json()["frames"] >= 8)

    # a second source, or pushed frames, on a session with a running source: 409
    assert client.post(f"/v1/sessions/{a}/source", json={"url": str(long_clip)}).status_code == 409
    r = client.post(f"/v1/sessions/{a}/frames", json=raw_body(np.zeros((1, 56, 84, 3), np.uint8)))
    assert r.status_code == 409 and "source" in r.json()["detail"]

    answered = []
    for _ in range(3):  # B answers while A's ingest is still running
        ans = client.post(f"/v1/sessions/{b}/ask", json={"question": QUESTION, "max_new_tokens": 4})
        assert ans.status_code == 200
        answered.append(client.get(f"/v1/sessions/{a}").json())
    for a_status in answered:
        assert a_status["source"]["state"] == "running" and a_status["frames"] < 160
    # a question on the live session itself answers from what is ingested so far
    mid = client.post(f"/v1/sessions/{a}/ask", json={"question": QUESTION, "max_new_tokens": 4}).json()
    assert 0 < mid["stats"]["frames"] < 160

    r = client.delete(f"/v1/sessions/{a}/source")
    assert r.status_code == 200 and r.json()["source"]["state"] == "stopped"
    stopped = r.json()["frames"]
    time.sleep(1.0)
    assert client.get(f"/v1/sessions/{a}").json()["frames"] == stopped  # nothing ingests after the stop
    assert client.delete(f"/v1/sessions/{a}/source").json()["source"]["state"] == "stopped"
    for x in (a, b):
        client.delete(f"/v1/sessions/{x}")


def test_live_source_runs_to_the_end(client: httpx.Client, clip: Path, tmp_path: Path):
    subs = tmp_path / "live.srt"
    subs.write_text(srt_text([(2.0, 3.0, "the light turns green")]))
    sid = create(client, memory="rekv", fps=1.0)["id"]
    r = client.post(
        f"/v1/sessions/{sid}/source",
        json={"url": str(clip), "realtime": True, "fps": 2.0, "subtitles": str(subs)},
    )
    assert r.status_code == 202
    done = wait_for(
        lambda: (s := client.get(f"/v1/sessions/{sid}").json())["source"]["state"] == "done" and s
    )
    assert done["frames"] == 12 and done["blocks"] == 13 and done["state"] == "idle"
    assert done["clock"] == pytest.approx(6.0)
    bad = client.post(f"/v1/sessions/{sid}/source", json={"url": str(tmp_path / "missing.mp4")})
    assert bad.status_code == 400 and "missing.mp4" in bad.json()["detail"]
    client.delete(f"/v1/sessions/{sid}")


def test_live_source_over_http(client: httpx.Client, clip: Path):
    """A URL source: PyAV pulls the clip over HTTP from a plain web server (as from a camera's stream)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(clip.parent))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        sid = create(client, memory="rekv", fps=1.0)["id"]
        url = f"http://127.0.0.1:{httpd.server_address[1]}/{clip.name}"
        r = client.post(f"/v1/sessions/{sid}/source", json={"url": url, "realtime": False})
        assert r.status_code == 202 and r.json()["source"]["url"] == url
        done = wait_for(
            lambda: (s := client.get(f"/v1/sessions/{sid}").json())["source"]["state"] != "running" and s
        )
        assert done["source"]["state"] == "done", done
        thumbnails = client.get(f"/v1/sessions/{sid}/timeline").json()["thumbnails"]
        assert done["frames"] == 6 and thumbnails == [float(t) for t in range(6)]
        missing = f"http://127.0.0.1:{httpd.server_address[1]}/missing.mp4"
        r = client.post(f"/v1/sessions/{sid}/source", json={"url": missing, "realtime": False})
        assert r.status_code == 202  # a URL is opened in the background: its failure shows in the status
        failed = wait_for(
            lambda: (s := client.get(f"/v1/sessions/{sid}").json())["source"]["state"] != "running" and s
        )
        assert failed["source"]["state"] == "error" and "missing.mp4" in failed["source"]["error"]
        assert failed["state"] == "error" and failed["frames"] == 6
        client.delete(f"/v1/sessions/{sid}")
    finally:
        httpd.shutdown()


# ---- auth ------------------------------------------------------------------------------------------------
def test_auth(server: ServerHandle):
    url = server.url
    assert httpx.get(f"{url}/v1/health").status_code == 401
    r = httpx.get(f"{url}/v1/sessions", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and "token" in r.json()["detail"]
    assert httpx.post(f"{url}/v1/sessions", json={}).status_code == 401
    assert httpx.get(f"{url}/v1/sessions", headers=server.headers).status_code == 200
    assert httpx.get(f"{url}/").status_code == 200  # the web page asks for the token itself
    assert httpx.get(f"{url}/openapi.json").status_code == 200


def test_serve_refuses_a_public_bind_without_token(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k != "VIDEOKV_TOKEN"}
    cmd = [sys.executable, "-m", "videokv.server", "--model", "tiny-llava_onevision", "--host", "0.0.0.0"]
    cmd += ["--port", str(free_port()), "--data-dir", str(tmp_path / "d")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2
    assert "refusing to bind 0.0.0.0 without a token" in proc.stderr and "--token" in proc.stderr
    assert not (tmp_path / "d").exists()


# ---- limits ----------------------------------------------------------------------------------------------
def test_limits(serve_factory, tmp_path: Path):
    server = serve_factory(max_upload_mb=1, max_sessions=3, session_mb=0.1)
    budget = int(0.1 * 2**20)
    with server.client() as client:
        rekv = create(client, memory="rekv")
        full = create(client, memory="full")
        third = create(client, memory="rekv")
        r = client.post("/v1/sessions", json={})
        assert r.status_code == 429 and "--max-sessions" in r.json()["detail"]

        # an upload over the size limit: 413, nothing kept
        big = tmp_path / "big.mp4"
        big.write_bytes(os.urandom(3 * 2**20))
        r = upload(client, third["id"], big)
        assert r.status_code == 413 and "MiB" in r.json()["detail"]
        assert not any((server.data_dir / "sessions" / third["id"] / "uploads").glob("*"))
        assert client.get(f"/v1/sessions/{third['id']}").json()["frames"] == 0

        # a preset with retrieval stays under the budget by spilling old blocks to disk
        frames = np.random.default_rng(0).integers(0, 256, (96, 56, 84, 3), dtype=np.uint8)
        r = client.post(f"/v1/sessions/{rekv['id']}/frames", json=raw_body(frames))
        assert r.status_code == 200, r.text
        st = r.json()["status"]
        assert st["budget_bytes"] == budget and st["frames"] == 96
        assert 0 < st["memory_bytes"] <= budget and st["offloaded_bytes"] > 0
        assert st["bytes_by_tier"]["disk"] == st["offloaded_bytes"]
        ans = client.post(f"/v1/sessions/{rekv['id']}/ask", json={"question": QUESTION, "max_new_tokens": 4})
        assert ans.status_code == 200 and ans.json()["evidence"]

        # a preset that cannot spill refuses an ingest that would pass the budget, and is left unchanged
        r = client.post(f"/v1/sessions/{full['id']}/frames", json=raw_body(frames[:2]))
        assert r.status_code == 200
        before, answer = memory_of(client, full["id"]), answer_of(client, full["id"])
        r = client.post(f"/v1/sessions/{full['id']}/frames", json=raw_body(frames))
        assert r.status_code == 429 and "budget" in r.json()["detail"]
        assert memory_of(client, full["id"]) == before and answer_of(client, full["id"]) == answer
        assert before["memory_bytes"] <= budget


# ---- bad input leaves the memory unchanged -----------------------------------------------------------
def test_bad_input_leaves_memory_unchanged(
    server: ServerHandle, client: httpx.Client, clip: Path, tmp_path: Path
):
    sid = create(client, memory="rekv", fps=2.0)["id"]
    assert upload(client, sid, clip, fps=1.0).status_code == 200
    journal = server.data_dir / "sessions" / sid / "journal" / "blocks"
    before, answer = memory_of(client, sid), answer_of(client, sid)
    files_before = sorted(p.name for p in journal.iterdir())

    def unchanged() -> None:
        assert memory_of(client, sid) == before
        assert sorted(p.name for p in journal.iterdir()) == files_before

    # not a video
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 100)
    r = upload(client, sid, text)
    assert r.status_code == 415 and "not a video" in r.json()["detail"]
    unchanged()

    # a truncated video: its first chunks decode and are ingested before the cut is found; all rolled back
    whole = make_clip(tmp_path / "whole.mp4", seconds=12, fps=4, seed=3)
    cut = tmp_path / "cut.mp4"
    data = whole.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.6)])
    r = upload(client, sid, cut)
    assert r.status_code == 415 and "truncated" in r.json()["detail"]
    unchanged()

    # frames of the wrong shape
    frames = np.zeros((2, 56, 84, 3), np.uint8)
    r = client.post(
        f"/v1/sessions/{sid}/frames", json={"raw": raw_body(frames)["raw"], "shape": [2, 56, 80, 3]}
    )
    assert r.status_code == 400 and "[2, 56, 80, 3]" in r.json()["detail"]
    r = client.post(
        f"/v1/sessions/{sid}/frames", json={"raw": raw_body(frames)["raw"], "shape": [2, 56, 84, 4]}
    )
    assert r.status_code == 400 and "[T, H, W, 3]" in r.json()["detail"]
    r = client.post(
        f"/v1/sessions/{sid}/frames",
        json={"images": [png_b64(frames[0]), png_b64(np.zeros((8, 8, 3), np.uint8))]},
    )
    assert r.status_code == 400 and "same size" in r.json()["detail"]
    thin = np.zeros((1, 2, 3000, 3), np.uint8)
    r = client.post(f"/v1/sessions/{sid}/frames", json=raw_body(thin))
    assert r.status_code == 400 and "aspect ratio" in r.json()["detail"]
    r = client.post(f"/v1/sessions/{sid}/frames", json={"images": ["bm90IGFuIGltYWdl"]})
    assert r.status_code == 400 and "image 0" in r.json()["detail"]
    r = client.post(f"/v1/sessions/{sid}/frames", json={**raw_body(frames), "timestamps": [1.0, 2.0]})
    assert r.status_code == 400 and "back in time" in r.json()["detail"]
    unchanged()

    # unknown session, empty question, bad requests
    for method, path, body in (
        ("get", "", None),
        ("post", "/ask", {"question": "q"}),
        ("post", "/frames", raw_body(frames)),
        ("get", "/timeline", None),
        ("delete", "", None),
    ):
        r = client.request(method, f"/v1/sessions/nosuchsession{path}", json=body)
        assert r.status_code == 404 and "GET /v1/sessions" in r.json()["detail"]
    r = upload(client, "nosuchsession", clip)
    assert r.status_code == 404
    r = client.post(f"/v1/sessions/{sid}/ask", json={"question": "   "})
    assert r.status_code in (400, 422) and "empty" in r.json()["detail"]
    r = client.post(f"/v1/sessions/{sid}/ask", json={"question": QUESTION, "choices": ["only one"]})
    assert r.status_code == 400
    r = client.post(f"/v1/sessions/{sid}/ask", json={"max_new_tokens": 4})
    assert r.status_code == 422 and "question" in r.json()["detail"]
    r = client.post(f"/v1/sessions/{sid}/text", json={"events": [{"text": "  "}]})
    assert r.status_code == 400
    r = client.post("/v1/sessions", json={"memory": "nope"})
    assert r.status_code == 400 and "rekv" in r.json()["detail"]
    for bad in (["spill_dir=/etc"], ["sinks=abc"], ["retrieve.k=abc"], ["nonsense"]):
        r = client.post("/v1/sessions", json={"memory_set": bad})
        assert r.status_code == 400, (bad, r.text)
    r = client.post(f"/v1/sessions/{sid}/video", content=b"plain", headers={"content-type": "text/plain"})
    assert r.status_code == 400 and "multipart" in r.json()["detail"]
    unchanged()
    assert answer_of(client, sid) == answer
    client.delete(f"/v1/sessions/{sid}")


def test_ask_decoding_options(client: httpx.Client, clip: Path):
    """The ask route takes transformers' decoding options: a seed reproduces a sampled answer (streamed or
    not), a stop string cuts it, and bad options are 400s that say what to change."""
    sid = create(client, memory="rekv", fps=1.0)["id"]
    assert upload(client, sid, clip).status_code == 200
    sampled = {"question": QUESTION, "max_new_tokens": 8, "do_sample": True, "temperature": 0.8, "seed": 4}
    first = client.post(f"/v1/sessions/{sid}/ask", json=sampled).json()
    assert first["stats"]["seed"] == 4 and first["stats"]["finish_reason"] in ("stop", "length")
    again = client.post(f"/v1/sessions/{sid}/ask", json=sampled).json()
    streamed = parse_sse(client.post(f"/v1/sessions/{sid}/ask", json={**sampled, "stream": True}).text)
    assert again["answer"] == first["answer"] == streamed[-1][1]["answer"]
    other = client.post(f"/v1/sessions/{sid}/ask", json={**sampled, "seed": 5}).json()
    assert other["answer"] != first["answer"]
    text = first["answer"]
    k = next(
        i for i in range(1, len(text)) if text[i].strip() and text[i] != "\ufffd" and text.find(text[i]) == i
    )
    cut = client.post(f"/v1/sessions/{sid}/ask", json={**sampled, "stop": [text[k]]}).json()
    assert cut["answer"] == text[:k].strip() and cut["stats"]["finish_reason"] == "stop"
    for bad, message in [
        ({"do_sample": True, "temperature": 0.0}, "temperature"),
        ({"temperature": 0.5}, "only apply when sampling"),
        ({"do_sample": True, "top_p": 1.5}, "top_p"),
        ({"choices": ["red", "blue"], "do_sample": True}, "picked by likelihood"),
    ]:
        r = client.post(f"/v1/sessions/{sid}/ask", json={"question": QUESTION, **bad})
        assert r.status_code in (400, 422) and message in r.json()["detail"], r.text
    client.delete(f"/v1/sessions/{sid}")


def test_sampling_parameters_near_zero_are_refused_not_a_500(client: httpx.Client):
    """Issue 34, item 9: temperature 1e-300 / 5e-324 and repetition_penalty 1e-40 overflowed the logits to
    NaN and torch.multinomial failed (500); they are refused (400) naming the bound, before any work, and
    the bounds themselves answer."""
    sid = create(client, memory="rekv")["id"]
    for bad, message in [
        ({"do_sample": True, "temperature": 1e-300}, "at least 1e-05"),
        ({"do_sample": True, "temperature": 5e-324}, "at least 1e-05"),
        ({"repetition_penalty": 1e-40}, "from 0.01 to 100"),
        ({"do_sample": True, "repetition_penalty": 1e-40, "temperature": 0.5}, "from 0.01 to 100"),
    ]:
        r = client.post(f"/v1/sessions/{sid}/ask", json={"question": QUESTION, "max_new_tokens": 4, **bad})
        assert r.status_code == 400 and message in r.json()["detail"], r.text
    for fine in ({"do_sample": True, "temperature": 1e-5, "seed": 1}, {"repetition_penalty": 0.01}):
        r = client.post(f"/v1/sessions/{sid}/ask", json={"question": QUESTION, "max_new_tokens": 4, **fine})
        assert r.status_code == 200, r.text
    client.delete(f"/v1/sessions/{sid}")
