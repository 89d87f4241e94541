"""Fuzz every API operation from the published OpenAPI schema (schemathesis 4) against a live server.

A real `videokv serve` subprocess (tiny model, bearer token) is fuzzed over TCP: schemathesis generates
requests for every operation in `/openapi.json`, valid ones and invalid ones (a bounded number of each
per operation). Schemathesis's pytest plugin (`schemathesis.pytest.from_fixture`) fails under pytest 9
(it sets `Item._nodeid`), so the test drives each operation's hypothesis strategy itself. A request whose
path names a session is sent twice: as generated (an unknown id: mostly 404s and validation errors) and
again aimed at a real session holding a little video, so that bodies reach ingest, ask, save and the
rest. No response may be a 5xx, and the server must still be alive and consistent afterwards.
"""

from __future__ import annotations

import base64
import json

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode

MAX_EXAMPLES = 10  # per operation and mode (valid, invalid): a bounded run of about a minute
REQUEST_TIMEOUT_S = 120.0


class RealSession:
    """A session with a few frames of video in it, re-created whenever the fuzzer deletes it."""

    def __init__(self, client: httpx.Client):
        self.client = client
        self.sid = ""
        self.created = 0
        self.snapshot = ""

    def ensure(self) -> str:
        """The id of a live session with frames in it (creating one if the last was deleted)."""
        if self.sid and self.client.get(f"/v1/sessions/{self.sid}").status_code == 200:
            return self.sid
        r = self.client.post("/v1/sessions", json={"memory": "rekv", "fps": 1.0, "name": "fuzz-target"})
        if r.status_code == 429:  # the fuzzer filled the session table: make room
            for s in self.client.get("/v1/sessions").raise_for_status().json():
                self.client.delete(f"/v1/sessions/{s['id']}")
            r = self.client.post("/v1/sessions", json={"memory": "rekv", "fps": 1.0, "name": "fuzz-target"})
        r.raise_for_status()
        self.sid = r.json()["id"]
        frames = np.random.default_rng(self.created).integers(0, 256, (2, 56, 84, 3), dtype=np.uint8)
        body = {"raw": base64.b64encode(frames.tobytes()).decode(), "shape": list(frames.shape)}
        self.client.post(f"/v1/sessions/{self.sid}/frames", json=body).raise_for_status()
        self.client.post(
            f"/v1/sessions/{self.sid}/text",
            json={"events": [{"text": "a red car", "start": 0.5, "end": 1.5}]},
        ).raise_for_status()
        self.created += 1
        return self.sid

    def ensure_snapshot(self) -> str:
        """The name of a saved snapshot (of the real session)."""
        if not self.snapshot or self.snapshot not in [
            s["snapshot"] for s in self.client.get("/v1/snapshots").raise_for_status().json()
        ]:
            r = self.client.post(f"/v1/sessions/{self.ensure()}/save")
            r.raise_for_status()
            self.snapshot = r.json()["snapshot"]
        return self.snapshot


@pytest.fixture(scope="module")
def real_session(server):
    with server.client() as client:
        yield RealSession(client)


def _describe(case, response) -> str:
    body = case.body if not isinstance(case.body, (bytes, bytearray)) else f"<{len(case.body)} bytes>"
    return (
        f"{case.method.upper()} {case.formatted_path} query={case.query!r} body={str(body)[:300]} -> "
        f"{response.status_code} {response.text[:300]}"
    )


def test_api_fuzz(server, real_session) -> None:
    """No generated request, valid or not, to an unknown or to a real session, gets a 5xx."""
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json", headers=server.headers, timeout=30)
    schema.config.update(base_url=server.url, headers=server.headers, request_timeout=REQUEST_TIMEOUT_S)
    operations = []
    for result in schema.get_all_operations():
        operations.append(result.ok())  # an invalid operation in the schema raises here
    labels = {op.label for op in operations}
    # the contract's operations are all in the published schema
    for label in ("POST /v1/sessions", "POST /v1/sessions/{sid}/ask", "POST /v1/sessions/{sid}/video"):
        assert label in labels, sorted(labels)

    failures: list[str] = []
    sent = {"requests": 0}

    def send(case) -> None:
        response = case.call(headers=server.headers, timeout=REQUEST_TIMEOUT_S)
        sent["requests"] += 1
        key = f"{case.method.upper()} {case.path} {response.status_code}"
        sent[key] = sent.get(key, 0) + 1
        try:
            case.validate_response(response, checks=[not_a_server_error], headers=server.headers)
        except Exception as e:  # a failed check: keep going, report them all at the end
            failures.append(f"{_describe(case, response)}\n    {type(e).__name__}: {str(e)[:300]}")

    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=op.as_strategy(generation_mode=mode))
            @settings(
                max_examples=MAX_EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def fuzz(case) -> None:
                assert server.proc.poll() is None, f"the server died:\n{server.log()[-4000:]}"
                send(case)
                params = case.path_parameters or {}
                if "sid" in params:
                    # the same request aimed at a real session, so that bodies get past the 404
                    case.path_parameters = {**params, "sid": real_session.ensure()}
                    send(case)
                elif "name" in params:
                    case.path_parameters = {**params, "name": real_session.ensure_snapshot()}
                    send(case)

            try:
                fuzz()
            except Unsatisfiable:  # e.g. no invalid input exists for an operation without inputs
                pass
    print(json.dumps(sent, indent=1, sort_keys=True))  # requests per operation and status (pytest -s)
    assert sent["requests"] > 2 * len(operations)
    codes = {int(k.rsplit(" ", 1)[1]) for k in sent if k != "requests"}
    # both accepted and refused requests: the real-session pass got past validation and 404s
    assert any(200 <= c < 300 for c in codes) and any(400 <= c < 500 for c in codes), codes
    assert any(k.startswith("POST /v1/sessions/{sid}/ask 200") for k in sent), sent
    assert not failures, f"{len(failures)} server errors:\n" + "\n".join(failures[:20])


def test_server_alive_after_fuzz(server, real_session) -> None:
    """After the fuzz run the same process still answers, and a real session still ingests and answers."""
    assert server.proc.poll() is None, f"the server died:\n{server.log()[-4000:]}"
    with server.client() as client:
        assert client.get("/v1/health").json()["status"] == "ok"
        sid = real_session.ensure()
        before = client.get(f"/v1/sessions/{sid}").raise_for_status().json()
        r = client.post(f"/v1/sessions/{sid}/text", json={"events": [{"text": "the car turns left"}]})
        assert r.status_code == 200, r.text
        answer = client.post(f"/v1/sessions/{sid}/ask", json={"question": "Which way?", "max_new_tokens": 4})
        assert answer.status_code == 200, answer.text
        assert answer.json()["question"] == "Which way?"
        after = client.get(f"/v1/sessions/{sid}").raise_for_status().json()
        assert after["blocks"] >= before["blocks"]


def _hostile_cases(sid: str) -> list[tuple[str, str, dict]]:
    """(method, path, httpx request kwargs): long strings, big numbers, big images, chunked bodies, hostile
    headers; each must be answered with a 4xx, never a 5xx, and leave the session as it was."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (6000, 6000)).save(buf, format="PNG")
    big_png = base64.b64encode(buf.getvalue()).decode()
    s = f"/v1/sessions/{sid}"
    long = "x" * 200_000

    def chunks(n: int):
        yield b'{"question": "'
        for _ in range(n):
            yield b"a" * 65536
        yield b'"}'

    return [
        ("POST", f"{s}/ask", {"json": {"question": long}}),
        ("POST", f"{s}/ask", {"json": {"question": "q", "choices": [long, long]}}),
        ("POST", f"{s}/ask", {"json": {"question": "q", "max_new_tokens": 10**30}}),
        ("POST", f"{s}/text", {"json": {"events": [{"text": long}] * 3}}),
        ("POST", f"{s}/text", {"json": {"events": [{"text": "t", "start": 1e308}]}}),
        ("POST", f"{s}/text", {"json": {"events": [{"text": "t", "start": -1e308}]}}),
        ("POST", f"{s}/frames", {"json": {"raw": "", "shape": [10**12, 10**12, 10**12, 3]}}),
        ("POST", f"{s}/frames", {"json": {"raw": "", "shape": [1, 1, 1, 3], "timestamps": [1e250]}}),
        ("POST", f"{s}/frames", {"json": {"images": [big_png]}}),
        ("POST", "/v1/sessions", {"json": {"fps": 1e308, "name": long}}),
        ("GET", f"{s}/thumbnail", {"params": {"t": "1e400"}}),
        ("POST", f"{s}/ask", {"content": chunks(1200), "headers": {"Content-Type": "application/json"}}),
        ("POST", f"{s}/ask", {"content": b"[" * 100_000, "headers": {"Content-Type": "application/json"}}),
        ("POST", "/v1/sessions", {"content": b"memory=rekv", "headers": {"Content-Type": "text/plain"}}),
        ("POST", "/v1/sessions", {"json": {}, "headers": {"Origin": "http://evil.example"}}),
        ("GET", "/v1/health", {"headers": {"Host": "attacker.example"}}),
        ("GET", "/v1/health", {"headers": {"Host": "x" * 8000}}),
        (
            "POST",
            f"{s}/video",
            {"content": b"--b\r\n" * 1000, "headers": {"Content-Type": "multipart/form-data"}},
        ),
    ]


def test_hostile_requests_are_refused_without_a_5xx(server, real_session) -> None:
    """Hand-written hostile requests (schemathesis keeps sizes small): all 4xx (or a closed connection for
    a body refused while it streams), the real session's memory unchanged, the server alive."""
    with server.client() as client:
        sid = real_session.ensure()
        before = client.get(f"/v1/sessions/{sid}").raise_for_status().json()
        codes = []
        for method, path, kwargs in _hostile_cases(sid):
            headers = {**server.headers, **kwargs.pop("headers", {})}
            try:
                r = client.request(method, path, headers=headers, **kwargs)
            except httpx.HTTPError:  # the server answered (413) and closed while the body still streamed
                codes.append((path, "closed"))
                continue
            codes.append((path, r.status_code))
            assert 400 <= r.status_code < 500, (method, path, r.status_code, r.text[:300])
        after = client.get(f"/v1/sessions/{sid}").raise_for_status().json()
        for key in ("clock", "frames", "blocks", "memory_tokens", "memory_bytes", "state"):
            assert after[key] == before[key], (key, codes)
        assert server.proc.poll() is None and client.get("/v1/health").status_code == 200
