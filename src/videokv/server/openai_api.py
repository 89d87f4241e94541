"""OpenAI-compatible routes: `GET /v1/models` and `POST /v1/chat/completions` (docs/SERVER.md, "OpenAI").

Models: one per memory preset of the served model, `<model>:<preset>` (the bare model name means the
server's default preset; a bare preset name is accepted too). A chat maps onto a videokv session:

- `extra_body={"session": ID}` asks that live session; `image_url` / `video_url` parts in the last user
  message are appended to its stream first (earlier messages' media are taken as already in it).
- without `session`, a request whose messages carry images or videos creates a session (memory: the
  model's preset; system prompt: the request's system messages), ingests every user message's media in
  order and answers; its id comes back as `session` in the response (and the `X-Videokv-Session` header),
  so the conversation can go on with `extra_body={"session": ...}`.
- a request with neither is answered by a fresh session that is dropped afterwards (a plain text chat).

The question is the text of the last user message; earlier user and assistant text is not re-read (the
memory is the stream). Decoding: greedy unless `temperature` > 0 (then sampled, with `top_p`, `seed` and the
extensions `top_k` and `repetition_penalty`), `stop`, `max_tokens` / `max_completion_tokens` (default 256,
at most 1024); `logprobs` / `top_logprobs` are the model's own log-probabilities. Errors have OpenAI's shape
`{"error": {"message", "type", "param", "code"}}` with the status the rest of the API gives the same fault.
The server's token, Host/Origin guard and limits apply here as everywhere under /v1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import ClientDisconnect

from videokv.api import GenerationOptions, VideoQA, check_question
from videokv.errors import InputError, VideoError, VideoKVError
from videokv.presets import PRESETS, resolve_memory
from videokv.server import limits as L
from videokv.server.connections import Watch
from videokv.server.faults import fault_of
from videokv.server.live import chunked, merge_items
from videokv.server.openai_media import MediaError, MediaSet, clear_temp, read_media
from videokv.server.scheduler import SchedulerClosed
from videokv.server.schemas import MAX_ITEMS
from videokv.server.sessions import (
    PREFILL_CHUNK_TOKENS,
    BadRequest,
    Managed,
    NotAVideo,
    ServiceError,
    SessionManager,
    answer_steps,
)
from videokv.video.decode import iter_frames

log = logging.getLogger("videokv.server")

DEFAULT_MAX_TOKENS = 256
MAX_TOKENS = 1024
MAX_MESSAGES = 256
MAX_PARTS = MAX_ITEMS  # image and video parts a request may carry: the frames route's cap on images


# ---- request and response models --------------------------------------------------------------------------
class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Part):
    type: Literal["text"]
    text: str = Field(max_length=20_000)


class ImageURL(_Part):
    url: str = Field(description="a data URI (data:image/png;base64,...), an http(s) URL or a server path")
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Part):
    type: Literal["image_url"]
    image_url: ImageURL


class VideoURL(_Part):
    url: str = Field(description="a data URI (data:video/mp4;base64,...), an http(s) URL or a server path")


class VideoPart(_Part):
    type: Literal["video_url"]
    video_url: VideoURL


Part = Annotated[TextPart | ImagePart | VideoPart, Field(discriminator="type")]


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")  # what clients send back of an answer (refusal, ...)
    role: Literal["system", "developer", "user", "assistant"]
    content: str | Annotated[list[Part], Field(max_length=256)] | None = None
    name: str | None = Field(None, max_length=200)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class ChatRequest(BaseModel):
    """OpenAI's chat completion request, as far as videokv implements it, plus its extensions (send them
    with the `openai` client's `extra_body`): session, fps, top_k, repetition_penalty."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(max_length=300)
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    temperature: float | None = Field(
        None, ge=0, le=2, description="0 or absent: greedy; > 0 (at least 1e-5): sampled"
    )
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=0, lt=2**64)
    stop: str | list[str] | None = Field(None, max_length=8)
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    n: int | None = Field(None, ge=1, le=1, description="only 1")
    frequency_penalty: float | None = Field(None, ge=0, le=0, description="only 0 (see repetition_penalty)")
    presence_penalty: float | None = Field(None, ge=0, le=0, description="only 0 (see repetition_penalty)")
    user: str | None = Field(None, max_length=256, description="accepted, not used")
    metadata: dict[str, str] | None = Field(None, description="accepted, not used")
    store: bool | None = Field(None, description="accepted, not used")
    # extensions
    session: str | None = Field(None, max_length=64, description="a live videokv session to ask")
    keep_session: bool = Field(
        False,
        description="keep the session this chat creates (its id, name and idle expiry come back in the "
        "response) instead of releasing it when the response ends",
    )
    fps: float | None = Field(None, gt=0, le=120, description="frames sampled per second of a new video")
    top_k: int | None = Field(None, ge=0, le=100_000, description="with temperature > 0 (0: off)")
    repetition_penalty: float | None = Field(
        None, gt=0, le=100, description="transformers' (1: off), from 0.01 to 100"
    )


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    error: ErrorBody


ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}
ERROR_CODES = {401: "invalid_api_key", 413: "request_too_large", 415: "unsupported_media_type"}


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error object for a response of `status`."""
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {
        "error": {"message": message, "type": kind, "param": param, "code": code or ERROR_CODES.get(status)}
    }


class ParamError(BadRequest):
    """Bad input naming the request field (`param`) and an OpenAI error code."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None, status: int = 400):
        super().__init__(message)
        self.param = param
        self.code = code
        self.status = status


def _loc(loc: tuple) -> str:
    out = ""
    for p in loc:
        if p == "body":
            continue
        if isinstance(p, int):
            out += f"[{p}]"
        elif not isinstance(p, str) or p in ("str", "list[tagged-union[TextPart,ImagePart,VideoPart]]"):
            continue
        else:
            out += ("." if out else "") + p
    return out or "body"


def to_openai_error(exc: BaseException, clean: Callable[[str], str], unauthorized: type) -> JSONResponse:
    """Any error of an OpenAI route as OpenAI's error shape and the status the rest of the API uses."""
    headers = None
    param = code = None
    if isinstance(exc, RequestValidationError):
        errors = list(exc.errors())
        # `content` is a string or a list of parts: when it is a list, the string branch's error is noise
        narrowed = [e for e in errors if "str" not in e.get("loc", ())]
        errors = narrowed or errors
        first = errors[0] if errors else {}
        param = _loc(tuple(first.get("loc", ())))
        parts = [f"{_loc(tuple(e.get('loc', ())))}: {e.get('msg', 'invalid')}" for e in errors[:5]]
        status, message = 400, "invalid request: " + "; ".join(parts)
        code = "invalid_value"
    elif isinstance(exc, unauthorized):
        status, message, headers = 401, str(exc), {"WWW-Authenticate": "Bearer"}
    elif isinstance(exc, ServiceError):
        status, message = exc.status, clean(str(exc))
        param, code = getattr(exc, "param", None), getattr(exc, "code", None)
        retry = getattr(exc, "retry_after", None)
        headers = {"Retry-After": str(retry)} if retry is not None else None
    elif (fault := fault_of(exc)) is not None:  # a full disk (507), no file descriptors or storage (503)
        status, message, headers = fault.status, clean(fault.message), fault.headers
    elif isinstance(exc, VideoKVError):
        status, message = (400 if isinstance(exc, InputError) else 500), clean(str(exc))
    elif isinstance(exc, SchedulerClosed):
        status, message = 503, "the server is shutting down; retry later"
    elif isinstance(exc, HTTPException):
        status, message = exc.status_code, str(exc.detail)
    elif isinstance(exc, ClientDisconnect):  # nobody reads this answer
        status, message = 499, "the client closed the connection"
    else:
        log.exception("videokv: the OpenAI route failed", exc_info=exc)
        status, message = 500, f"internal error ({type(exc).__name__}); the server's log has the details"
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


# ---- the routes -------------------------------------------------------------------------------------------
def openai_router(
    qa: VideoQA,
    manager: SessionManager,
    limits: L.Limits,
    *,
    model_label: str,
    default_memory: str,
    max_upload_bytes: int,
    clean: Callable[[str], str],
    route_class: type,
    dependencies: list,
    unauthorized: type,
    chat_idle_s: float = 600.0,
) -> APIRouter:
    """The OpenAI routes on the service's manager. `route_class` (the app's body-capped route) and
    `dependencies` (its token check) apply as to every /v1 route; every error, theirs included, is answered
    in OpenAI's shape."""

    class OpenAIRoute(route_class):
        def get_route_handler(self):
            handler = super().get_route_handler()

            async def wrapped(request: Request) -> Response:
                try:
                    return await handler(request)
                except Exception as exc:  # noqa: BLE001 - every error is answered in OpenAI's shape
                    return to_openai_error(exc, clean, unauthorized)

            return wrapped

    clear_temp(manager.data_dir)  # media of requests a crash cut
    token_chars = L.chars_per_token(qa)  # characters are counted before the tokenizer runs
    created = int(time.time())
    name = Path(model_label).name if Path(model_label).exists() else model_label
    responses = {s: {"model": OpenAIError} for s in (400, 401, 403, 404, 409, 413, 415, 422, 429)}
    router = APIRouter(prefix="/v1", dependencies=dependencies, responses=responses, route_class=OpenAIRoute)

    def model_id(preset: str) -> str:
        return f"{name}:{preset}"

    def resolve_model(model: str) -> str:
        """The memory preset a request's `model` names."""
        label, sep, preset = model.rpartition(":")
        if sep and label == name and preset in PRESETS:
            return preset
        if model == name:
            return default_memory
        if model in PRESETS:
            return model
        raise ParamError(
            f"the model {model!r} does not exist; GET /v1/models lists them: {model_id(default_memory)}, "
            f"... (one per memory preset)",
            "model",
            "model_not_found",
            status=404,
        )

    @router.get("/models", response_model=ModelList, summary="the served model, once per memory preset")
    async def models() -> dict:
        return {
            "object": "list",
            "data": [
                {"id": model_id(p), "object": "model", "created": created, "owned_by": "videokv"}
                for p in PRESETS
            ],
        }

    @router.get("/models/{model:path}", response_model=ModelCard, summary="one model")
    async def get_model(model: str) -> dict:
        preset = resolve_model(model)
        return {"id": model_id(preset), "object": "model", "created": created, "owned_by": "videokv"}

    @router.post(
        "/chat/completions",
        response_model=None,
        summary="OpenAI chat completions over a videokv session (streamed with stream=true)",
        responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}},
    )
    async def chat_completions(body: ChatRequest, request: Request) -> Response:
        preset = resolve_model(body.model)
        chat = await check_chat(body, limits, qa.tokenize, token_chars)  # before any media is read
        m = session_of(body, preset)
        preset = m.memory if m is not None else preset
        # a client that hangs up stops the chat: its media reading, its ingest, its answer
        watch = Watch(request)
        try:
            m, new = await open_chat(body, m, preset, chat, watch)
        except BaseException:
            watch.close()
            raise
        keep = body.session is None and body.keep_session
        release = m if new and not keep else None  # a chat that named no session holds none afterwards

        rid = f"chatcmpl-{secrets.token_hex(12)}"
        base = {"id": rid, "created": int(time.time()), "model": model_id(preset)}
        base["system_fingerprint"] = f"videokv-{preset}"
        held = m if m is not None and release is None else None
        base["session"] = held.id if held is not None else None
        headers = {"X-Videokv-Session": held.id} if held is not None else {}

        def extras(answer: dict) -> dict:
            """The videokv fields of a response: the evidence, and the held session's name and expiry."""
            out = {"evidence": answer.get("evidence", [])}
            if held is not None:
                out.update(session_name=held.name, session_expires_at=held.expires_at)
            return out

        def run_ask(on_token=None):
            asked = (chat.question, None, chat.max_tokens, on_token, chat.n_logprobs, chat.options)
            if m is not None:
                return manager.ask(m, *asked, check=watch.check)
            return ask_once(preset, chat.system, *asked, check=watch.check)

        async def released(work):
            """`work`'s result; the session this chat created is released after it, whatever happens."""
            try:
                return await work
            finally:
                watch.close()
                if release is not None:
                    with contextlib.suppress(ServiceError, SchedulerClosed):
                        await asyncio.shield(manager.delete(release.id))

        reply = Reply(base, chat, extras, bool(body.stream_options and body.stream_options.include_usage))
        if not body.stream:
            return JSONResponse(reply.completion(await released(run_ask())), headers=headers)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def on_token(text: str) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, ("token", text))

        # released when the answer is done, even if the client has gone (the stream is never read then)
        task = asyncio.ensure_future(released(run_ask(on_token)))
        # the exception is read here too: the stream that reports it is never read if the client has gone
        task.add_done_callback(
            lambda t: (
                t.cancelled() or t.exception(),
                loop.call_soon_threadsafe(queue.put_nowait, ("done", None)),
            )
        )
        return StreamingResponse(
            reply.events(queue, task, lambda exc: to_openai_error(exc, clean, unauthorized)),
            media_type="text/event-stream",
            headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    def session_of(body: ChatRequest, preset: str) -> Managed | None:
        """The live session a request names (extra_body session), checked against its model; None if none."""
        if body.session is None:
            return None
        try:
            m = manager.get(body.session)
        except ServiceError as e:
            raise ParamError(str(e), "session", "session_not_found", status=404) from None
        if ":" in body.model and preset != m.memory:
            raise ParamError(
                f"session {m.id} keeps its memory with {m.memory!r}; send model {model_id(m.memory)!r}",
                "model",
            )
        return m

    async def open_chat(
        body: ChatRequest, m: Managed | None, preset: str, chat: Chat, watch: Watch
    ) -> tuple[Managed | None, bool]:
        """The chat's session with the request's media ingested: `m`, a new one (when the request has media
        or keeps its session), or None (a plain text chat); and whether it is new. A new session is deleted
        again if reading or ingesting the media fails (the client hung up included)."""
        media: MediaSet = await asyncio.to_thread(
            read_media, chat.parts, limits, manager.data_dir, max_upload_bytes, watch.check
        )
        keep = body.session is None and body.keep_session
        new = False
        try:
            if m is None and (media.items or keep):
                name = f"openai-{secrets.token_hex(4)}"
                idle = chat_idle_s if keep else None
                m = await manager.create(
                    preset, [], body.fps or 1.0, name, system=chat.system, idle_expiry=idle
                )
                new = True
            if m is not None and media.items:
                try:
                    await ingest_media(m, media, watch)
                except BaseException:
                    if new:
                        await manager.delete(m.id)
                    raise
        finally:
            media.cleanup()
        return m, new

    async def ingest_media(m: Managed, media: MediaSet, watch: Watch) -> None:
        def pieces() -> Iterator[list]:
            for item in media.items:  # lazily: each starts at the clock the one before left
                if item.kind == "image":
                    yield from manager.frame_chunks(m, item.frames, None)
                    continue
                fps = m.fps
                frames = iter_frames(item.path, fps=fps)
                items = merge_items(frames, [], m.session.clock, end=item.info.duration, interval=1.0 / fps)
                yield from chunked(items, manager.chunk_frames)

        def make_chunks() -> Iterator[list]:
            for chunk in pieces():
                watch.check()  # the client hung up: no further chunk (the ingest is rolled back)
                yield chunk

        try:
            await manager.ingest_chunks(m, make_chunks)
        except VideoError as e:
            raise NotAVideo(
                f"a video could not be decoded to the end ({str(e).split(': ', 1)[-1]}); it is truncated or "
                "corrupt: send it again whole. Nothing of this request was ingested."
            ) from e

    async def ask_once(preset, system, question, choices, max_tokens, on_token, n_logprobs, options, check):
        """A text chat with no stream: a fresh session on the scheduler, dropped afterwards; `check` is
        called between its steps (it raises when the client has gone)."""
        key = f"openai-{secrets.token_hex(6)}"

        def run():
            session = qa.session(resolve_memory(preset), system=system if system else qa.system)
            session.prefill_chunk = PREFILL_CHUNK_TOKENS
            steps = session.ask_steps(question, choices, max_tokens, on_token, n_logprobs, options)
            return (yield from answer_steps(steps, check))

        try:
            return await manager.scheduler.run(key, run)
        finally:
            manager.scheduler.forget(key)

    return router


def generation_of(body: ChatRequest) -> tuple[GenerationOptions, int]:
    """The decoding options and token limit of a request (OpenAI's names mapped to transformers')."""
    if body.max_tokens is not None and body.max_completion_tokens is not None:
        if body.max_tokens != body.max_completion_tokens:
            raise ParamError("send max_tokens or max_completion_tokens, not both", "max_tokens")
    max_tokens = body.max_completion_tokens or body.max_tokens or DEFAULT_MAX_TOKENS
    sample = body.temperature is not None and body.temperature > 0
    if not sample and body.top_k:
        raise ParamError("top_k applies when sampling: send temperature > 0 with it", "top_k")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    options: dict[str, Any] = {"stop": tuple(stop), "seed": body.seed}
    if body.repetition_penalty is not None:
        options["repetition_penalty"] = body.repetition_penalty
    if sample:
        options.update(do_sample=True, temperature=body.temperature)
        if body.top_p is not None:
            options["top_p"] = body.top_p
        if body.top_k:
            options["top_k"] = body.top_k
    try:
        return GenerationOptions.make(**options), max_tokens
    except InputError as e:
        names = ("stop", "temperature", "top_p", "top_k", "seed", "repetition_penalty")
        param = next((k for k in names if k in str(e)), None)
        raise ParamError(str(e), param) from None


@dataclass(frozen=True)
class Chat:
    """A chat request, checked: its decoding options and limits, system prompt, question and media parts."""

    options: GenerationOptions
    max_tokens: int
    top: int
    want_logprobs: bool
    n_logprobs: int
    system: str | None
    question: str
    parts: list


async def check_chat(
    body: ChatRequest, limits: L.Limits, tokenize: Callable[[str], list[int]], chars_per_token: int | None
) -> Chat:
    """Every check of a chat request that needs no media and no model work, cheapest first: the options,
    the messages, the number of media parts, the characters of the question and system prompt, then their
    tokens (ParamError, or 413/422 naming the limit)."""
    options, max_tokens = generation_of(body)
    top = body.top_logprobs or 0
    if body.top_logprobs is not None and not body.logprobs:
        raise ParamError("top_logprobs needs logprobs: true", "top_logprobs")
    want_logprobs = bool(body.logprobs)
    system, question, parts = read_messages(body.messages, with_session=body.session is not None)
    if len(parts) > MAX_PARTS:  # the frames route's cap: refused before any image is decoded
        raise ParamError(
            f"the request has {len(parts)} image and video parts to read; this server takes at most "
            f"{MAX_PARTS} a request (as many as images in POST /v1/sessions/{{id}}/frames): send fewer",
            "messages",
            "request_too_large",
            status=413,
        )
    n_logprobs = max(1, top) if want_logprobs else 0
    check_question(question, None, max_tokens, n_logprobs, options)
    L.check_ask(limits, question, None)
    if system and len(system) > limits.max_text_chars:  # characters before the tokenizer sees them
        raise L.over("max_text_chars", limits, "the system prompt's length in characters", len(system))
    texts = [question] + ([system] if system else [])
    await L.check_tokens(limits, tokenize, texts, "question", chars_per_token)
    return Chat(options, max_tokens, top, want_logprobs, n_logprobs, system, question, parts)


@dataclass
class Reply:
    """A chat's answer in OpenAI's shapes: `completion` (one object) or `events` (the chunk stream)."""

    base: dict  # id, created, model, system_fingerprint, session
    chat: Chat
    extras: Callable[[dict], dict]  # the videokv fields of the answer
    include_usage: bool = False

    def _logprobs(self, answer: dict) -> dict | None:
        return logprobs_of(answer, self.chat.top) if self.chat.want_logprobs else None

    def completion(self, answer: dict) -> dict:
        message = {"role": "assistant", "content": answer["answer"], "refusal": None}
        choice = {
            "index": 0,
            "message": message,
            "logprobs": self._logprobs(answer),
            "finish_reason": answer["stats"].get("finish_reason", "stop"),
        }
        out = {**self.base, "object": "chat.completion", "choices": [choice], "usage": usage_of(answer)}
        return {**out, **self.extras(answer)}

    def chunk(
        self, delta: dict, finish: str | None = None, logprobs: dict | None = None, extra: dict | None = None
    ) -> bytes:
        c = {**self.base, "object": "chat.completion.chunk"}
        c["choices"] = [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]
        if self.include_usage:
            c["usage"] = None
        return b"data: " + json.dumps({**c, **(extra or {})}).encode() + b"\n\n"

    async def events(
        self, queue: asyncio.Queue, task: asyncio.Future, error: Callable[[BaseException], JSONResponse]
    ) -> AsyncIterator[bytes]:
        """The stream: the role, the text as `queue` gets it, then the end (or the error) of `task`."""
        yield self.chunk({"role": "assistant", "content": ""})
        started = False
        while True:
            kind, text = await queue.get()
            if kind == "done":
                break
            if not started:
                text = text.lstrip()
                started = bool(text)
            if text:
                yield self.chunk({"content": text})
        try:
            answer = task.result()
        except Exception as exc:  # noqa: BLE001 - an error mid-stream is an SSE error object
            yield b"data: " + error(exc).body + b"\n\n"
            yield b"data: [DONE]\n\n"
            return
        finish = answer["stats"].get("finish_reason", "stop")
        yield self.chunk({}, finish, self._logprobs(answer), self.extras(answer))
        if self.include_usage:
            c = {**self.base, "object": "chat.completion.chunk", "choices": [], "usage": usage_of(answer)}
            yield b"data: " + json.dumps(c).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"


def read_messages(messages: list[Message], with_session: bool) -> tuple[str | None, str, list]:
    """(system prompt, the question, media parts (kind, url, where)) of a conversation. Media: those of the
    last user message with a session, of every user message without one."""
    last = len(messages) - 1
    if messages[last].role != "user":
        raise ParamError("the last message must be the user's question (role user)", f"messages[{last}].role")
    system = [text_of(m.content) for m in messages if m.role in ("system", "developer")]
    parts = []
    for i, msg in enumerate(messages):
        if msg.role != "user" or isinstance(msg.content, str) or msg.content is None:
            continue
        if with_session and i != last:
            continue
        for j, part in enumerate(msg.content):
            where = f"messages[{i}].content[{j}]"
            if isinstance(part, ImagePart):
                parts.append(("image", part.image_url.url, where))
            elif isinstance(part, VideoPart):
                parts.append(("video", part.video_url.url, where))
    question = text_of(messages[last].content).strip()
    if not question:
        raise ParamError(
            "the last user message has no text: add a text part with the question",
            f"messages[{last}].content",
        )
    return ("\n".join(s for s in system if s) or None), question, parts


def text_of(content: str | list | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(p.text for p in content if isinstance(p, TextPart))


def _bytes(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def logprobs_of(answer: dict, top: int) -> dict:
    """The answer's per-token log-probabilities in OpenAI's shape (the end of sequence left out)."""
    steps = (answer.get("logprobs") or [])[: answer["stats"].get("answer_tokens", 0)]
    content = []
    for s in steps:
        alts = [{"token": t["token"], "logprob": t["logprob"], "bytes": _bytes(t["token"])} for t in s["top"]]
        content.append(
            {
                "token": s["token"],
                "logprob": s["logprob"],
                "bytes": _bytes(s["token"]),
                "top_logprobs": alts[:top],
            }
        )
    return {"content": content, "refusal": None}


def usage_of(answer: dict) -> dict:
    """Tokens the question attended to (the memory's context plus the question turn) and generated."""
    stats = answer["stats"]
    prompt = round(stats.get("context_tokens", 0)) + int(stats.get("prompt_tokens", 0))
    completion = int(stats.get("answer_tokens", 0))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


__all__ = ["openai_router", "error_body", "ChatRequest", "MediaError"]
