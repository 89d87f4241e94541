"""The ingress of `videokv serve --ray`: session affinity in front of the replicas.

Ray Serve's HTTP proxy hands every request to this router (a Serve deployment with a FastAPI catch-all
route), which forwards it, streamed both ways (uploads in, server-sent events out), to one replica's private
port (ray_replica.py), headers (the token, Host, Origin) and all, so a replica answers exactly as the
single-process service would. Where a request goes:

- a session's routes (`/v1/sessions/{id}/...`, a chat completion naming `session`): the replica that holds
  the session (the registry's `lookup`). While the session is moving (its replica died, or it is being moved
  for balance) the request waits up to `HOLD_S`, then gets 503 with Retry-After; a request cut by its
  replica's death gets the same 503 (an ingest is all-or-nothing, so a retry never doubles it); never an
  answer from a replica that does not hold the session; a streamed answer (server-sent events) cut by its
  replica's death is passed on in whole events only and ends with a retryable error event in its route's
  format (`event: error` with `retryable`, or an OpenAI error object and `[DONE]`);
- a new session (`POST /v1/sessions`, a snapshot restore, a chat completion without a session): the
  least-loaded replica with room (sessions held, resident bytes), or 429 when none has room;
- `GET /v1/sessions`: every replica's sessions, merged; `GET /v1/health`: one replica's answer with the
  cluster's session count;
- `GET /v1/cluster` (replicas, their sessions, failovers) and `POST /v1/sessions/{id}/move` are the router's
  own;
- anything else (the web page, /static, /docs, /openapi.json, presets, snapshots): any live replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import time
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from videokv.server.ray_registry import get_registry

HOLD_S = 20.0  # a request for a moving session waits this long before a 503
RETRY_AFTER_S = 2
HOP_HEADERS = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
}
SESSION_PATH = re.compile(r"^/v1/sessions/([^/]+)(/.*)?$")
RESTORE_PATH = re.compile(r"^/v1/snapshots/[^/]+/restore$")
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


class Unavailable(Exception):
    """No replica could take the request now: 503 with Retry-After."""


def _sse_error(path: str, detail: str) -> bytes:
    """A retryable error as the last server-sent event of `path`'s stream."""
    if path.endswith("/chat/completions"):
        error = {"message": detail, "type": "server_error", "param": None, "code": "replica_failed"}
        return b"data: " + json.dumps({"error": error}).encode() + b"\n\ndata: [DONE]\n\n"
    data = {"detail": detail, "retryable": True, "retry_after": RETRY_AFTER_S}
    return f"event: error\ndata: {json.dumps(data)}\n\n".encode()


def _unavailable(detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})


class Router:
    """The router's body (ray_serve.py makes it a Serve ingress deployment). options: as ReplicaServer's."""

    def __init__(self, options: dict, replicas: object = None):
        self.options = options
        self.token: str | None = options.get("token")
        self.max_json = int(options.get("limits", {}).get("max_json_mb", 16.0) * 2**20)
        self.registry = get_registry(options)
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(None, connect=5.0),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        )

    # ---- the entry point -----------------------------------------------------------------------------
    async def handle(self, request: Request) -> Response:
        path, method = request.url.path, request.method
        try:
            if path == "/v1/sessions" and method == "POST":
                return await self._create(request)
            if path == "/v1/sessions" and method == "GET":
                return await self._list(request)
            if path == "/v1/cluster" and method == "GET":
                return await self._cluster(request)
            if path == "/v1/health" and method == "GET":
                return await self._health(request)
            if method == "POST" and RESTORE_PATH.match(path):
                return await self._create(request)
            if path == "/v1/chat/completions" and method == "POST":
                return await self._chat(request)
            match = SESSION_PATH.match(path)
            if match is not None:
                if method == "POST" and match.group(2) == "/move":
                    return await self._move(request, match.group(1))
                return await self._to_session(request, match.group(1))
            return await self._to_any(request)
        except Unavailable as e:
            return _unavailable(str(e))

    # ---- forwarding ---------------------------------------------------------------------------------
    def _build(self, base: str, request: Request, body: bytes | None) -> httpx.Request:
        headers = [(k, v) for k, v in request.headers.raw if k.decode("latin-1").lower() not in HOP_HEADERS]
        url = base + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        content = body if body is not None else request.stream()
        return self.client.build_request(request.method, url, headers=headers, content=content)

    def _stream(self, resp: httpx.Response, on_close=None, replica: str | None = None) -> StreamingResponse:
        headers = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_HEADERS}

        async def close() -> None:
            await resp.aclose()
            if on_close is not None:
                await on_close()

        body = resp.aiter_raw()
        if resp.headers.get("content-type", "").startswith("text/event-stream"):
            body = self._events(resp, replica)
        return StreamingResponse(
            body, status_code=resp.status_code, headers=headers, background=BackgroundTask(close)
        )

    async def _events(self, resp: httpx.Response, replica: str | None) -> AsyncIterator[bytes]:
        """A replica's server-sent events, passed on whole: if the replica dies mid-answer, the events cut
        short are dropped and the stream ends with a retryable error event in the route's own format (the
        videokv `error` event, or an OpenAI error object and `[DONE]`), never a truncated event."""
        pending = b""
        try:
            async for chunk in resp.aiter_raw():
                pending += chunk
                end = pending.rfind(b"\n\n")
                if end >= 0:
                    yield pending[: end + 2]
                    pending = pending[end + 2 :]
        except (httpx.TransportError, RuntimeError) as e:
            if replica is not None:
                await self.registry.suspect.remote(replica)
            detail = (
                f"the replica answering this question failed mid-answer ({type(e).__name__}); the session is "
                "being restored on another replica: ask again (questions change no memory)"
            )
            yield _sse_error(resp.request.url.path, detail)
            return
        if pending:
            yield pending

    async def _send(self, base: str, request: Request, body: bytes | None) -> httpx.Response:
        return await self.client.send(self._build(base, request, body), stream=True)

    async def _read(self, resp: httpx.Response) -> tuple[bytes, dict]:
        data = await resp.aread()
        await resp.aclose()
        headers = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_HEADERS}
        return data, headers

    async def _to_any(self, request: Request, body: bytes | None = None) -> Response:
        """Forward to the first live replica that answers."""
        if body is None and request.method in ("POST", "PUT", "PATCH"):
            body = await request.body()  # replayable on the next replica if one is down
        for r in await self.registry.live.remote():
            try:
                return self._stream(await self._send(r["url"], request, body), replica=r["id"])
            except httpx.ConnectError:
                await self.registry.suspect.remote(r["id"])
        raise Unavailable("no replica of this videokv cluster is up yet; retry in a moment")

    async def _to_session(self, request: Request, sid: str, body: bytes | None = None) -> Response:
        deadline = time.monotonic() + HOLD_S
        # reads and questions change no memory: replayed on the session's next replica if its replica dies
        replay = request.method in ("GET", "HEAD") or request.url.path.endswith("/ask")
        if replay and body is None:
            body = await request.body()
        while True:
            where = await self.registry.lookup.remote(sid)
            if where["state"] == "unknown":
                return await self._to_any(request, body)  # the replica answers 404 as one process does
            if where["state"] == "active":
                try:
                    resp = await self._send(where["url"], request, body)
                except httpx.ConnectError:  # nothing was sent: the replica is gone; wait for the move
                    await self.registry.suspect.remote(where["id"])
                except (httpx.TransportError, RuntimeError) as e:  # cut mid-request (or the body was read)
                    await self.registry.suspect.remote(where["id"])
                    if replay and time.monotonic() < deadline:
                        await asyncio.sleep(0.1)
                        continue
                    raise Unavailable(
                        f"the replica holding session {sid} failed during this request ({type(e).__name__}); "
                        "the session is being restored on another replica: retry (an ingest is "
                        "all-or-nothing, so a retry does not double it)"
                    ) from None
                else:
                    on_close = None
                    if request.method == "DELETE" and resp.status_code == 204:

                        async def on_close() -> None:
                            await self.registry.forget.remote(sid)

                    return self._stream(resp, on_close, where["id"])
            if time.monotonic() > deadline:
                raise Unavailable(f"session {sid} is moving to another replica; retry in a moment")
            await asyncio.sleep(0.1)

    # ---- new sessions ---------------------------------------------------------------------------------
    def _authorized(self, request: Request) -> bool:
        if self.token is None:
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and secrets.compare_digest(
            given.strip().encode(), self.token.encode()
        )

    def _no_room(self) -> JSONResponse:
        return JSONResponse(
            {
                "detail": "no replica of this videokv cluster has room for another session (each holds at "
                f"most {self.options['max_sessions']} sessions"
                + (
                    f" and {self.options['replica_bytes'] / 2**20:g} MiB of resident KV memory"
                    if self.options.get("replica_bytes")
                    else ""
                )
                + "); delete a session (DELETE /v1/sessions/{id}) or add replicas (--replicas)"
            },
            status_code=429,
        )

    async def _create(self, request: Request) -> Response:
        """A new session (or a restored snapshot) on the least-loaded replica with room."""
        body = await request.body()
        target = await self.registry.pick.remote()
        if target is None:
            if not self._authorized(request):
                return await self._to_any(request, body)  # 401 from the replica, as on one process
            return self._no_room()
        try:
            try:
                resp = await self._send(target["url"], request, body)
            except httpx.TransportError:
                await self.registry.suspect.remote(target["id"])
                raise Unavailable("the replica chosen for the new session failed; retry") from None
            data, headers = await self._read(resp)
            if resp.status_code == 201:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    await self.registry.assign.remote(json.loads(data)["id"], target["id"])
            return Response(data, status_code=resp.status_code, headers=headers)
        finally:
            await self.registry.unpick.remote(target["id"])

    async def _chat(self, request: Request) -> Response:
        """A chat completion: to its session's replica, or to the least-loaded one (which may create a
        session: its id comes back in the X-Videokv-Session header)."""
        body = await request.body()
        sid = None
        if len(body) <= self.max_json:
            with contextlib.suppress(ValueError, AttributeError, TypeError):
                sid = json.loads(body).get("session")
        if isinstance(sid, str) and sid:
            return await self._to_session(request, sid, body)
        target = await self.registry.pick.remote()
        if target is None:
            return await self._to_any(request, body)
        try:
            resp = await self._send(target["url"], request, body)
        except httpx.TransportError:
            await self.registry.unpick.remote(target["id"])
            await self.registry.suspect.remote(target["id"])
            raise Unavailable("the replica chosen for this chat failed; retry") from None
        created = resp.headers.get("x-videokv-session")
        if created:
            await self.registry.assign.remote(created, target["id"])
        else:
            await self.registry.unpick.remote(target["id"])
        return self._stream(resp, replica=target["id"])

    # ---- the cluster's own views ----------------------------------------------------------------------
    async def _list(self, request: Request) -> Response:
        """Every replica's sessions, by creation time (a replica that refuses, e.g. 401, answers for all)."""
        merged: list[dict] = []
        replicas = await self.registry.live.remote()
        if not replicas:
            raise Unavailable("no replica of this videokv cluster is up yet; retry in a moment")
        for r in replicas:
            try:
                resp = await self._send(r["url"], request, b"")
                data, headers = await self._read(resp)
            except httpx.TransportError:
                await self.registry.suspect.remote(r["id"])
                continue
            if resp.status_code != 200:
                return Response(data, status_code=resp.status_code, headers=headers)
            merged.extend(json.loads(data))
        merged.sort(key=lambda s: s.get("created", 0.0))
        return JSONResponse(merged)

    async def _health(self, request: Request) -> Response:
        for r in await self.registry.live.remote():
            try:
                resp = await self._send(r["url"], request, b"")
            except httpx.TransportError:
                continue
            data, headers = await self._read(resp)
            if resp.status_code != 200:
                return Response(data, status_code=resp.status_code, headers=headers)
            out = json.loads(data)
            cluster = await self.registry.cluster.remote()
            out["sessions"] = sum(len(x["sessions"]) for x in cluster["replicas"]) + len(cluster["moving"])
            return JSONResponse(out)
        raise Unavailable("no replica of this videokv cluster is up yet; retry in a moment")

    def _unauthorized(self) -> JSONResponse:
        return JSONResponse(
            {"detail": "this server needs a token: send the header 'Authorization: Bearer <token>'"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )

    async def _cluster(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._unauthorized()
        return JSONResponse(await self.registry.cluster.remote())

    async def _move(self, request: Request, sid: str) -> Response:
        """Move a session to another replica (`?to=REPLICA_ID`, default the least loaded): the path of a
        failover, taken on purpose."""
        if not self._authorized(request):
            return self._unauthorized()
        result = await self.registry.move.remote(sid, request.query_params.get("to"))
        return JSONResponse(result, status_code=200 if result.get("moved") else 409)


def ingress_app() -> FastAPI:
    """The router's FastAPI app: one catch-all route (the replicas serve /docs and /openapi.json)."""
    return FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
