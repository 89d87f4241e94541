"""Issue 34, item 9: requests in flight when their session is deleted end with a clean JSON error.

A real `videokv serve` subprocess (tiny model): a question decoding, a question waiting behind it, a
streamed question and a push of frames are all under way when DELETE arrives. Each ends with the session's
404 ("was deleted") as JSON, or as the stream's `error` event (before: CancelledError, a 503 "shutting
down" or an SSE body cut without an error event), and the server logs no traceback.
"""

from __future__ import annotations

import base64
import io
import threading
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from tests.server.test_api import create, parse_sse, wait_for

QUESTION = "what colour is the umbrella?"
LONG = {"question": QUESTION * 20, "max_new_tokens": 1024}


def _png(value: int) -> str:
    buf = io.BytesIO()
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 256, (56, 84, 3), dtype=np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_requests_in_flight_during_a_delete_end_with_a_clean_error(
    serve_factory, tmp_path: Path, monkeypatch
):
    trace = tmp_path / "jobs.tsv"
    monkeypatch.setenv("VIDEOKV_TRACE_JOBS", str(trace))
    server = serve_factory(media=False, extra=["--max-session-rps", "1000"])
    results: dict[str, httpx.Response] = {}

    def rows(sid: str, label: str) -> list[list[str]]:
        lines = trace.read_text().splitlines() if trace.exists() else []
        return [r for r in (line.split("\t") for line in lines) if r[1] == sid and r[2].endswith(label)]

    def call(name: str, path: str, body: dict) -> None:
        with server.client() as h:
            results[name] = h.post(path, json=body)

    with server.client() as c:
        asked = create(c, memory="rekv")["id"]
        pushed = create(c, memory="rekv")["id"]
        assert c.post(f"/v1/sessions/{asked}/text", json={"events": [{"text": "a red kite"}]}).is_success
        threads = [threading.Thread(target=call, args=("decoding", f"/v1/sessions/{asked}/ask", LONG))]
        threads[0].start()
        wait_for(lambda: rows(asked, "ask.<locals>.run"), every=0.02)
        threads += [
            threading.Thread(target=call, args=("waiting", f"/v1/sessions/{asked}/ask", LONG)),
            threading.Thread(
                target=call, args=("streamed", f"/v1/sessions/{asked}/ask", {**LONG, "stream": True})
            ),
            threading.Thread(
                target=call,
                args=(
                    "pushing",
                    f"/v1/sessions/{pushed}/frames",
                    {"images": [_png(i % 8) for i in range(400)]},
                ),
            ),
        ]
        for t in threads[1:]:
            t.start()
        wait_for(lambda: rows(pushed, "_step"), every=0.02)  # the push is ingesting
        assert c.delete(f"/v1/sessions/{asked}").status_code == 204
        assert c.delete(f"/v1/sessions/{pushed}").status_code == 204
        for t in threads:
            t.join(120)
        assert c.get(f"/v1/sessions/{asked}").status_code == 404

    for name in ("decoding", "waiting", "pushing"):
        r = results[name]
        assert r.status_code == 404, (name, r.status_code, r.text[:300])
        assert r.headers["content-type"] == "application/json" and "was deleted" in r.json()["detail"], name
    streamed = results["streamed"]
    assert streamed.status_code == 200
    events = parse_sse(streamed.text)
    assert events and events[-1][0] == "error", streamed.text[-500:]  # ends with an error event, not cut
    assert events[-1][1]["status"] == 404 and "was deleted" in events[-1][1]["detail"], events[-1]
    log = server.log()
    assert "Traceback" not in log and "CancelledError" not in log, log[-3000:]
