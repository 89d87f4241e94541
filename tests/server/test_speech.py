"""The service's transcribe option: an upload or a source with `transcribe` puts the audio's transcript in the
session's memory (one block per event, at its stream times); a video without audio is refused (400) and the
session is left as it was. A real `videokv serve` (tiny model) and the real Whisper weights."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.server.conftest import ServerHandle, make_clip
from tests.video.speech_clip import make_speech_clip
from videokv.video.transcribe import transcribe


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    clip, _ = make_speech_clip(tmp_path_factory.mktemp("speech"))
    return clip, transcribe(clip, language="en")


def _create(client: httpx.Client) -> str:
    r = client.post("/v1/sessions", json={"memory": "full", "fps": 1.0})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _upload(client: httpx.Client, sid: str, video: Path, **fields: str) -> httpx.Response:
    files = {"file": (video.name, video.read_bytes(), "video/mp4")}
    return client.post(f"/v1/sessions/{sid}/video", files=files, data=fields)


def _text_spans(client: httpx.Client, sid: str) -> list[tuple[float, float]]:
    r = client.post(
        f"/v1/sessions/{sid}/ask", json={"question": "What is the locker code?", "max_new_tokens": 2}
    )
    assert r.status_code == 200, r.text
    return [(e["t0"], e["t1"]) for e in r.json()["evidence"] if "text" in e["kind"].split("+")]


def test_upload_with_transcribe(server: ServerHandle, client: httpx.Client, speech, tmp_path: Path):
    clip, said = speech
    sid = _create(client)
    r = _upload(client, sid, clip, transcribe="en")
    assert r.status_code == 200, r.text
    assert r.json()["added"] == 10 + len(said)  # 10 frames at 1 fps, one block per transcript event
    spans = _text_spans(client, sid)
    assert spans and spans[0][0] <= said[0].start + 1e-6 and spans[-1][1] >= said[-1].end - 1e-6

    plain = _create(client)
    assert _upload(client, plain, clip).json()["added"] == 10
    assert _text_spans(client, plain) == []

    silent = make_clip(tmp_path / "silent.mp4", seconds=3, fps=4)  # no audio track
    before = client.get(f"/v1/sessions/{plain}").json()
    r = _upload(client, plain, silent, transcribe="true")
    assert r.status_code == 400 and "no audio track to transcribe" in r.json()["detail"]
    r = _upload(client, plain, clip, transcribe="video.mp4")
    assert r.status_code == 400 and "language code" in r.json()["detail"]
    after = client.get(f"/v1/sessions/{plain}").json()
    assert (after["blocks"], after["clock"]) == (before["blocks"], before["clock"])


def test_source_with_transcribe(client: httpx.Client, speech, tmp_path: Path):
    clip, said = speech
    sid = _create(client)
    r = client.post(
        f"/v1/sessions/{sid}/source",
        json={"url": str(clip), "realtime": False, "fps": 1.0, "transcribe": "en"},
    )
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + 240
    while (s := client.get(f"/v1/sessions/{sid}").json())["source"]["state"] == "running":
        assert time.monotonic() < deadline, "the source did not finish"
        time.sleep(0.2)
    assert s["source"]["state"] == "done", s
    assert s["blocks"] == 10 + len(said) and s["frames"] == 10

    silent = make_clip(tmp_path / "silent.mp4", seconds=3, fps=4)
    other = _create(client)
    r = client.post(f"/v1/sessions/{other}/source", json={"url": str(silent), "transcribe": True})
    assert r.status_code == 400 and "no audio track to transcribe" in r.json()["detail"]
