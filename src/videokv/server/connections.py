"""Connections: clients that go away, and clients that stall.

`Watch` listens for a request's client disconnecting while the server works on it (an answer, a chat's
ingest); the work checks `watch.check()` between its steps and stops there (`ClientGone`), so a client that
hung up costs at most one more step of model time.

`timed_h11(read_timeout)` is uvicorn's h11 protocol with a read timeout: a connection must send a request's
headers within `read_timeout` seconds of starting it (or of opening the connection), and may not stay silent
for `read_timeout` seconds in the middle of a request's body; past either it is closed. An idle keep-alive
connection is closed by uvicorn's own `timeout_keep_alive`. A request the server is working on (its body
all received) has no timeout: the client is waiting for the server then, not the other way round.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

import h11
from starlette.requests import Request
from uvicorn.protocols.http.h11_impl import H11Protocol

from videokv.server.sessions import ServiceError

DEFAULT_READ_TIMEOUT_S = 30.0
DEFAULT_KEEP_ALIVE_S = 5.0


class ClientGone(ServiceError):
    """The client closed its connection before the answer was done; the work stopped (nginx's 499: nobody
    reads this answer)."""

    status = 499


class Watch:
    """Listens (from the event loop) for `request`'s client disconnecting; `gone` and `check()` may be read
    from any thread. Use it as an async context manager, or call `close()` when the work is done."""

    def __init__(self, request: Request) -> None:
        self._gone = threading.Event()
        self._task = asyncio.ensure_future(self._listen(request))

    async def _listen(self, request: Request) -> None:
        while True:  # the body was read already: the next message is the disconnect
            message = await request.receive()
            if message["type"] == "http.disconnect":
                self._gone.set()
                return

    @property
    def gone(self) -> bool:
        return self._gone.is_set()

    def check(self) -> None:
        """Raise ClientGone if the client has disconnected."""
        if self._gone.is_set():
            raise ClientGone("the client closed the connection; the work for it was stopped")

    def close(self) -> None:
        self._task.cancel()

    async def __aenter__(self) -> Watch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class _TimedH11(H11Protocol):
    """uvicorn's h11 protocol, closing connections that stall while the server waits for them."""

    read_timeout = DEFAULT_READ_TIMEOUT_S

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._read_timer: asyncio.TimerHandle | None = None
        self._phase: object = None
        super().connection_made(transport)
        self._rearm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._rearm(data=True)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._rearm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    # ---- the read timer ----------------------------------------------------------------------------------
    def _waiting_for_client(self) -> object:
        """h11.IDLE while a request's headers are awaited, h11.SEND_BODY while its body is; None otherwise."""
        if self.transport.is_closing():
            return None
        state = self.conn.their_state
        return state if state in (h11.IDLE, h11.SEND_BODY) else None

    def _rearm(self, data: bool = False) -> None:
        """Headers: one deadline from the start of the request (a slow sender gains nothing by trickling).
        Body: a deadline from the last bytes received."""
        phase = self._waiting_for_client()
        if phase is None:
            self._disarm()
        elif phase is not self._phase or self._read_timer is None or (data and phase is h11.SEND_BODY):
            self._disarm()
            self._read_timer = self.loop.call_later(self.read_timeout, self._timed_out)
        self._phase = phase

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _timed_out(self) -> None:
        self._read_timer = None
        if self._waiting_for_client() is None:
            return
        if self.flow.read_paused:  # the server is not reading (its buffer is full): not the client's fault
            self._read_timer = self.loop.call_later(self.read_timeout, self._timed_out)
            return
        self.logger.info("videokv: closed a connection that sent nothing for %.0f s", self.read_timeout)
        self.transport.close()


def timed_h11(read_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol class with this read timeout (for `uvicorn.run(http=...)`)."""
    if not read_timeout > 0:
        raise ValueError(f"the read timeout must be > 0 seconds; got {read_timeout}")
    return type("TimedH11Protocol", (_TimedH11,), {"read_timeout": float(read_timeout)})


__all__ = ["ClientGone", "Watch", "timed_h11", "DEFAULT_READ_TIMEOUT_S", "DEFAULT_KEEP_ALIVE_S"]
