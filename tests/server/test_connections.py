"""Issue 34, items 6 and 7: abandoned work is cancelled, stalled connections are closed.

Every test talks to a real `videokv serve` subprocess (tiny model) over TCP. A client that hangs up in the
middle of an answer (plain or streamed) or of a chat's ingest stops that work at its next step: what the
model ran is read from the server's job trace (VIDEOKV_TRACE_JOBS; its last column is the steps a question
has run). Idle, half-sent and stalled connections are closed after `--read-timeout-s` / `--keep-alive-s`.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.server.conftest import ServerHandle
from tests.server.test_api import create, wait_for

QUESTION = "what colour is the umbrella?"
LONG = {"question": QUESTION * 20, "max_new_tokens": 1024}  # ~1030 steps when nobody stops it


def trace_rows(trace: Path) -> list[list[str]]:
    return [line.split("\t") for line in trace.read_text().splitlines()] if trace.exists() else []


def questions(trace: Path, sid: str) -> dict[str, int]:
    """The steps each of `sid`'s questions has run so far, by job."""
    steps: dict[str, int] = {}
    for r in trace_rows(trace):
        if r[1] == sid and r[2].endswith("ask.<locals>.run"):
            steps[r[4] + r[5]] = max(steps.get(r[4] + r[5], 0), int(r[6]))
    return steps


def raw_request(server: ServerHandle, method: str, path: str, body: bytes, ctype: str) -> socket.socket:
    """A request sent on a raw socket (so the test can hang up whenever it likes)."""
    s = socket.create_connection(("127.0.0.1", server.port))
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {server.token}\r\n"
        f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    s.sendall(head.encode() + body)
    return s


@pytest.fixture
def traced(serve_factory, tmp_path: Path, monkeypatch) -> tuple[ServerHandle, Path]:
    trace = tmp_path / "jobs.tsv"
    monkeypatch.setenv("VIDEOKV_TRACE_JOBS", str(trace))
    return serve_factory(media=False, extra=["--max-session-rps", "1000"]), trace


def _a_session_with_text(c: httpx.Client) -> str:
    sid = create(c, memory="rekv")["id"]
    assert c.post(f"/v1/sessions/{sid}/text", json={"events": [{"text": "a red kite"}]}).status_code == 200
    return sid


def _stopped_soon(trace: Path, sid: str, job: str, at_hangup: int) -> int:
    """Wait until `job` has stopped (a later question of the session ran); its steps, checked."""
    steps = questions(trace, sid)[job]
    assert steps < 1000, f"the answer ran to its end ({steps} steps): it was not stopped"
    # stopped at its next step after the hang-up was seen: a few slices at most, never hundreds of steps
    assert steps - at_hangup < 300, (at_hangup, steps)
    return steps


def test_an_answer_whose_client_hung_up_stops_at_its_next_step(traced):
    """A plain answer and a streamed one, each of 1024 tokens: the client hangs up after a few dozen steps;
    the answer stops there, and the next short question on the session does not wait for the rest (before:
    it waited 10.8 s for the abandoned answer to finish, instead of 0.02 s)."""
    server, trace = traced
    with server.client() as c:
        sid = _a_session_with_text(c)
        # plain: hang up while it decodes
        s = raw_request(
            server, "POST", f"/v1/sessions/{sid}/ask", json.dumps(LONG).encode(), "application/json"
        )
        job = wait_for(
            lambda: next((j for j, n in questions(trace, sid).items() if n >= 20), None), every=0.02
        )
        at_hangup = questions(trace, sid)[job]
        s.close()
        short = c.post(f"/v1/sessions/{sid}/ask", json={"question": QUESTION, "max_new_tokens": 4})
        assert short.status_code == 200, short.text
        _stopped_soon(trace, sid, job, at_hangup)

        # streamed: read a few tokens, then hang up
        before = set(questions(trace, sid))
        with c.stream("POST", f"/v1/sessions/{sid}/ask", json={**LONG, "stream": True}) as r:
            assert r.status_code == 200
            tokens = 0
            for line in r.iter_lines():
                tokens += line.startswith("event: token")
                if tokens >= 10:
                    break
            job = next(j for j in questions(trace, sid) if j not in before)
            at_hangup = questions(trace, sid)[job]
        short = c.post(f"/v1/sessions/{sid}/ask", json={"question": QUESTION, "max_new_tokens": 4})
        assert short.status_code == 200, short.text
        _stopped_soon(trace, sid, job, at_hangup)
        # and a question nobody hangs up on still runs to its end
        whole = c.post(f"/v1/sessions/{sid}/ask", json={"question": QUESTION, "max_new_tokens": 64})
        assert whole.json()["stats"]["answer_tokens"] == 64
    assert "Traceback" not in server.log(), server.log()[-3000:]


def _png_uri(value: int) -> str:
    buf = io.BytesIO()
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 256, (56, 84, 3), dtype=np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_a_chat_whose_client_hung_up_stops_ingesting(traced):
    """An OpenAI chat with 400 images (400 ingest steps, ~20 s here): the client hangs up after a few; the
    ingest stops at the next one, is rolled back, and the session the chat made is deleted (before: it
    kept ingesting into a session nobody knew the id of)."""
    server, trace = traced
    parts = [{"type": "image_url", "image_url": {"url": _png_uri(i % 16)}} for i in range(200)]
    messages = [
        {"role": "user", "content": parts},
        {"role": "user", "content": [*parts, {"type": "text", "text": QUESTION}]},
    ]
    body = {"model": "rekv", "messages": messages, "max_tokens": 4}

    def steps() -> list[list[str]]:
        return [r for r in trace_rows(trace) if r[2].endswith("_step")]

    s = raw_request(server, "POST", "/v1/chat/completions", json.dumps(body).encode(), "application/json")
    wait_for(lambda: len(steps()) >= 3, every=0.05)
    s.close()
    with server.client() as c:
        wait_for(lambda: c.get("/v1/sessions").json() == [], timeout=120)  # the chat's session is gone
    ran = len(steps())
    assert ran < 200, f"{ran} of 400 ingest steps ran: the ingest went on after the client hung up"


def _closed_within(s: socket.socket, seconds: float) -> bytes | None:
    """What the server sent before closing `s`, or None if it is still open after `seconds`."""
    s.settimeout(seconds)
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return data
            data += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        return data


def _is_closed(s: socket.socket) -> bool:
    try:
        return s.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_idle_half_sent_and_stalled_connections_are_closed(serve_factory):
    """With --read-timeout-s 1 and --keep-alive-s 1: connections that send nothing, stop in the middle of
    their headers or body, or trickle their headers a byte at a time, and idle keep-alive connections, are
    all closed within a few seconds (before: 200 of them stayed open). A request that takes its time
    being answered is not cut, and the server still answers everyone else."""
    server = serve_factory(media=False, extra=["--read-timeout-s", "1", "--keep-alive-s", "1"])
    sent = {
        "idle": b"",
        "half-sent headers": b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n",
        "half-sent body": b"POST /v1/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
        + server.token.encode()
        + b'\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"memory"',
        "idle keep-alive": b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
        + server.token.encode()
        + b"\r\n\r\n",
    }
    socks = []
    for kind, data in sent.items():
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", server.port))
            s.sendall(data)
            socks.append((kind, s))
    trickle = socket.create_connection(("127.0.0.1", server.port))
    t0 = time.monotonic()
    header = b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200
    for byte in header:  # a byte every 50 ms: still sending when the header deadline (1 s) passes
        if _is_closed(trickle):
            break
        trickle.sendall(bytes([byte]))
        time.sleep(0.05)
    assert _is_closed(trickle), "a connection trickling its headers was not cut at the deadline"
    assert time.monotonic() - t0 < 8
    for kind, s in socks:
        got = _closed_within(s, 10)
        assert got is not None, f"a {kind} connection was still open"
        if kind == "idle keep-alive":
            assert got.startswith(b"HTTP/1.1 200"), got[:100]  # answered first, then closed when idle
        else:
            assert got == b"", (kind, got[:200])
        s.close()
    with server.client() as c:  # a slow answer is not a stalled client: 1024 tokens take seconds here
        sid = create(c, memory="rekv")["id"]
        r = c.post(f"/v1/sessions/{sid}/ask", json=LONG)
        assert r.status_code == 200 and r.json()["stats"]["answer_tokens"] == 1024
        assert c.get("/v1/health").status_code == 200
    assert "Traceback" not in server.log(), server.log()[-3000:]
