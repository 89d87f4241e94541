"""`videokv serve --ray` on a real local Ray cluster (a head and two worker nodes, `ray start` processes; two
replicas; the tiny model): placement and affinity, the page through the cluster, bad input as
on one process, OpenAI chats through the router, `kill -9` of a replica mid-ingest and mid-answer (its
sessions resume elsewhere and end as an uninterrupted run; a cut streamed answer ends with a retryable error
event), a move for balance, admission by the replicas' budgets (429), and autoscaling on sessions held. The
cluster runs with Ray's token auth (its default), a token of its own shared by every node as docs/SERVER.md
says; tests/server/test_ray_auth.py runs it with token auth off, and a local `videokv serve --ray`."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.server.conftest import MODEL, TOKEN, free_port, make_clip
from tests.server.test_api import QUESTION, answer_of, create, parse_sse, wait_for

pytest.importorskip("ray.serve")
pytestmark = pytest.mark.ray

SESSION_MB = 8  # each session's resident budget; a replica has room for REPLICA_MB / SESSION_MB = 3
REPLICA_MB = 24
PER_REPLICA = REPLICA_MB // SESSION_MB


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """(URL, data dir, RayCluster) of `videokv serve --ray` with 2 replicas on a head + two worker nodes,
    with Ray's token auth: every node has RAY_AUTH_MODE=token and the cluster's token file; `videokv serve`
    only the file (RAY_AUTH_TOKEN_PATH), and turns token auth on itself."""
    from tests.server.ray_cluster import RayCluster

    base = tmp_path_factory.getbasetemp()
    data = tmp_path_factory.mktemp("raydata")
    ray = RayCluster(workers=2, auth="token")
    try:
        ray.start()
        extra = ["--media-dir", str(base), "--allow-urls", "--chunk-frames", "4"]
        extra += ["--session-mb", str(SESSION_MB), "--replica-mb", str(REPLICA_MB)]
        url = ray.serve(data, extra, auth={"RAY_AUTH_TOKEN_PATH": str(ray.token_path)})
        yield url, data, ray
    finally:
        ray.stop()


@pytest.fixture
def rc(cluster) -> Iterator[httpx.Client]:
    """A client of the cluster; the sessions a test leaves are deleted after it."""
    with httpx.Client(base_url=cluster[0], headers={"Authorization": f"Bearer {TOKEN}"}, timeout=300) as c:
        yield c
        for s in c.get("/v1/sessions").json():
            c.delete(f"/v1/sessions/{s['id']}")


def raw_frames(n: int, seed: int = 0) -> dict:
    frames = np.random.default_rng(seed).integers(0, 256, (n, 56, 84, 3), dtype=np.uint8)
    return {"raw": base64.b64encode(frames.tobytes()).decode(), "shape": list(frames.shape)}


def replicas(c: httpx.Client) -> dict[str, dict]:
    return {r["id"]: r for r in c.get("/v1/cluster").json()["replicas"]}


def test_sessions_spread_and_every_request_reaches_their_replica(rc: httpx.Client):
    ids = [create(rc, memory="rekv", fps=2.0) for _ in range(4)]
    holders = {s["id"]: s["replica"]["id"] for s in ids}
    live = replicas(rc)
    assert len(live) == 2 and len({r["node"] for r in live.values()}) == 1  # one machine, two nodes
    assert sorted(list(holders.values()).count(r) for r in live) == [2, 2]  # least loaded first
    pids = {r["id"]: r["pid"] for r in live.values()}
    for k, (sid, holder) in enumerate(holders.items()):
        added = rc.post(f"/v1/sessions/{sid}/frames", json=raw_frames(3 + k, seed=k)).json()
        assert added["status"]["replica"] == {"id": holder, "pid": pids[holder], "node": live[holder]["node"]}
        for _ in range(3):  # reads, questions, timelines: always the holder (it alone has the memory)
            st = rc.get(f"/v1/sessions/{sid}").json()
            assert st["replica"]["id"] == holder and st["blocks"] == 3 + k
        r = rc.post(f"/v1/sessions/{sid}/ask", json={"question": QUESTION, "max_new_tokens": 3})
        assert r.status_code == 200 and r.json()["stats"]["blocks"] == 3 + k
        with rc.stream(
            "POST",
            f"/v1/sessions/{sid}/ask",
            json={"question": QUESTION, "max_new_tokens": 3, "stream": True},
        ) as s:
            body = s.read().decode()
        assert s.headers["content-type"].startswith("text/event-stream")
        assert "event: token" in body and "event: answer" in body
        assert len(rc.get(f"/v1/sessions/{sid}/timeline").json()["thumbnails"]) == 3 + k
    listed = rc.get("/v1/sessions").json()  # merged from both replicas
    assert {s["id"]: s["replica"]["id"] for s in listed} == holders
    assert rc.get("/v1/health").json()["sessions"] == 4
    assert {sid for r in replicas(rc).values() for sid in r["sessions"]} == set(holders)
    # the web page and its assets through the cluster (no token needed)
    page = httpx.get(f"{rc.base_url}/", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="ask"' in page.text
    assert httpx.get(f"{rc.base_url}/static/app.js", timeout=30).status_code == 200
    assert rc.get("/openapi.json").json()["paths"]["/v1/sessions/{sid}/ask"]


def test_token_auth_lets_the_token_holders_in_and_refuses_the_others_clearly(cluster, tmp_path: Path):
    """The cluster's nodes joined with its token and `videokv serve` found it (RAY_AUTH_TOKEN_PATH, no
    RAY_AUTH_MODE: Ray alone would not turn token auth on for an explicit address). A `videokv serve --ray`
    without the token (a fresh HOME, no Ray auth variables) or with a wrong one is refused: it exits 1 with a
    message naming the cure, not a traceback or a hang."""
    ray = cluster[2]
    assert f"Ray auth: token (from RAY_AUTH_TOKEN_PATH={ray.token_path})" in ray.log("serve.log")
    wrong = tmp_path / "wrong_token"
    wrong.write_text("0" * 64)
    home = tmp_path / "home"
    home.mkdir()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    base |= {"HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [sys.executable, "-m", "videokv.server", "--ray", ray.address, "--model", MODEL, "--token", TOKEN]
    procs = [
        subprocess.Popen(
            [*cmd, "--data-dir", str(tmp_path / f"d{i}"), "--port", str(free_port())],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i, env in enumerate([base, {**base, "RAY_AUTH_TOKEN_PATH": str(wrong)}])
    ]
    outs = [p.communicate(timeout=180)[0] for p in procs]
    for proc, out, mode in zip(procs, outs, ["disabled", "token"]):
        assert proc.returncode == 1, out
        assert f"refused this process (Ray auth: {mode}" in out and "RAY_AUTH_TOKEN_PATH" in out, out
        assert "Traceback" not in out, out
    assert not (home / ".ray").exists()  # joining never writes a token


BAD_REQUESTS = [  # (method, path, kwargs, token?)
    ("GET", "/v1/sessions", {}, False),
    ("GET", "/v1/sessions/{sid}", {"headers": {"Authorization": "Bearer wrong"}}, False),
    ("GET", "/v1/sessions/nosuchsession", {}, True),
    ("POST", "/v1/sessions/nosuchsession/ask", {"json": {"question": "q"}}, True),
    ("POST", "/v1/sessions", {"json": {"memory": "no-such-preset"}}, True),
    ("POST", "/v1/sessions", {"json": {"fps": "fast"}}, True),
    ("POST", "/v1/sessions/{sid}/ask", {"json": {"question": "   "}}, True),
    ("POST", "/v1/sessions/{sid}/ask", {"json": {"question": "x" * 5000}}, True),
    ("POST", "/v1/sessions/{sid}/ask", {"json": {"question": "q", "choices": ["a"]}}, True),
    (
        "POST",
        "/v1/sessions/{sid}/ask",
        {"content": b"{not json", "headers": {"content-type": "application/json"}},
        True,
    ),
    (
        "POST",
        "/v1/sessions/{sid}/ask",
        {"content": b"question=q", "headers": {"content-type": "text/plain"}},
        True,
    ),
    ("POST", "/v1/sessions/{sid}/frames", {"json": {"raw": "", "shape": [1, 1, 1, 3]}}, True),
    ("POST", "/v1/sessions/{sid}/frames", {"json": {"raw": "!!", "shape": [1, 2, 2, 3]}}, True),
    ("POST", "/v1/sessions/{sid}/text", {"json": {"events": [{"text": "t", "start": -1}]}}, True),
    ("POST", "/v1/sessions/{sid}/video", {"files": {"file": ("x.mp4", b"not a video", "video/mp4")}}, True),
    ("POST", "/v1/sessions/{sid}/source", {"json": {"url": "/etc/passwd"}}, True),
    ("DELETE", "/v1/sessions/{sid}/source", {}, True),
    ("GET", "/v1/sessions/{sid}/thumbnail", {"params": {"t": "-1"}}, True),
    ("POST", "/v1/snapshots/nosuch/restore", {}, True),
]


def _call(base: str, sid: str, method: str, path: str, kwargs: dict, token: bool) -> tuple[int, str]:
    headers = dict(kwargs.pop("headers", {}))
    if token:
        headers["Authorization"] = f"Bearer {TOKEN}"
    r = httpx.request(method, base + path.format(sid=sid), headers=headers, timeout=120, **kwargs)
    detail = (
        r.json().get("detail") if r.headers.get("content-type", "").startswith("application/json") else None
    )
    return r.status_code, str(detail).replace(sid, "<sid>")


def test_openai_chats_reach_their_sessions_replica(rc: httpx.Client):
    """The OpenAI-compatible routes through the cluster, driven by the official `openai` client: a chat with
    an image part creates a session on a replica (the registry learns where); the conversation naming that
    session reaches the same replica and appends to its memory; a streamed chat there gives the plain one's
    answer (questions change no memory)."""
    import openai

    oai = openai.OpenAI(
        base_url=f"{str(rc.base_url).rstrip('/')}/v1", api_key=TOKEN, max_retries=0, timeout=300
    )
    model = f"{oai.models.list().data[0].id.split(':')[0]}:rekv"
    img = "data:image/png;base64," + base64.b64encode(_png(np.full((56, 84, 3), 90, np.uint8))).decode()
    turn = {
        "role": "user",
        "content": [{"type": "image_url", "image_url": {"url": img}}, {"type": "text", "text": QUESTION}],
    }
    first = oai.chat.completions.create(
        model=model, messages=[turn], max_tokens=3, extra_body={"keep_session": True}
    )
    sid = first.model_extra["session"]
    st = rc.get(f"/v1/sessions/{sid}").json()
    holder, frames = st["replica"]["id"], st["frames"]
    assert frames >= 1 and sid in replicas(rc)[holder]["sessions"]
    more = {**turn, "content": [turn["content"][0], {"type": "text", "text": "And now?"}]}
    history = [turn, {"role": "assistant", "content": first.choices[0].message.content}, more]
    plain = oai.chat.completions.create(
        model=model, messages=history, max_tokens=4, extra_body={"session": sid}
    )
    assert plain.model_extra["session"] == sid
    st = rc.get(f"/v1/sessions/{sid}").json()
    assert st["replica"]["id"] == holder and st["frames"] > frames
    ask = [*history, {"role": "assistant", "content": plain.choices[0].message.content}]
    ask.append({"role": "user", "content": "And now?"})
    texts = [
        oai.chat.completions.create(model=model, messages=ask, max_tokens=4, extra_body={"session": sid})
        .choices[0]
        .message.content
    ]
    chunks = oai.chat.completions.create(
        model=model, messages=ask, max_tokens=4, stream=True, extra_body={"session": sid}
    )
    texts.append("".join(c.choices[0].delta.content or "" for c in chunks if c.choices))
    assert texts[0] == texts[1] and rc.get(f"/v1/sessions/{sid}").json()["replica"]["id"] == holder


def _png(img: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def test_bad_input_is_answered_as_by_one_process(rc: httpx.Client, serve_factory, tmp_path_factory):
    """Each bad request gets the same status and message from the cluster as from `videokv serve`."""
    single = serve_factory(extra=["--chunk-frames", "4", "--session-mb", str(SESSION_MB)])
    with single.client() as c1:
        one = create(c1, memory="rekv")["id"]
    many = create(rc, memory="rekv")["id"]
    for method, path, kwargs, token in BAD_REQUESTS:
        expected = _call(single.url, one, method, path, dict(kwargs), token)
        got = _call(str(rc.base_url), many, method, path, dict(kwargs), token)
        assert expected[0] >= 400 and got == expected, (method, path)


def _finished(c: httpx.Client, sid: str) -> dict | None:
    r = c.get(f"/v1/sessions/{sid}")
    if r.status_code != 200:
        return None
    s = r.json()
    assert not (s["source"] and s["source"]["state"] == "error"), s
    return s if s["source"] and s["source"]["state"] == "done" else None


def test_kill_9_of_a_replica_mid_ingest_loses_nothing(rc: httpx.Client, cluster, tmp_path: Path):
    """Two sessions pull the same 5 fps clip at 2 fps at stream pace, on different replicas; the victim's
    replica is killed with SIGKILL mid-source. Its session comes back on the live replica with every block
    committed before the kill, its source continues, and it ends exactly as the untouched one: the same frame
    times, blocks, clock and answers. A streamed answer cut by the kill ends with a retryable error event
    (whole events only); a question sent right after the kill waits for the move (or gets a retryable 503),
    never a wrong answer; Ray Serve starts a replacement replica."""
    from videokv.journal import Journal

    data = cluster[1]
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
    streamed, first = [], threading.Event()

    def listen() -> None:  # a long streamed answer, under way when the replica dies
        ask = {"question": QUESTION, "max_new_tokens": 1000, "stream": True}
        with rc.stream("POST", f"/v1/sessions/{sid}/ask", json=ask) as resp:
            assert resp.status_code == 200
            for text in resp.iter_text():
                streamed.append(text)
                first.set()

    listener = threading.Thread(target=listen)
    listener.start()
    assert first.wait(60)
    os.kill(pid, signal.SIGKILL)
    listener.join(60)
    assert not listener.is_alive()
    events = parse_sse("".join(streamed))  # every event whole (parse_sse fails on a cut one)
    assert events[0][0] == "token" and all(kind == "token" for kind, _ in events[:-1])
    kind, last = events[-1]
    assert kind == "error" and last["retryable"] and "ask again" in last["detail"], events[-1]
    committed = int(Journal(data / "sessions" / sid / "journal").read_header()["blocks"])
    assert committed >= 10
    t0 = time.monotonic()
    r = rc.post(f"/v1/sessions/{sid}/ask", json={"question": QUESTION, "max_new_tokens": 3})
    assert r.status_code in (200, 503), r.text
    if r.status_code == 503:
        assert int(r.headers["retry-after"]) >= 1
    else:
        assert r.json()["stats"]["blocks"] >= committed
    back = wait_for(lambda: (s := rc.get(f"/v1/sessions/{sid}")).status_code == 200 and s.json(), 60, 0.05)
    assert back["replica"]["pid"] != pid and back["replica"]["id"] == ref["replica"]["id"]
    assert back["blocks"] >= committed and back["source"]["state"] in ("running", "done")
    assert time.monotonic() - t0 < 30
    done = wait_for(lambda: _finished(rc, sid), 120)
    whole = wait_for(lambda: _finished(rc, ref["id"]), 120)
    assert (done["frames"], done["blocks"], done["clock"]) == (
        whole["frames"],
        whole["blocks"],
        whole["clock"],
    )
    assert done["frames"] == 32
    times = rc.get(f"/v1/sessions/{sid}/timeline").json()["thumbnails"]
    assert times == rc.get(f"/v1/sessions/{ref['id']}/timeline").json()["thumbnails"]
    assert answer_of(rc, sid) == answer_of(rc, ref["id"])
    failover = rc.get("/v1/cluster").json()["failovers"][-1]
    assert failover["pid"] == pid and sid in failover["sessions"] and failover["recovered_s"] < 30
    # Ray Serve replaces the dead replica: two live replicas again, neither the killed process
    fresh = wait_for(lambda: len(r := replicas(rc)) == 2 and r, 180, 0.5)
    assert pid not in {r["pid"] for r in fresh.values()}


def test_a_move_for_balance_takes_the_failover_path(rc: httpx.Client):
    s = create(rc, memory="rekv", fps=2.0)
    sid, holder = s["id"], s["replica"]["id"]
    rc.post(f"/v1/sessions/{sid}/frames", json=raw_frames(5, seed=3))
    before = answer_of(rc, sid)
    moved = rc.post(f"/v1/sessions/{sid}/move").json()
    assert moved["moved"] and moved["from"] == holder and moved["to"] != holder
    st = rc.get(f"/v1/sessions/{sid}").json()
    assert st["replica"]["id"] == moved["to"] and st["blocks"] == 5
    assert answer_of(rc, sid) == before
    added = rc.post(f"/v1/sessions/{sid}/frames", json=raw_frames(2, seed=4)).json()
    assert added["status"]["blocks"] == 7 and added["status"]["replica"]["id"] == moved["to"]


def test_admission_refuses_with_429_when_no_replica_has_room(rc: httpx.Client):
    """Each replica has room for REPLICA_MB / SESSION_MB sessions (their budgets reserved): the cluster
    takes 2 * PER_REPLICA, spread evenly, then 429 until one is deleted."""
    made = [create(rc, memory="rekv") for _ in range(2 * PER_REPLICA)]
    counts = [r["sessions"] for r in replicas(rc).values()]
    assert sorted(len(x) for x in counts) == [PER_REPLICA, PER_REPLICA]
    assert not any(r["room"] for r in replicas(rc).values())
    r = rc.post("/v1/sessions", json={"memory": "rekv"})
    assert r.status_code == 429 and "no replica" in r.json()["detail"]
    assert httpx.post(f"{rc.base_url}/v1/sessions", json={}, timeout=30).status_code == 401  # auth first
    assert rc.delete(f"/v1/sessions/{made[0]['id']}").status_code == 204
    again = create(rc, memory="rekv")
    assert again["replica"]["id"] == made[0]["replica"]["id"]


def test_autoscaling_on_sessions_held_adds_a_replica(cluster, tmp_path: Path):
    """Last in this module (it replaces the cluster's deployment): `--replicas 1 --max-replicas 2
    --target-sessions 1` starts one replica; once it holds a session, the Ray Serve autoscaler (our policy on
    the replicas' session counts) starts a second one, which the next new session goes to."""
    ray = cluster[2]
    ray.stop_serve()
    (tmp_path / "data").mkdir()
    extra = ["--max-replicas", "2", "--target-sessions", "1", "--chunk-frames", "4"]
    url = ray.serve(tmp_path / "data", extra, replicas=1)
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=300) as c:
        assert len(replicas(c)) == 1
        first = create(c, memory="rekv")
        t0 = time.monotonic()
        grown = wait_for(lambda: len(r := replicas(c)) == 2 and r, 240, 0.5)
        scale_up_s = time.monotonic() - t0
        new = next(rid for rid in grown if rid != first["replica"]["id"])
        second = create(c, memory="rekv")
        assert second["replica"]["id"] == new, "the new session goes to the least-loaded (new) replica"
        assert c.post(f"/v1/sessions/{second['id']}/frames", json=raw_frames(2)).status_code == 200
        assert c.get(f"/v1/sessions/{second['id']}").json()["blocks"] == 2
        print(f"autoscaled to 2 replicas {scale_up_s:.1f} s after the first session")
