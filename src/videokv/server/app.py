"""The FastAPI application: `create_app(qa, data_dir, ...)`; every API route is under /v1 (docs/SERVER.md).

Handlers are async; model work runs on the session manager's fair scheduler (one worker thread), decoding
in worker threads, so the event loop only moves bytes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import math
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.requests import ClientDisconnect

from videokv.api import GenerationOptions, VideoQA, check_question
from videokv.errors import InputError, SubtitleError, VideoError, VideoKVError
from videokv.presets import DEFAULT_PRESET, PRESETS
from videokv.server import limits as L
from videokv.server import schemas as S
from videokv.server.connections import Watch
from videokv.server.faults import fault_of
from videokv.server.limits import GuardMiddleware, HostPolicy, Limits
from videokv.server.live import chunked, is_url, merge_items, with_transcript
from videokv.server.openai_api import openai_router
from videokv.server.scheduler import SchedulerClosed
from videokv.server.sessions import (
    BadRequest,
    Managed,
    NotAVideo,
    NotFound,
    ServiceError,
    SessionManager,
    frames_from_request,
    gone,
)
from videokv.server.uploads import receive_upload
from videokv.video.decode import iter_frames, probe
from videokv.video.subtitles import load_subtitles

log = logging.getLogger("videokv.server")

STATIC_DIR = Path(__file__).parent / "static"
DEFAULT_MAX_UPLOAD = 512 * 2**20
DEFAULT_CHAT_IDLE_S = 600.0

ERRORS = {
    code: {"model": S.Error, "description": text}
    for code, text in {
        400: "bad input",
        401: "missing or wrong bearer token",
        404: "unknown session or snapshot",
        409: "conflict (e.g. a live source is already running)",
        413: "upload too large",
        415: "not a video, or a truncated one",
        422: "request validation failed",
        429: "too many sessions, or over the session's byte budget",
        503: "out of file descriptors, storage not available, or shutting down: retry after Retry-After",
        507: "the server's disk is full: nothing of the request was kept",
    }.items()
}

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "the video"},
                        "subtitles": {"type": "string", "format": "binary", "description": "SRT or WebVTT"},
                        "fps": {"type": "number", "exclusiveMinimum": 0, "maximum": 120},
                        "transcribe": {
                            "type": "string",
                            "description": "true, or a language code such as en: also transcribe the audio "
                            "into timed text (faster-whisper)",
                        },
                    },
                }
            }
        },
    }
}

SSE_DOC = {
    200: {
        "description": "the answer (JSON), or with stream=true server-sent events: `token` ({text}) per "
        "piece of text, then `answer` (the answer object) or `error` ({detail})",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


# One plain sentence per preset for people picking one (the web page; GET /v1/presets `description`); the
# preset's `summary` says exactly what it does, in the papers' terms.
PRESET_DESCRIPTIONS = {
    "full": "Keeps the whole video: exact, but memory grows with the video. For short clips.",
    "window": "Keeps only the most recent stretch of the video; anything older is forgotten.",
    "uniform": "Answers from 64 frames spread evenly over the video (and all subtitles), whatever is asked.",
    "rekv": "Keeps every frame; for each question, looks up the 64 frames that match it best.",
    "streamkv": "Groups frames into scenes with summaries; for each question, looks up the matching frames.",
    "mukv": "Keeps short clips at several levels of detail; for each question, looks up the matching parts.",
    "x2l": "Keeps the video at two levels of detail; reloads the parts that match the question in full.",
    "videokv": "The default: for each question, looks up the frames and the subtitle or transcript lines "
    "that match it.",
}


def preset_description(name: str, summary: str) -> str:
    """The plain sentence about a preset: its own, or the first clause of its summary."""
    if name in PRESET_DESCRIPTIONS:
        return PRESET_DESCRIPTIONS[name]
    first = summary.split(";")[0].strip()
    return first if len(first) <= 120 else first[:119].rstrip() + "…"


def _decode_b64(data: str, what: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadRequest(f"{what} is not valid base64: {e}") from e


def _sse(event: str, data: object) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def _pick_fps(raw: str | None, default: float) -> float:
    if raw is None or not raw.strip():
        return default
    try:
        fps = float(raw)
    except ValueError:
        raise BadRequest(f"the form field fps must be a number of frames per second; got {raw!r}") from None
    if not (math.isfinite(fps) and 0 < fps <= 120):
        raise BadRequest(f"fps must be in (0, 120]; got {raw}")
    return fps


def _speech(transcribe: object, video: str | Path | None, name: str) -> str | bool | None:
    """A request's `transcribe` option, checked: None (no transcript), or what to hand the source (True or a
    language code). A local video without an audio track is refused (400) before anything is ingested."""
    from videokv.video.transcribe import NoAudioError, parse_transcribe, require_audio

    language = parse_transcribe(transcribe)
    if language is False:
        return None
    if video is not None:
        try:
            require_audio(video)
        except NoAudioError:
            raise BadRequest(
                f"{name!r} has no audio track to transcribe; send it without transcribe, or its speech as "
                "subtitles"
            ) from None
    return True if language is None else language


def _check_token(request: Request) -> None:
    token = request.app.state.token
    if token is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), token.encode()):
        raise _Unauthorized("this server needs its token: send the header 'Authorization: Bearer <token>'")


class JSONRoute(APIRoute):
    """A route whose JSON body is read under the size cap as it streams in (413 past it, after the token is
    checked) and parsed in a worker thread, not on the event loop; forms and other types are refused (415)."""

    def get_route_handler(self):
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def capped(request: Request) -> Response:
            _check_token(request)
            body, parsed = await L.read_json_body(request, request.app.state.limits.max_json_bytes)
            request._body = body
            if parsed is not None:
                request._json = parsed
            return await handler(request)

        return capped


BEARER = HTTPBearer(auto_error=False, description="the server's token (--token or VIDEOKV_TOKEN)")


async def require_token(
    request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]
) -> None:
    """401 unless the request carries the app's bearer token (when it has one)."""
    token = request.app.state.token
    if token is None:
        return
    if creds is None or creds.scheme.lower() != "bearer":
        raise _Unauthorized("this server needs a token: send the header 'Authorization: Bearer <token>'")
    if not secrets.compare_digest(creds.credentials.encode(), token.encode()):
        raise _Unauthorized("wrong token: send the token the server was started with (--token)")


def create_app(
    qa: VideoQA,
    data_dir: str | Path,
    token: str | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD,
    max_sessions: int = 16,
    session_bytes: int | None = None,
    *,
    default_memory: str = DEFAULT_PRESET,
    chunk_frames: int = 8,
    model_name: str | None = None,
    limits: Limits | None = None,
    bound_host: str = "127.0.0.1",
    restore_sessions: bool = True,
    replica: dict | None = None,
    manager_cls: type[SessionManager] = SessionManager,
    chat_idle_s: float = DEFAULT_CHAT_IDLE_S,
    store: str | None = None,
    endpoint: str | None = None,
    lease_s: float | None = None,
    cache_bytes: int | None = None,
) -> FastAPI:
    """The videokv service over `qa` (one model shared by every session), keeping sessions in `data_dir`.

    token: when set, every /v1 route needs `Authorization: Bearer <token>`. max_upload_bytes: the largest
    upload. max_sessions: sessions held at once. session_bytes: each session's budget of resident memory
    bytes (blocks over it spill to the session's folder; presets that cannot spill refuse ingest past it).
    limits: the per-request limits and what requests may name (server paths, URLs); bound_host: the
    address the server listens on (a Host name it answers besides loopback names and IP literals).
    Sessions already in `data_dir` are restored from their journals when the app starts (with
    restore_sessions=False none are: a replica of a cluster restores only the sessions it is given).
    replica: this process's place in a cluster ({"id", "pid", "node"}), reported in every session's status.
    manager_cls: the SessionManager (sub)class that holds the sessions. chat_idle_s: the idle expiry of the
    sessions an OpenAI chat keeps (`keep_session`): deleted after that many seconds without a request.
    store / endpoint / cache_bytes: where journals and snapshots live (a folder or `s3://BUCKET/PREFIX`;
    default `data_dir`), the object store's URL, its local cache's size. lease_s: servers sharing an object
    store hold their sessions under leases of this many seconds (None: no leases; sessions.py).
    """
    if not (math.isfinite(chat_idle_s) and chat_idle_s > 0):
        raise ValueError(f"chat_idle_s must be a positive number of seconds; got {chat_idle_s}")
    limits = limits or Limits()
    limits.check()
    manager = manager_cls(
        qa,
        data_dir,
        max_sessions=max_sessions,
        session_bytes=session_bytes,
        chunk_frames=chunk_frames,
        limits=limits,
        store=store,
        endpoint=endpoint,
        lease_s=lease_s,
        cache_bytes=cache_bytes,
    )
    roots = (str(Path(data_dir).resolve()), limits.media_dir)

    def clean(message: str) -> str:
        return L.scrub(message, *roots)

    model_label = model_name or qa.family
    token_chars = L.chars_per_token(qa)  # characters are counted before the tokenizer runs

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if restore_sessions:
            await asyncio.to_thread(manager.restore_all)
        sweeper = asyncio.create_task(_expire_idle(manager, min(30.0, max(0.25, chat_idle_s / 4))))
        try:
            yield
        finally:
            sweeper.cancel()
            await asyncio.to_thread(manager.close)

    app = FastAPI(
        title="videokv",
        version="0.1.0",
        description="Long-term KV-cache memory for streaming video question answering: sessions over live "
        "streams, answers with evidence time spans.",
        lifespan=lifespan,
    )
    app.state.manager = manager
    app.state.limits = limits
    app.add_middleware(L.RateLimitMiddleware, limits=limits, token=token)
    app.add_middleware(GuardMiddleware, policy=HostPolicy(bound_host, limits.allowed_hosts))

    # ---- errors: always {"detail": "<what to do>"} -----------------------------------------------------
    _install_error_handlers(app, clean)

    # ---- auth ----------------------------------------------------------------------------------------
    app.state.token = token

    api = APIRouter(
        prefix="/v1", dependencies=[Depends(require_token)], responses=ERRORS, route_class=JSONRoute
    )

    def status_of(m: Managed) -> dict:
        st = m.status()
        for key in ("error",):
            if st.get(key):
                st[key] = clean(st[key])
        if st.get("source") and st["source"].get("error"):
            st["source"] = {**st["source"], "error": clean(st["source"]["error"])}
        if replica is not None:
            st["replica"] = replica
        return st

    # ---- service ---------------------------------------------------------------------------------------
    @api.get("/health", response_model=S.Health)
    async def health() -> dict:
        return {"status": "ok", "model": model_label, "sessions": len(manager.sessions)}

    @api.get("/presets", response_model=list[S.PresetInfo])
    async def presets() -> list[dict]:
        return [
            {
                "name": n,
                "description": preset_description(n, p.summary),
                "summary": p.summary,
                "source": p.source,
            }
            for n, p in PRESETS.items()
        ]

    # ---- sessions --------------------------------------------------------------------------------------
    @api.post("/sessions", response_model=S.SessionStatus, status_code=201)
    async def create_session(body: S.CreateSession | None = None) -> dict:
        body = body or S.CreateSession()
        memory = body.memory or default_memory
        if memory not in PRESETS:
            raise BadRequest(f"unknown memory preset {memory!r}; choose one of: {', '.join(PRESETS)}")
        m = await manager.create(memory, body.memory_set, body.fps, body.name)
        return status_of(m)

    @api.get("/sessions", response_model=list[S.SessionStatus])
    async def list_sessions() -> list[dict]:
        return [status_of(m) for m in manager.list()]

    @api.get("/sessions/{sid}", response_model=S.SessionStatus)
    async def get_session(sid: str) -> dict:
        return status_of(manager.get(sid))

    @api.delete("/sessions/{sid}", status_code=204, response_class=Response)
    async def delete_session(sid: str) -> Response:
        await manager.delete(sid)
        return Response(status_code=204)

    # ---- ingest ----------------------------------------------------------------------------------------
    @api.post("/sessions/{sid}/video", response_model=S.Added, openapi_extra=UPLOAD_BODY)
    async def upload_video(sid: str, request: Request) -> dict:
        m = manager.get(sid)
        manager._check_free(m)
        upload = await receive_upload(request, m.folder / "uploads", max_upload_bytes)
        try:
            if m.deleted:  # deleted while the upload streamed in
                raise gone(m)
            video = upload.files.get("file")
            if video is None:
                raise BadRequest("the multipart field 'file' (the video) is missing")
            fps = _pick_fps(upload.fields.get("fps"), m.fps)
            name = upload.filenames.get("file", "upload")
            speech = upload.fields.get("transcribe")
            try:
                info = await asyncio.to_thread(probe, video)
            except VideoError as e:
                raise NotAVideo(
                    f"{name!r} is not a video FFmpeg can read ({str(e).split(': ', 1)[-1]}); upload an "
                    "mp4, webm, mkv, mov or avi file"
                ) from e
            if info.duration <= 0 and info.frames <= 0:
                raise NotAVideo(f"{name!r} has no frames; upload a video with at least one frame")
            L.check_frame_pixels(limits, info.width, info.height, f"the frames of {name!r}")
            speech = await asyncio.to_thread(_speech, speech, video, name)
            events = []
            if "subtitles" in upload.files:
                srt, srt_name = upload.files["subtitles"], upload.filenames.get("subtitles") or "subtitles"
                try:
                    events = await asyncio.to_thread(load_subtitles, srt)
                except SubtitleError as e:  # named as uploaded, not where the server keeps the upload
                    detail = str(e).replace(repr(str(srt)), repr(srt_name)).replace(str(srt), srt_name)
                    raise BadRequest(detail) from None
                L.check_text_events(limits, [e.text for e in events])
                for i, e in enumerate(events):
                    L.check_time(limits, e.start, m.session.clock, f"subtitle {i + 1}'s start")
            dropped: list = []

            def make_chunks() -> Iterator[list]:  # the video's time 0 is where the stream is now
                frames = iter_frames(video, fps=fps)
                items = merge_items(
                    frames, events, m.session.clock, end=info.duration, interval=1.0 / fps, dropped=dropped
                )
                return chunked(with_transcript(items, video, speech, m.session.clock), manager.chunk_frames)

            try:
                added = await manager.ingest_chunks(m, make_chunks, 1.0 / fps)
            except VideoError as e:
                raise NotAVideo(
                    f"{name!r} could not be decoded to the end ({str(e).split(': ', 1)[-1]}); the file is "
                    "truncated or corrupt: upload it again whole. Nothing of it was ingested."
                ) from e
            warnings = []
            if dropped:
                warnings.append(
                    f"{len(dropped)} subtitle event(s) start after the video's end ({info.duration:.3f} s) "
                    "and were not ingested; ends past it were clipped"
                )
            return {"added": added, "status": status_of(m), "warnings": warnings}
        finally:
            upload.cleanup()

    @api.post("/sessions/{sid}/source", response_model=S.SessionStatus, status_code=202)
    async def start_source(sid: str, body: S.StartSource) -> dict:
        m = manager.get(sid)
        url = body.url.strip()
        if not is_url(url) or url.lower().startswith("file://"):
            path = L.server_path(limits, url, "source")
            try:
                info = await asyncio.to_thread(probe, path)
            except VideoError:
                raise BadRequest(
                    f"cannot use {url!r} as a source: it is not a video FFmpeg can read"
                ) from None
            L.check_frame_pixels(limits, info.width, info.height, f"the frames of {url!r}")
            url = str(path)
            speech = await asyncio.to_thread(_speech, body.transcribe, path, body.url)
        else:
            L.check_url(limits, url)
            url = await asyncio.to_thread(L.resolve_redirects, limits, url)
            speech = _speech(body.transcribe, None, url)  # a URL's audio is checked when it is read
        subtitles = None
        if body.subtitles is not None:
            subtitles = str(L.server_path(limits, body.subtitles, "subtitles"))
            try:
                events = await asyncio.to_thread(load_subtitles, subtitles)
            except SubtitleError:  # never echo a server file's contents
                raise BadRequest(f"{body.subtitles!r} is not an SRT or WebVTT file") from None
            L.check_text_events(limits, [e.text for e in events])
        manager.start_source(
            m, url, fps=body.fps, realtime=body.realtime, subtitles=subtitles, transcribe=speech
        )
        return status_of(m)

    @api.delete("/sessions/{sid}/source", response_model=S.SessionStatus)
    async def stop_source(sid: str) -> dict:
        m = manager.get(sid)
        await asyncio.to_thread(manager.stop_source, m)
        return status_of(m)

    @api.post("/sessions/{sid}/frames", response_model=S.Added)
    async def push_frames(sid: str, body: S.PushFrames) -> dict:
        m = manager.get(sid)
        if body.shape is not None and len(body.shape) == 4:
            t, h, w = (max(0, int(x)) for x in body.shape[:3])
            L.check_frame_pixels(limits, w, h, "the raw frames")
            if t * h * w > limits.max_request_pixels:
                raise L.over(
                    "max_request_pixels", limits, "the pixels of this request's frames", t * h * w, 413
                )

        def decode() -> object:
            images = (
                None
                if body.images is None
                else [_decode_b64(s, f"image {i}") for i, s in enumerate(body.images)]
            )
            if images is not None:
                L.image_sizes(limits, images)  # from the headers: refused before anything is decoded
            raw = None if body.raw is None else _decode_b64(body.raw, "raw")
            return frames_from_request(images, raw, body.shape)

        size = len(body.raw or "") + sum(len(s) for s in body.images or ())
        # a large request's decoding takes its turn in the heavy-work lane (one at a time, beside the model)
        frames = await (L.offload(decode) if size > L.INLINE_BYTES else asyncio.to_thread(decode))
        added = await manager.ingest_chunks(m, lambda: manager.frame_chunks(m, frames, body.timestamps))
        return {"added": added, "status": status_of(m)}

    @api.post("/sessions/{sid}/text", response_model=S.Added)
    async def push_text(sid: str, body: S.PushText) -> dict:
        m = manager.get(sid)
        events = [e.model_dump() for e in body.events]
        texts = [e["text"] for e in events]
        L.check_text_events(limits, texts)
        await L.check_tokens(limits, qa.tokenize, texts, "text events", token_chars)
        manager.text_items(m, events)  # times checked before the request waits for the session
        added = await manager.ingest_chunks(m, lambda: iter([list(manager.text_items(m, events))]))
        return {"added": added, "status": status_of(m)}

    # ---- questions -------------------------------------------------------------------------------------
    @api.post("/sessions/{sid}/ask", response_model=S.AnswerOut, responses=SSE_DOC)
    async def ask(sid: str, body: S.Ask, request: Request) -> object:
        m = manager.get(sid)
        generation = GenerationOptions.make(**body.generation())  # bad options: 400 before any work
        try:  # the checks `ask` makes that need no stream, as the CLI makes them
            check_question(body.question, body.choices, body.max_new_tokens, body.logprobs, generation)
        except InputError as e:
            raise BadRequest(
                f"{e} (choices: null for a free answer)" if "choices" in str(e) else str(e)
            ) from None
        L.check_ask(limits, body.question, body.choices)
        await L.check_tokens(
            limits, qa.tokenize, [body.question, *(body.choices or [])], "question", token_chars
        )
        if not body.stream:
            async with Watch(request) as watch:  # a client that hangs up stops the answer at its next step
                return await manager.ask(
                    m,
                    body.question,
                    body.choices,
                    body.max_new_tokens,
                    logprobs=body.logprobs,
                    generation=generation,
                    check=watch.check,
                )
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def on_token(text: str) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, ("token", text))

        watch = Watch(request)
        task = asyncio.ensure_future(
            manager.ask(
                m,
                body.question,
                body.choices,
                body.max_new_tokens,
                on_token,
                body.logprobs,
                generation,
                check=watch.check,
            )
        )
        # the exception is read here too: the stream that reports it is never read if the client has gone
        task.add_done_callback(lambda t: (watch.close(), _seen(t), queue.put_nowait(("done", None))))

        async def events() -> AsyncIterator[bytes]:
            while True:
                kind, text = await queue.get()
                if kind == "done":
                    break
                yield _sse("token", {"text": text})
            try:
                yield _sse("answer", task.result())
            except Exception as e:  # the error goes to the client as an event, with the status it would get
                status, detail, _ = error_answer(e, clean)
                yield _sse("error", {"detail": detail, "status": status})

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    # ---- inspection ------------------------------------------------------------------------------------
    @api.get("/sessions/{sid}/timeline", response_model=S.Timeline)
    async def timeline(sid: str) -> dict:
        m = manager.get(sid)
        return {"clock": m.status()["clock"], "spans": list(m.spans), "thumbnails": m.thumbs.list()}

    @api.get(
        "/sessions/{sid}/thumbnail",
        response_class=FileResponse,
        responses={200: {"content": {"image/jpeg": {}}, "description": "the thumbnail nearest t"}},
    )
    async def thumbnail(
        sid: str, t: Annotated[float, Query(ge=0, description="stream seconds")]
    ) -> FileResponse:
        m = manager.get(sid)
        if not math.isfinite(t):
            raise BadRequest(f"t must be a finite number of seconds; got {t}")
        path = m.thumbs.nearest(t)
        if path is None or not path.exists():
            raise NotFound(f"session {sid} has no thumbnails yet; ingest some frames first")
        return FileResponse(path, media_type="image/jpeg")

    # ---- snapshots -------------------------------------------------------------------------------------
    @api.post("/sessions/{sid}/save", response_model=S.Saved)
    async def save(sid: str) -> dict:
        return {"snapshot": await manager.save(manager.get(sid))}

    @api.get("/snapshots", response_model=list[S.SnapshotInfo])
    async def snapshots() -> list[dict]:
        return await asyncio.to_thread(manager.snapshots)

    @api.get("/quarantine", response_model=list[S.QuarantineInfo])
    async def quarantine() -> list[dict]:
        """Sessions kept out of service because their stored journal failed verification (a checksum, a
        missing object, a malformed record), with the reason; their storage is kept as it was."""
        return sorted(manager.quarantined.values(), key=lambda q: q["session"])

    @api.post("/snapshots/{name}/restore", response_model=S.SessionStatus, status_code=201)
    async def restore(name: str) -> dict:
        return status_of(await manager.restore_snapshot(name))

    app.include_router(api)
    app.include_router(  # GET /v1/models, POST /v1/chat/completions: the OpenAI format (openai_api.py)
        openai_router(
            qa,
            manager,
            limits,
            model_label=model_label,
            default_memory=default_memory,
            max_upload_bytes=max_upload_bytes,
            clean=clean,
            route_class=JSONRoute,
            dependencies=[Depends(require_token)],
            unauthorized=_Unauthorized,
            chat_idle_s=chat_idle_s,
        )
    )

    # ---- the web page (not behind the token: the page asks for it) ---------------------------------------
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> Response:
        page = STATIC_DIR / "index.html"
        if page.exists():
            return FileResponse(page, media_type="text/html")
        return HTMLResponse(
            "<!doctype html><title>videokv</title><p>videokv is running; the API is at /docs."
        )

    app.mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")
    return app


class _Unauthorized(Exception):
    pass


def _seen(task: asyncio.Future) -> None:
    """Mark `task`'s exception as retrieved (asyncio would log it as never retrieved)."""
    if not task.cancelled():
        task.exception()


def error_answer(exc: BaseException, clean: Callable[[str], str]) -> tuple[int, str, dict[str, str] | None]:
    """The status, message and headers the API answers `exc` with (a streamed answer's `error` event too):
    a ServiceError's own status; a full disk 507, no file descriptors or storage 503 with Retry-After
    (faults.py); bad input 400; anything unforeseen a 500 whose details go to the log, not to the client."""
    if isinstance(exc, ServiceError):
        retry = getattr(exc, "retry_after", None)
        return exc.status, clean(str(exc)), ({"Retry-After": str(retry)} if retry is not None else None)
    fault = fault_of(exc)
    if fault is not None:
        log.warning("videokv: %s", fault.message)
        return fault.status, clean(fault.message), fault.headers
    if isinstance(exc, SchedulerClosed):
        return 503, "the server is shutting down; retry later", None
    if isinstance(exc, VideoKVError) and not isinstance(exc, OSError):
        return (400 if isinstance(exc, InputError) else 500), clean(str(exc)), None
    log.error("videokv: a request failed", exc_info=exc)
    return 500, f"internal error ({type(exc).__name__}); the server's log has the details", None


def _install_error_handlers(app: FastAPI, clean: Callable[[str], str]) -> None:
    """Every error as {"detail": "<what to do>"} with its status (error_answer)."""

    async def answer(request: Request, exc: Exception) -> JSONResponse:
        status, detail, headers = error_answer(exc, clean)
        return JSONResponse({"detail": detail}, status_code=status, headers=headers)

    for cls in (ServiceError, VideoKVError, OSError, SchedulerClosed, Exception):
        app.add_exception_handler(cls, answer)

    @app.exception_handler(ClientDisconnect)
    async def _disconnected(request: Request, exc: ClientDisconnect) -> Response:
        return Response(status_code=499)  # nobody reads it: the client has gone

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
        return JSONResponse({"detail": "invalid request: " + "; ".join(parts)}, status_code=422)

    @app.exception_handler(_Unauthorized)
    async def _unauthorized(request: Request, exc: _Unauthorized) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=401, headers={"WWW-Authenticate": "Bearer"})


async def _expire_idle(manager: SessionManager, every: float) -> None:
    """Delete sessions past their idle expiry (those an OpenAI chat kept), every `every` seconds."""
    while True:
        await asyncio.sleep(every)
        try:
            await manager.expire_idle()
        except SchedulerClosed:
            return
        except Exception:  # noqa: BLE001 - a failed sweep is logged; the next one tries again
            import logging

            logging.getLogger("videokv.server").exception("videokv: the idle-session sweep failed")


__all__ = ["create_app", "NotFound"]
