"""Issue 34, items 8 and 9 (limits.py): characters are counted before the tokenizer runs, errors never show
Python object reprs, and a bearer token that is not ASCII is a 401 (before: a 500 from the rate limiter's
`secrets.compare_digest` of two str, which refuses non-ASCII)."""

from __future__ import annotations

import asyncio
import base64

import httpx
import pytest

from tests.server.conftest import ServerHandle
from tests.server.test_api import create
from videokv.server import limits as L


def _boom(text: str) -> list[int]:
    raise AssertionError("the tokenizer was called")


def test_characters_are_counted_before_the_tokenizer():
    limits = L.Limits(max_request_tokens=100)
    with pytest.raises(L.Unprocessable) as e:  # 1,601 characters cannot be 100 tokens of at most 16
        asyncio.run(L.check_tokens(limits, _boom, ["x" * 1601], "question", chars_per_token=16))
    assert "--max-request-tokens" in str(e.value) and "1601 characters" in str(e.value)
    counted = asyncio.run(L.check_tokens(limits, lambda t: [1] * (len(t) // 16), ["x" * 1600], "q", 16))
    assert counted == 100  # at the bound: the tokenizer decides


def test_chars_per_token_is_the_longest_vocabulary_entry():
    class Tokenizer:
        def get_vocab(self) -> dict:
            return {"a": 0, "Ġworld": 1, "<|im_start|>": 2}

    class QA:
        adapter = type("Adapter", (), {"tokenizer": Tokenizer()})()

    assert L.chars_per_token(QA()) == len("<|im_start|>")
    assert L.chars_per_token(object()) is None  # no vocabulary: no bound from it


def test_errors_never_show_object_reprs():
    text = (
        "image 0 is not a JPEG/PNG image: cannot identify image file <_io.BytesIO object at 0x7f3a2c1d0e50>"
    )
    assert "object at" not in L.scrub(text) and L.scrub(text).endswith("cannot identify image file")
    with pytest.raises(L.BadRequest) as e:
        L.image_sizes(L.Limits(), [b"GIF89 but not really an image"])
    assert "object at" not in str(e.value) and "image 0 is not a JPEG/PNG image" in str(e.value)


def test_a_non_image_is_refused_without_a_repr_on_every_route(client: httpx.Client):
    sid = create(client, memory="rekv")["id"]
    junk = base64.b64encode(b"this is not an image at all").decode()
    r = client.post(f"/v1/sessions/{sid}/frames", json={"images": [junk]})
    assert r.status_code == 400 and "object at" not in r.text and "not a JPEG/PNG image" in r.text, r.text
    part = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{junk}"}}
    chat = {
        "model": "rekv",
        "messages": [{"role": "user", "content": [part, {"type": "text", "text": "hi"}]}],
    }
    r = client.post("/v1/chat/completions", json=chat)
    assert r.status_code == 400 and "object at" not in r.text and "not a JPEG/PNG image" in r.text, r.text
    client.delete(f"/v1/sessions/{sid}")


@pytest.mark.parametrize("token", ["tökén".encode(), b"\xff\xfe", "令牌".encode()])
def test_a_non_ascii_bearer_token_is_a_401(server: ServerHandle, client: httpx.Client, token: bytes):
    sid = create(client, memory="rekv")["id"]
    auth = {"Authorization": b"Bearer " + token}
    with httpx.Client(base_url=server.url, timeout=60) as stranger:
        for method, path, body in [
            ("POST", f"/v1/sessions/{sid}/ask", {"question": "what?"}),  # a session route: rate-limited
            ("POST", f"/v1/sessions/{sid}/frames", {"images": []}),
            ("GET", "/v1/health", None),
            ("POST", "/v1/chat/completions", {"model": "rekv", "messages": []}),
        ]:
            r = stranger.request(method, path, json=body, headers=auth)
            assert r.status_code == 401, (path, r.status_code, r.text[:300])
            assert r.headers["content-type"] == "application/json"
    assert "Traceback" not in server.log()
    client.delete(f"/v1/sessions/{sid}")
