"""The service's limits and guards: what one request may cost, who may call, which files and URLs it may name.

Every limit is decided before any work starts, from what the request says about itself (lengths, counts,
image and video headers), and a refused request gets 413 or 422 with the limit and the `videokv serve`
flag that changes it (docs/SERVER.md has the table). Nothing here touches a session's memory.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import ipaddress
import json
import math
import os
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit

from videokv.server.sessions import BadRequest, ServiceError, TooLarge


class Unprocessable(ServiceError):
    """Well-formed, but over one of the server's limits (422)."""

    status = 422


class Forbidden(ServiceError):
    status = 403


class UnsupportedMedia(ServiceError):
    status = 415


#: 1e9 s (about 31 years): no stream time may pass this, whatever the jumps.
MAX_STREAM_SECONDS = 1e9


@dataclass(frozen=True)
class Limits:
    """Per-request limits of the service; each field is a `videokv serve` flag (`--max-question-chars`...)."""

    max_question_chars: int = 2000
    max_choices: int = 26
    max_choice_chars: int = 300
    max_text_chars: int = 2000  # one text event
    max_text_events: int = 256  # text events in one request
    max_request_tokens: int = 2048  # text tokens in one request (question + choices, or all text events)
    max_frame_pixels: int = 3840 * 2160  # one image or video frame, from its header, before decoding
    max_request_pixels: int = 64 * 2**20  # all pushed images of one request, after decoding
    max_json_mb: float = 16.0  # a JSON body, counted while it streams in
    max_time_jump: float = 3600.0  # seconds an item may lie ahead of the stream clock
    max_late_text: float = 60.0  # text up to this many seconds before the clock is placed at the clock
    max_ingest_tokens: int = 32768  # stream tokens a retrieval session's ingest context may hold
    max_session_rps: float = 20.0  # requests per second to one session's routes (a token bucket)
    refusal_cost: float = 10.0  # requests a refused one (413/415/422: over a limit) counts as, in that bucket

    # not limits on a request, but what the server may be told to touch
    allowed_hosts: tuple[str, ...] = ()  # extra Host / Origin names (besides loopback and the bound host)
    media_dir: str | None = None  # server paths a source / subtitles may name live under here
    allow_urls: bool = False  # URL sources (http, rtsp, ...)
    url_hosts: tuple[str, ...] = ()  # if given: the only hosts (host or host:port) URL sources may name

    @property
    def max_json_bytes(self) -> int:
        return int(self.max_json_mb * 2**20)

    @staticmethod
    def flag(name: str) -> str:
        return "--" + name.replace("_", "-")

    def check(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.startswith("max_") and not (isinstance(value, int | float) and value > 0):
                raise ValueError(f"{self.flag(f.name)} must be > 0; got {value!r}")
        if not self.refusal_cost >= 0:
            raise ValueError(f"--refusal-cost must be >= 0; got {self.refusal_cost!r}")


def over(limit: str, limits: Limits, what: str, got: object, status: int = 422) -> ServiceError:
    """The error for a request over `limit`: what it sent, the limit, and the flag that changes it."""
    value = getattr(limits, limit)
    cls = TooLarge if status == 413 else Unprocessable
    return cls(
        f"{what} ({got}) is over this server's limit of {value}; send less, or start the server with a "
        f"larger {Limits.flag(limit)}"
    )


# ---- text and tokens ------------------------------------------------------------------------------------
def check_ask(limits: Limits, question: str, choices: list[str] | None) -> None:
    if len(question) > limits.max_question_chars:
        raise over("max_question_chars", limits, "the question's length in characters", len(question))
    if choices is not None:
        if len(choices) > limits.max_choices:
            raise over("max_choices", limits, "the number of choices", len(choices))
        longest = max((len(c) for c in choices), default=0)
        if longest > limits.max_choice_chars:
            raise over("max_choice_chars", limits, "the longest choice's length in characters", longest)


def check_text_events(limits: Limits, texts: list[str]) -> None:
    if len(texts) > limits.max_text_events:
        raise over("max_text_events", limits, "the number of text events", len(texts))
    longest = max((len(t) for t in texts), default=0)
    if longest > limits.max_text_chars:
        raise over("max_text_chars", limits, "the longest text event's length in characters", longest)


def count_tokens(
    tokenize: Callable[[str], list[int]], texts: Iterable[str], stop_after: int | None = None
) -> int:
    """Tokens of `texts`; with `stop_after`, counting stops once past it (a request far over the limit costs
    no more than one at it)."""
    n = 0
    for t in texts:
        n += len(tokenize(t))
        if stop_after is not None and n > stop_after:
            break
    return n


def chars_per_token(qa: object) -> int | None:
    """The most characters one token of `qa`'s tokenizer can stand for: its longest vocabulary entry (a
    byte-level or byte-fallback entry is at least as long as the text it stands for), or None if unknown."""
    tokenizer = getattr(getattr(qa, "adapter", None), "tokenizer", None)
    try:
        return max(1, max(len(t) for t in tokenizer.get_vocab()))
    except Exception:  # noqa: BLE001 - no vocabulary to read: the characters are not bounded by it
        return None


async def check_tokens(
    limits: Limits,
    tokenize: Callable[[str], list[int]],
    texts: list[str],
    what: str,
    chars_per_token: int | None = None,
) -> int:
    """Refuse past the token limit. Characters first: texts longer than `max_request_tokens` tokens of
    `chars_per_token` characters (chars_per_token) are refused before the tokenizer sees them. Counting
    stops at the limit, so its cost is bounded whatever was sent; short texts (an ordinary question) are
    counted inline, longer ones in the heavy-work lane (`offload`)."""
    chars = sum(len(t) for t in texts)
    if chars_per_token and chars > limits.max_request_tokens * chars_per_token:
        at_least = -(-chars // chars_per_token)
        raise over(
            "max_request_tokens",
            limits,
            f"the {what}'s length in tokens",
            f"at least {at_least}: {chars} characters, at most {chars_per_token} a token",
        )
    if chars <= INLINE_CHARS:
        n = count_tokens(tokenize, texts, limits.max_request_tokens)
    else:
        n = await offload(count_tokens, tokenize, texts, limits.max_request_tokens)
    if n > limits.max_request_tokens:
        raise over("max_request_tokens", limits, f"the {what}'s length in tokens", f"at least {n}")
    return n


# ---- heavy request work -------------------------------------------------------------------------------
#: Work on at most this many characters (or body bytes) runs inline on the event loop: a few milliseconds.
INLINE_CHARS = 16_384
INLINE_BYTES = 256 * 2**10
_HEAVY = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="videokv-heavy")


async def offload(fn: Callable, *args):
    """Run CPU-heavy request work (parsing a large JSON body, decoding base64 images, counting the tokens of
    long texts) in the one heavy-work thread: such work runs one piece at a time, so however many large
    requests a client sends, they take at most one core between them, and they never occupy the event
    loop's default thread pool, where the ordinary requests' small steps run."""
    return await asyncio.get_running_loop().run_in_executor(_HEAVY, functools.partial(fn, *args))


# ---- the ingest context -----------------------------------------------------------------------------------
def check_ingest_window(limits: Limits, config, memory_set: list[str], frame_tokens: int | None) -> None:
    """A `memory_set` that sets the ingest window of a retrieval preset (`window`, `ingest`, `ingest.*`) must
    keep it bounded and within `--max-ingest-tokens`: that context is not in the session's byte budget
    (`memory_set ingest.frames=100000` would grow it without bound). Refused before the session exists."""
    if config.retrieve is None or not any(
        p.partition("=")[0].strip().split(".")[0] in ("window", "ingest") for p in memory_set
    ):
        return
    ingest = config.ingest
    tokens, frames = getattr(ingest, "tokens", 0), getattr(ingest, "frames", None)
    # a frame has at least one token: without the model's frame size, `frames` is a lower bound
    bound = frames * (frame_tokens or 1) if frames is not None else tokens
    if bound is None and hasattr(ingest, "tokens"):
        raise Unprocessable(
            "this memory_set makes the ingest window unbounded (every stream token stays in the ingest "
            "context, outside the session's byte budget); give window=N with N <= "
            f"{limits.max_ingest_tokens} tokens, or start the server with a larger --max-ingest-tokens"
        )
    if bound is not None and bound > limits.max_ingest_tokens:
        raise over(
            "max_ingest_tokens", limits, "the ingest window this memory_set asks for, in tokens", bound
        )


def check_ingest_context(limits: Limits, stats: dict) -> None:
    """After an ingest step (inside its transaction; `stats`: the session's): a retrieval session's ingest
    context may hold at most `--max-ingest-tokens` stream tokens (a window given in frames, or units, is only
    known in tokens here)."""
    if "ingest_context_tokens" not in stats:
        return  # full / window: the context is the memory, counted in the byte budget
    held = int(stats["ingest_context_tokens"])
    if held > limits.max_ingest_tokens:
        raise over(
            "max_ingest_tokens",
            limits,
            "the ingest context after this ingest (its memory_set window), in stream tokens",
            held,
        )


# ---- pixels ---------------------------------------------------------------------------------------------
def check_frame_pixels(limits: Limits, width: int, height: int, what: str) -> None:
    if width * height > limits.max_frame_pixels:
        raise over(
            "max_frame_pixels",
            limits,
            f"{what} of {width}x{height} pixels: {width * height} pixels",
            width * height,
            status=413,
        )


def image_sizes(limits: Limits, images: list[bytes]) -> list[tuple[int, int]]:
    """Each image's (width, height) from its header (nothing decoded); refused past the pixel limits."""
    from PIL import Image, UnidentifiedImageError

    sizes = []
    total = 0
    for i, data in enumerate(images):
        try:
            with Image.open(_BytesIO(data)) as img:  # reads the header only; .load() would decode
                width, height = img.size
        except (UnidentifiedImageError, OSError, ValueError) as e:
            why = (
                "its format is not one PIL reads"
                if isinstance(e, UnidentifiedImageError)
                else no_reprs(str(e))
            )
            raise BadRequest(f"image {i} is not a JPEG/PNG image ({why})") from e
        check_frame_pixels(limits, width, height, f"image {i}")
        total += width * height
        if total > limits.max_request_pixels:
            raise over("max_request_pixels", limits, "the pixels of this request's images", total, status=413)
        sizes.append((width, height))
    return sizes


def _BytesIO(data: bytes):  # noqa: N802 - a tiny alias kept local to the PIL import
    import io

    return io.BytesIO(data)


# ---- time -----------------------------------------------------------------------------------------------
def check_time(limits: Limits, t: float, clock: float, what: str) -> None:
    """A stream time must be finite, >= 0, at most `max_time_jump` ahead of the clock and below 1e9 s."""
    if not math.isfinite(t) or t < 0:
        raise Unprocessable(f"{what} must be a finite number of seconds >= 0; got {t!r}")
    if t > clock + limits.max_time_jump or t > MAX_STREAM_SECONDS:
        raise Unprocessable(
            f"{what} ({t:.6g} s) is too far ahead of the stream clock ({clock:.3f} s): at most "
            f"{limits.max_time_jump:g} s ahead (and below {MAX_STREAM_SECONDS:g} s); start the server with a "
            f"larger {Limits.flag('max_time_jump')} to allow larger jumps"
        )


# ---- files and URLs -------------------------------------------------------------------------------------
def server_path(limits: Limits, given: str, what: str) -> Path:
    """A server path a request names: allowed only under --media-dir (resolved, links followed)."""
    if limits.media_dir is None:
        raise Forbidden(
            f"this server does not read {what} paths named by requests; upload the file instead, or start "
            "the server with --media-dir DIR to allow paths under DIR"
        )
    root = Path(limits.media_dir).expanduser().resolve()
    raw = given[len("file://") :] if given.lower().startswith("file://") else given
    path = Path(raw).expanduser()
    if not path.is_absolute():
        path = root / path
    resolved = path.resolve()
    if resolved != root and root not in resolved.parents:
        raise Forbidden(
            f"{what} {given!r} is outside the server's media folder (--media-dir); name a file in it"
        )
    if not resolved.is_file():
        raise BadRequest(f"{what} {given!r} is not a file in the server's media folder")
    return resolved


URL_SCHEMES = ("http", "https", "rtsp", "rtsps", "rtmp", "rtmps", "srt", "udp", "rtp", "tcp")


def check_url(limits: Limits, url: str) -> None:
    """A URL source must be allowed (--allow-urls / --allow-url-host) and use a streaming scheme."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in URL_SCHEMES:
        raise BadRequest(f"URL scheme {scheme!r} is not a video stream; use one of: {', '.join(URL_SCHEMES)}")
    if not (limits.allow_urls or limits.url_hosts):
        raise Forbidden(
            "this server does not open URL sources; upload the video instead, or start the server with "
            "--allow-urls (any host) or --allow-url-host HOST"
        )
    if limits.url_hosts:
        host = (parts.hostname or "").lower()
        port = parts.port
        names = {h.lower() for h in limits.url_hosts}
        if host not in names and f"{host}:{port}" not in names:
            raise Forbidden(f"URL host {host!r} (port {port}) is not in this server's --allow-url-host list")


def resolve_redirects(limits: Limits, url: str, hops: int = 5) -> str:
    """Follow an http(s) URL's redirects here, checking every hop against the URL policy; the final URL."""
    if urlsplit(url).scheme.lower() not in ("http", "https"):
        return url
    import httpx

    for _ in range(hops):
        try:
            with httpx.Client(follow_redirects=False, timeout=10.0) as client:
                with client.stream("GET", url) as r:
                    if not r.is_redirect:
                        return url
                    location = r.headers.get("location", "")
        except httpx.HTTPError:
            return url  # the source reports the failure when it opens the URL
        nxt = str(httpx.URL(url).join(location))
        try:
            check_url(limits, nxt)
        except ServiceError as e:
            raise Forbidden(f"the source redirects to {nxt!r}, which is not allowed: {e}") from None
        url = nxt
    raise BadRequest(f"the source redirects more than {hops} times")


# ---- Host and Origin ------------------------------------------------------------------------------------
LOOPBACK_HOSTS = ("localhost", "ip6-localhost", "localhost.localdomain")


def _hostname(netloc: str) -> str:
    netloc = netloc.strip().lower()
    if netloc.startswith("["):
        return netloc[1 : netloc.find("]")] if "]" in netloc else netloc
    return netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass
class HostPolicy:
    """Which Host names the server answers: IP literals (a DNS-rebinding attack needs a name), loopback
    names, the bound host, and `extra` (`--allowed-host`; `*` allows any)."""

    bound: str = "127.0.0.1"
    extra: tuple[str, ...] = ()
    names: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.names = {*LOOPBACK_HOSTS, _hostname(self.bound), *(h.lower() for h in self.extra)}

    def host_ok(self, host: str) -> bool:
        name = _hostname(host)
        return "*" in self.names or _is_ip(name) or name in self.names

    def origin_ok(self, origin: str, host: str) -> bool:
        """A browser's Origin must be the page the server itself serves (same scheme-less netloc as Host),
        or a host the operator allowed."""
        if origin == "null":
            return False
        netloc = urlsplit(origin).netloc.lower()
        if netloc and netloc == host.strip().lower():
            return True
        return "*" in self.names or (
            bool(self.extra) and _hostname(netloc) in {h.lower() for h in self.extra}
        )


class GuardMiddleware:
    """Pure ASGI: refuse requests whose Host is not ours (DNS rebinding), whose Origin is another site's, or
    that a browser marks as cross-site (Sec-Fetch-Site), on every route, before anything else runs."""

    def __init__(self, app, policy: HostPolicy):
        self.app = app
        self.policy = policy

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        problem = None
        if not self.policy.host_ok(host):
            problem = (
                f"this server does not answer for the host name {_hostname(host)!r} (a DNS-rebinding guard); "
                "use 127.0.0.1 or localhost, or start the server with --allowed-host NAME"
            )
        elif "origin" in headers and not self.policy.origin_ok(headers["origin"], host):
            problem = (
                f"cross-site request refused: Origin {headers['origin']!r} is not this server; use the page "
                "this server serves at /, or start the server with --allowed-host NAME for that origin's host"
            )
        elif headers.get("sec-fetch-site") == "cross-site" and "origin" not in headers:
            problem = "cross-site request refused (Sec-Fetch-Site: cross-site)"
        if problem is None:
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope.get("path", "").startswith(("/v1/chat/", "/v1/models")):  # the OpenAI routes' error shape
            error = {"message": problem, "type": "permission_error", "param": None, "code": None}
            body = json.dumps({"error": error}).encode()
        else:
            body = json.dumps({"detail": problem}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 403,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


# ---- per-session request rate ---------------------------------------------------------------------------
SESSION_PATH = re.compile(r"^/v1/sessions/([0-9a-f]{12})(?:/|$)")


@dataclass
class _Bucket:
    tokens: float
    t: float


class RateLimitMiddleware:
    """Pure ASGI: a token bucket per session (`--max-session-rps` requests a second, bursts of twice that).

    A request to a session's routes (reads excepted: status, timeline, thumbnails) takes one token; one the
    server refuses for a limit (413, 415, 422) takes `refusal_cost` more once answered, so a client that keeps
    sending requests over the limits is slowed to a trickle while an honest one never notices. A request
    without a token waits (asleep, costing nothing) until the bucket has one again; past `max_wait` seconds of
    debt it is answered 429 with Retry-After, after a second's pause (a client that ignores Retry-After cannot
    flood the server with refusals). Requests that do not carry the server's token are not counted (they get
    401 inside), so no one without it can slow a session down. Buckets are kept for at most `max_buckets`
    sessions (oldest dropped).
    """

    def __init__(
        self, app, limits: Limits, token: str | None, max_wait: float = 30.0, max_buckets: int = 4096
    ):
        self.app = app
        self.rate = float(limits.max_session_rps)
        self.capacity = 2.0 * self.rate
        self.cost = float(limits.refusal_cost)
        self.token = token
        self._token = token.encode() if token is not None else b""
        self.max_wait = max_wait
        self.max_buckets = max_buckets
        self.buckets: dict[str, _Bucket] = {}

    def _authorized(self, scope) -> bool:
        if self.token is None:
            return True
        for k, v in scope.get("headers", []):
            if k.lower() == b"authorization":  # bytes: a non-ASCII token is a wrong one (401), not a 500
                scheme, _, given = v.partition(b" ")
                return scheme.lower() == b"bearer" and secrets.compare_digest(given.strip(), self._token)
        return False

    def _bucket(self, sid: str, now: float) -> _Bucket:
        b = self.buckets.pop(sid, None)  # re-inserted: the dict's order is least recently used first
        if b is None:
            b = _Bucket(self.capacity, now)
            while len(self.buckets) >= self.max_buckets:
                self.buckets.pop(next(iter(self.buckets)))
        self.buckets[sid] = b
        b.tokens = min(self.capacity, b.tokens + (now - b.t) * self.rate)
        b.t = now
        return b

    async def __call__(self, scope, receive, send):
        writes = scope["type"] == "http" and scope.get("method") not in ("GET", "HEAD")  # reads are cheap
        match = SESSION_PATH.match(scope.get("path", "")) if writes else None
        if match is None or not self._authorized(scope):
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        b = self._bucket(match.group(1), loop.time())
        wait = (1.0 - b.tokens) / self.rate if b.tokens < 1.0 else 0.0
        if wait > self.max_wait:
            await asyncio.sleep(1.0)
            body = json.dumps(
                {
                    "detail": f"too many requests to session {match.group(1)} (over {self.rate:g} a second, "
                    "requests refused for a limit count as more): retry later, or start the server with a "
                    "larger --max-session-rps"
                }
            ).encode()
            retry = str(max(1, math.ceil(wait - self.max_wait)))
            headers = [(b"content-type", b"application/json"), (b"retry-after", retry.encode())]
            await send({"type": "http.response.start", "status": 429, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        b.tokens -= 1.0
        if wait > 0:
            await asyncio.sleep(wait)
        status = 0

        async def watch(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            if status in (413, 415, 422):
                b.tokens -= self.cost


# ---- JSON bodies ----------------------------------------------------------------------------------------
async def read_json_body(request, max_bytes: int) -> tuple[bytes, object]:
    """Read a JSON body as it streams in, refusing past `max_bytes` (413) without holding more, then parse it
    off the event loop when it is large (`offload`). Non-JSON content types (forms, text/plain): 415."""
    ctype = request.headers.get("content-type")
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > max_bytes:
                raise _json_too_large(max_bytes, f"Content-Length {int(declared)}")
        except ValueError:
            raise BadRequest("the Content-Length header is not a number") from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _json_too_large(max_bytes, f"over {size} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body:
        if ctype is not None and not _is_json(ctype):
            raise _not_json(ctype)
        return body, None
    if ctype is None or not _is_json(ctype):
        raise _not_json(ctype)
    try:  # a small body inline (fast), a large one in the heavy-work lane, one at a time
        parsed = json.loads(body) if len(body) <= INLINE_BYTES else await offload(json.loads, body)
    except (ValueError, RecursionError) as e:
        raise BadRequest(f"the body is not valid JSON: {str(e)[:200]}") from None
    return body, parsed


def _is_json(ctype: str) -> bool:
    main = ctype.split(";", 1)[0].strip().lower()
    return main == "application/json" or (main.startswith("application/") and main.endswith("+json"))


def _not_json(ctype: str | None) -> ServiceError:
    return UnsupportedMedia(
        f"this route takes a JSON body with Content-Type: application/json; got {ctype or 'no Content-Type'}"
    )


def _json_too_large(max_bytes: int, got: str) -> ServiceError:
    return TooLarge(
        f"the JSON body ({got}) is over this server's limit of {max_bytes / 2**20:.1f} MiB; send fewer "
        "frames per request, upload a video, or start the server with a larger --max-json-mb"
    )


def clean_stale(folder: Path, pattern: str = ".*.saving-*") -> list[Path]:
    """Remove temporary folders a killed save left behind (`.<name>.saving-<pid>`)."""
    import shutil

    gone = []
    if folder.exists():
        for p in folder.glob(pattern):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            gone.append(p)
    return gone


_REPR = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>")


def no_reprs(text: str) -> str:
    """`text` without Python object reprs (`<_io.BytesIO object at 0x...>`): an error names what was sent."""
    return _REPR.sub("", text)


def scrub(text: str, *roots: str | os.PathLike | None) -> str:
    """`text` with the server's absolute folders replaced by placeholders and without Python object reprs
    (errors never show either)."""
    text = no_reprs(text)
    for root in roots:
        if not root:
            continue
        for form in {str(root), str(Path(root).resolve())}:
            if len(form) > 1:
                text = text.replace(form, "<server>")
    return text
