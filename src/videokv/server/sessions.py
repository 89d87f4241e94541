"""The session manager: the service's sessions on one shared model, their ingest, questions and snapshots.

Every model call is a job on the fair scheduler (one worker thread). An ingest is cut into chunks of
`chunk_frames` frames; each chunk is one job that runs all-or-nothing inside `engine.transaction()`: ingest,
close the open memory unit, check the session's byte budget, and commit to the session's journal. An
ingest made of several chunks (an upload, a batch of pushed frames) is itself all-or-nothing: an outer
transaction spans its chunks, and a failure in any chunk restores the memory (and rewinds the journal) to
where it was before the request. A live source commits chunk by chunk.

Storage (`store`: the data folder by default, or an S3-compatible object store, `s3://BUCKET/PREFIX`):
`sessions/<id>/journal/` (see journal.py: the commit protocol, the same on every backend),
`sessions/<id>/owner` (which server may write the journal), and `snapshots/<name>/` (named full saves,
persist.py's format). On the local disk (`data_dir`, never shared): `sessions/<id>/thumbs/`,
`sessions/<id>/spill/` (blocks over the byte budget), `sessions/<id>/uploads/` (while an upload is
ingested) and `cache/` (a bounded cache of the object store's immutable objects).

A session whose stored journal fails verification (a checksum, a missing object, a malformed record) is
*quarantined*: listed with its reason (`quarantined`), logged, kept in storage, never served and never
deleted; it never stops the server from starting. With `lease_s` (servers that share an object store and no
registry), each server holds its sessions under a lease it renews; a session whose holder's lease ran out
(the holder died) is adopted by the next server asked for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from videokv.api import (
    SAVE_MANIFEST,
    Frame,
    GenerationOptions,
    SaveError,
    Session,
    VideoQA,
    kv_memory,
    saved_session_info,
)
from videokv.config import MemoryConfig
from videokv.errors import (
    ConfigError,
    CorruptData,
    InputError,
    StorageError,
    StorageUnavailable,
    VideoKVError,
)
from videokv.journal import Journal
from videokv.presets import DEFAULT_PRESET, resolve_memory
from videokv.server.live import FinishedSource, Item, LiveSource, chunked, is_live
from videokv.server.scheduler import Scheduler
from videokv.server.thumbnails import Thumbnails
from videokv.storage import Backend, Missing, open_backend
from videokv.video.subtitles import TextEvent

log = logging.getLogger("videokv.server")

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
RESERVED_MEMORY_KEYS = ("spill_dir", "device_bytes", "host_bytes")
MOVED_GRACE_S = 10.0
OWNER = "owner"  # sessions/<id>/owner: which server may write the session's journal
DELETED = "deleted"  # sessions/<id>/deleted: a deletion under way (finished at the next start)
#: A question's prompt is prefilled in forwards of at most this many tokens, the scheduler running other
#: sessions' work between them (a 2000-character question was one unsliced forward); shorter ones: one.
PREFILL_CHUNK_TOKENS = 128


# ---- errors with an HTTP status ---------------------------------------------------------------------------
class ServiceError(VideoKVError):
    """An error the API answers with `status` and this message."""

    status = 400


class BadRequest(ServiceError, InputError):
    status = 400


class NotFound(ServiceError):
    status = 404


class Conflict(ServiceError):
    status = 409


class TooLarge(ServiceError):
    status = 413


class NotAVideo(ServiceError):
    status = 415


class TooMany(ServiceError):
    status = 429


class OverBudget(TooMany):
    """An ingest would take a session's resident memory over its byte budget."""


class SessionGone(ServiceError):
    status = 404


class SessionMoved(ServiceError):
    """The session left this process (handed to another replica): retry, and the request reaches it there."""

    status = 503
    retry_after = 1


def gone(m: Managed) -> ServiceError:
    """The error for work on a session this process no longer holds: deleted (404) or moved away (503)."""
    if m.moved:
        return SessionMoved(f"session {m.id} is moving to another replica; retry in a moment")
    return SessionGone(f"session {m.id} was deleted")


def answer_steps(steps: Iterator, check: Callable[[], None]) -> Iterator[None]:
    """Drive an answer's `ask_steps` generator one step per scheduler slice, calling `check` before each
    step (it raises to stop the answer there: its client has gone, its session was deleted); returns the
    answer as a dict. The answer's generator is closed however it ends."""
    try:
        while True:
            check()
            try:
                next(steps)
            except StopIteration as done:
                return done.value.to_dict()
            yield
    finally:
        steps.close()


# ---- one session ------------------------------------------------------------------------------------------
@dataclass
class Managed:
    """A session of the service: the engine session and everything the service keeps beside it."""

    id: str
    session: Session
    folder: Path
    journal: Journal
    thumbs: Thumbnails
    memory: str
    name: str | None = None
    created: float = field(default_factory=time.time)
    budget: int | None = None
    source: LiveSource | FinishedSource | None = None
    error: str | None = None
    busy: int = 0  # request ingests in progress
    ingest_fps: float = 0.0
    stats: dict = field(default_factory=dict)  # engine.memory_stats() after the last job
    spans: list[dict] = field(default_factory=list)  # the timeline after the last job
    deleted: bool = False  # gone from this process: deleted, or handed to another (`moved`)
    moved: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one request ingest at a time
    outer: contextlib.ExitStack | None = None  # the transaction of a multi-chunk request ingest
    outer_clock: float = 0.0
    resume: dict | None = None  # the live source to resume after a restart (from the journal)
    idle_expiry: float | None = None  # seconds without a request after which the server deletes it
    last_used: float = field(default_factory=time.time)  # unix time of the last request that touched it
    asking: int = 0  # questions in progress

    @property
    def fps(self) -> float:
        return self.session.fps

    @property
    def state(self) -> str:
        if self.source is not None and self.source.running:
            return "live"
        if self.busy:
            return "ingesting"
        return "error" if self.error else "idle"

    def info(self) -> dict:
        """The session's own fields, kept in its journal."""
        return {
            "id": self.id,
            "name": self.name,
            "memory": self.memory,
            "created": self.created,
            "budget": self.budget,
            "source": self.source.spec() if self.source is not None else None,
            "idle_expiry": self.idle_expiry,
        }

    @property
    def expires_at(self) -> float | None:
        """Unix time the session is deleted at if no request touches it before (None: never)."""
        return None if self.idle_expiry is None else self.last_used + self.idle_expiry

    def touch(self) -> None:
        self.last_used = time.time()

    @property
    def in_use(self) -> bool:
        """Ingesting, asking or fed by a running live source: never expired while so."""
        live = self.source is not None and self.source.running
        return bool(self.busy or self.asking or live or self.lock.locked())

    def status(self) -> dict:
        s = self.stats
        tiers = s.get("bytes_by_tier") or {"host": s.get("memory_bytes", 0)}
        return {
            "id": self.id,
            "name": self.name,
            "memory": self.memory,
            "fps": self.fps,
            "state": self.state,
            "clock": float(s.get("stream_seconds", 0.0)),
            "frames": int(s.get("frames", 0)),
            "blocks": int(s.get("blocks", 0)),
            "memory_tokens": int(s.get("memory_tokens", 0)),
            "memory_bytes": int(s.get("memory_bytes", 0)),
            "offloaded_bytes": int(s.get("offloaded_bytes", 0)),
            "bytes_by_tier": {k: int(v) for k, v in tiers.items()},
            "budget_bytes": self.budget,
            "ingest_fps": round(self.ingest_fps, 3),
            "source": self.source.describe() if self.source is not None else None,
            "error": self.error,
            "created": self.created,
            "idle_expiry_s": self.idle_expiry,
            "expires_at": self.expires_at,
            "kv": kv_memory(s) if s else None,
        }


def frames_from_request(images: list[bytes] | None, raw: bytes | None, shape: list[int] | None) -> np.ndarray:
    """Pushed frames as uint8 [T, H, W, 3]: decoded images, or raw bytes of the given shape."""
    from PIL import Image, UnidentifiedImageError

    if (images is None) == (raw is None):
        raise BadRequest('send either "images" (base64 JPEG/PNG) or "raw" with "shape" [T, H, W, 3]')
    if images is not None:
        if not images:
            raise BadRequest('"images" is empty: send at least one base64 JPEG/PNG image')
        arrays = []
        for i, data in enumerate(images):
            try:
                with Image.open(io.BytesIO(data)) as img:
                    arrays.append(np.asarray(img.convert("RGB")))
            except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as e:
                raise BadRequest(f"image {i} is not a JPEG/PNG image: {e}") from e
        sizes = {a.shape for a in arrays}
        if len(sizes) > 1:
            raise BadRequest(
                f"all images must have the same size; got {sorted(sizes)} (expected shape [T, H, W, 3] "
                f"with one H, W)"
            )
        return check_frame_size(np.stack(arrays))
    if shape is None or len(shape) != 4 or shape[3] != 3 or any(d < 1 for d in shape):
        raise BadRequest(f'"shape" must be [T, H, W, 3] with positive sizes (RGB); got {shape}')
    t, h, w, c = shape
    if h * w > 4096 * 4096:
        raise BadRequest(f"frames of {h}x{w} pixels are too large (at most 4096x4096)")
    if t > 4096:
        raise BadRequest(f"at most 4096 frames per request; got {t}")
    expected = t * h * w * c
    if len(raw) != expected:
        raise BadRequest(
            f'"raw" has {len(raw)} bytes but shape {shape} needs {expected} (= T*H*W*3 uint8 RGB); '
            f"send frames of the expected shape [T, H, W, 3] = {shape}"
        )
    return check_frame_size(np.frombuffer(raw, dtype=np.uint8).reshape(t, h, w, c))


def check_frame_size(frames: np.ndarray) -> np.ndarray:
    """Refuse frames no video-LLM's processor takes: an aspect ratio over 100 (Qwen2-VL's limit is 200)."""
    h, w = frames.shape[1:3]
    if max(h, w) > 100 * min(h, w):
        raise BadRequest(f"frames of {h}x{w} pixels are too thin: the aspect ratio must be at most 100")
    return frames


def _hide_reserved(message: str) -> str:
    """A config error without the server's own keys in its list of valid ones."""
    for key in RESERVED_MEMORY_KEYS:
        message = re.sub(
            rf"(, )?\b{key}\b(, )?", lambda m: ", " if m.group(1) and m.group(2) else "", message
        )
    return message


# ---- the manager --------------------------------------------------------------------------------------
class SessionManager:
    """All sessions of the service, on one VideoQA, with their model work on one fair scheduler."""

    def __init__(
        self,
        qa: VideoQA,
        data_dir: str | Path,
        scheduler: Scheduler | None = None,
        max_sessions: int = 16,
        session_bytes: int | None = None,
        chunk_frames: int = 8,
        limits=None,
        store: str | None = None,
        endpoint: str | None = None,
        lease_s: float | None = None,
        cache_bytes: int | None = None,
    ):
        from videokv.server.limits import Limits, clean_stale

        if session_bytes is not None and session_bytes < 1:
            raise ConfigError(f"session_bytes must be a positive number of bytes; got {session_bytes}")
        self.qa = qa
        self.data_dir = Path(data_dir)
        self.sessions_dir = self.data_dir / "sessions"
        self.snapshots_dir = self.data_dir / "snapshots"
        self.sessions_dir.mkdir(parents=True, exist_ok=True)
        self.snapshots_dir.mkdir(parents=True, exist_ok=True)
        # where journals and snapshots live: the data folder itself, or an object store (with a local cache)
        self.store: Backend = open_backend(
            store or self.data_dir, endpoint, cache_dir=self.data_dir / "cache", cache_bytes=cache_bytes
        )
        self.store_url = store
        self.quarantined: dict[str, dict] = {}  # session id -> {"session", "reason", "since"}
        self.server_id = self._server_id()
        self.lease_s = lease_s
        self.renewed_at = time.monotonic()
        self._lease_thread: threading.Thread | None = None
        self._lease_lock = threading.Lock()
        self.limits = limits or Limits()
        for stale in clean_stale(self.snapshots_dir):  # a save a kill interrupted
            log.warning("videokv: removed the unfinished save %s", stale.name)
        self.scheduler = scheduler or Scheduler()
        self.max_sessions = max_sessions
        self.session_bytes = session_bytes
        self.chunk_frames = chunk_frames
        self.sessions: dict[str, Managed] = {}
        # sessions released to another process (release) -> when: a request that was routed here just before
        # the move gets a retryable 503 for MOVED_GRACE_S, not a 404
        self.moved_away: dict[str, float] = {}
        self._lock = threading.Lock()
        self.closing = False

    def _server_id(self) -> str:
        """This server's name as a lease holder: kept in its data folder, so that the same server restarted
        (after a crash too) takes its own sessions back at once instead of waiting for their leases."""
        path = self.data_dir / "server-id"
        try:
            return path.read_text().strip() or secrets.token_hex(8)
        except FileNotFoundError:
            name = secrets.token_hex(8)
            tmp = path.with_name(f".server-id.{os.getpid()}.tmp")
            tmp.write_text(name)
            os.replace(tmp, path)
            return name

    # ---- memory configuration ------------------------------------------------------------------------
    def _config(self, memory: str | MemoryConfig, memory_set: list[str], folder: Path) -> MemoryConfig:
        for pair in memory_set:
            if pair.partition("=")[0].strip() in RESERVED_MEMORY_KEYS:
                raise BadRequest(
                    f"{pair!r}: {', '.join(RESERVED_MEMORY_KEYS)} are set by the server (--session-mb)"
                )
        try:
            config = resolve_memory(memory, memory_set or None)
            from videokv.server.limits import check_ingest_window

            check_ingest_window(self.limits, config, memory_set, self.qa.frame_tokens)
            return self._budgeted(config, folder)
        except (TypeError, ValueError) as e:
            if isinstance(e, InputError):
                raise BadRequest(_hide_reserved(str(e))) from e
            raise BadRequest(_hide_reserved(f"bad memory_set {memory_set}: {e}")) from e

    def _budgeted(self, config: MemoryConfig, folder: Path) -> MemoryConfig:
        """The config with the session's byte budget on its resident tiers and spill folder in `folder`."""
        budget = self.session_bytes
        spill = str(folder / "spill")
        if budget is None:
            return config.replace(spill_dir=spill)
        if self.qa.device.type == "cpu":
            return config.replace(host_bytes=budget, device_bytes=None, spill_dir=spill)
        half = max(1, budget // 2)
        return config.replace(device_bytes=half, host_bytes=max(1, budget - half), spill_dir=spill)

    def _check_budget(self, m: Managed) -> None:
        from videokv.server.limits import check_ingest_context

        stats = m.session.stats
        check_ingest_context(self.limits, stats)
        if m.budget is None:
            return
        used = stats["memory_bytes"]
        if used > m.budget:
            raise OverBudget(
                f"this ingest would take session {m.id}'s memory to {used / 2**20:.2f} MiB, over its budget "
                f"of {m.budget / 2**20:.2f} MiB; the {m.memory!r} preset keeps its memory resident and "
                "cannot spill to disk: use a preset with retrieval (e.g. rekv), a smaller window "
                "(memory_set window=N), or a larger --session-mb"
            )

    # ---- worker-side helpers (run on the scheduler's thread) ------------------------------------------
    def _refresh(self, m: Managed) -> None:
        m.stats = m.session.stats
        m.spans = m.session.timeline()

    def _commit(self, m: Managed) -> None:
        if m.deleted:
            raise gone(m)
        if self.lease_s is not None and time.monotonic() - self.renewed_at > 0.8 * self.lease_s:
            if not self.renew_leases() or m.deleted:
                raise StorageUnavailable(
                    f"session {m.id}'s lease in the store could not be renewed lately; retry in a moment"
                )
        m.journal.commit(m.session, m.info())

    def _step(self, m: Managed, items: list[Item], interval: float | None = None) -> int:
        """One chunk of ingest, all-or-nothing: ingest, close the unit, check the budget, commit."""
        if m.deleted:
            raise gone(m)
        session = m.session
        interval = 1.0 / m.fps if interval is None else interval
        frames = [it for it in items if isinstance(it, Frame)]
        t_start = time.perf_counter()
        try:
            with session.transaction():
                added = session.add_items(items, chunk_frames=max(1, len(frames)), frame_interval=interval)
                session.flush()
                self._check_budget(m)
                wall = time.perf_counter() - t_start
                try:  # thumbnails first: a kill before the commit leaves extra ones, removed on restart
                    for f in frames:
                        m.thumbs.add(f.t, f.image)
                    self._commit(m)
                except BaseException:
                    if frames:
                        m.thumbs.remove_after(frames[0].t)
                    raise
        except ConfigError as e:
            if m.budget is not None and "memory budget" in str(e):
                raise OverBudget(
                    f"session {m.id}'s byte budget ({m.budget} bytes) is smaller than one memory block: "
                    f"raise --session-mb or keep fewer tokens per frame ({e})"
                ) from e
            raise
        except (ValueError, TypeError) as e:  # the model's processor refused the input (InputErrors pass)
            if isinstance(e, InputError):
                raise
            raise BadRequest(f"the model cannot ingest this input: {e}") from e
        finally:
            self._refresh(m)
        if frames:
            m.ingest_fps = len(frames) / wall if wall > 0 else 0.0
        return added

    def _begin(self, m: Managed) -> None:
        stack = contextlib.ExitStack()
        stack.enter_context(m.session.transaction())
        m.journal.begin()
        m.outer = stack
        m.outer_clock = m.session.clock

    def _end(self, m: Managed, error: BaseException | None) -> None:
        """Close a request ingest's outer transaction: keep it, or roll the memory, journal and thumbnails
        back to where they were before the request."""
        stack, m.outer = m.outer, None
        if stack is None:
            return
        if error is None:
            stack.close()
            m.journal.end()
            return
        try:
            stack.__exit__(type(error), error, error.__traceback__)
        finally:
            m.thumbs.remove_after(m.outer_clock)
            if not m.deleted:
                try:  # the journal back to the base (what memory now is); if storage refuses, the base
                    m.journal.rollback()  # stays stored (a crash recovers it) and the next commit fixes it
                except (StorageError, OSError) as e:
                    log.warning("videokv: session %s: the rollback is not stored yet (%s)", m.id, e)
            self._refresh(m)

    # ---- sessions -------------------------------------------------------------------------------------
    def _new_id(self) -> str:
        while True:
            sid = secrets.token_hex(6)
            taken = sid in self.sessions or sid in self.quarantined or (self.sessions_dir / sid).exists()
            if not taken and not self._journal(sid).exists():
                return sid

    def _journal(self, sid: str) -> Journal:
        return Journal(self.store.child(f"sessions/{sid}/journal"))

    def _remove(self, sid: str, folder: Path) -> None:
        """Delete a session's stored objects and local folder: a tombstone first, removed last, so that a
        crash in between leaves a deletion to finish (at the next start), never a half session."""
        store = self.store.child(f"sessions/{sid}")
        store.put(DELETED, b"")
        store.delete([k for k in store.list() if k != DELETED])
        shutil.rmtree(folder, ignore_errors=True)
        store.delete([DELETED])

    def _reserve(self) -> None:
        if len(self.sessions) >= self.max_sessions:
            raise TooMany(
                f"the server holds its maximum of {self.max_sessions} sessions; delete one "
                "(DELETE /v1/sessions/{id}) or start the server with a larger --max-sessions"
            )

    def _add(self, m: Managed) -> Managed:
        with self._lock:
            self._reserve()
            self.sessions[m.id] = m
        return m

    async def create(
        self,
        memory: str = DEFAULT_PRESET,
        memory_set: list[str] | None = None,
        fps: float = 1.0,
        name: str | None = None,
        system: str | None = None,
        idle_expiry: float | None = None,
    ) -> Managed:
        """A new session (system: its system prompt; default the VideoQA's; idle_expiry: seconds without a
        request after which `expire_idle` deletes it, None: kept until deleted)."""
        self._reserve()
        sid = self._new_id()
        folder = self.sessions_dir / sid
        config = self._config(memory, list(memory_set or []), folder)

        def build() -> Managed:
            session = self.qa.session(config, fps=fps, system=system or self.qa.system)
            m = Managed(
                sid,
                session,
                folder,
                self._journal(sid),
                Thumbnails(folder / "thumbs"),
                memory=config.name,
                name=name,
                budget=self.session_bytes,
                idle_expiry=idle_expiry,
            )
            self._start_journal(m)
            return m

        try:
            m = await self.scheduler.run(sid, build)
        except (ValueError, TypeError) as e:  # a memory_set the policies accept but cannot run with
            if isinstance(e, InputError):
                raise
            raise BadRequest(f"cannot start a session with memory {memory!r} {memory_set or []}: {e}") from e
        return self._add_or_remove(m)

    def _start_journal(self, m: Managed) -> None:
        """A new session's first commit (its prefix marked as a creation until then: a crash in between
        leaves a marker, not a session); on failure nothing of it stays."""
        try:
            m.folder.mkdir(parents=True)
            m.journal.mark_new()
            self._claim(m.id)
            self._commit(m)
        except BaseException:
            with contextlib.suppress(Exception):
                self._remove(m.id, m.folder)
            raise
        self._refresh(m)

    def _add_or_remove(self, m: Managed) -> Managed:
        """Hold a built session, or (no room) delete what building it stored and raise TooMany."""
        try:
            return self._add(m)
        except TooMany:
            with contextlib.suppress(Exception):
                self._remove(m.id, m.folder)
            raise

    def get(self, sid: str) -> Managed:
        m = self.sessions.get(sid) or self._adopt_on_request(sid)
        if m is None and time.monotonic() - self.moved_away.get(sid, -MOVED_GRACE_S) < MOVED_GRACE_S:
            raise SessionMoved(f"session {sid} is moving to another replica; retry in a moment")
        if m is None and sid in self.quarantined:
            raise Conflict(
                f"session {sid} is quarantined: {self.quarantined[sid]['reason']} (kept in storage, not "
                "served; see GET /v1/quarantine)"
            )
        if m is None:
            raise NotFound(f"no session {sid!r}; list the sessions with GET /v1/sessions")
        m.touch()
        return m

    def list(self) -> list[Managed]:
        return sorted(self.sessions.values(), key=lambda m: m.created)

    async def expire_idle(self, now: float | None = None) -> list[str]:
        """Delete the sessions whose idle expiry has passed (none in use); returns their ids."""
        now = time.time() if now is None else now
        gone_ids = []
        for m in list(self.sessions.values()):
            expires = m.expires_at
            if expires is None or expires > now or m.in_use or m.deleted:
                continue
            with contextlib.suppress(ServiceError):
                await self.delete(m.id)
                gone_ids.append(m.id)
                log.info("videokv: session %s expired after %.0f s idle", m.id, m.idle_expiry)
        return gone_ids

    async def delete(self, sid: str) -> None:
        m = self.get(sid)
        m.deleted = True
        self.sessions.pop(sid, None)
        if m.source is not None:
            m.source.stop()
        # its waiting requests end with the session's error (404), not a cancellation; a question in
        # progress stops at its next step (ask)
        self.scheduler.forget(sid, lambda: gone(m))
        # runs after the job in progress (one worker): nothing writes into the folder after this
        await self.scheduler.run(sid, self._remove, sid, m.folder)
        if m.source is not None:
            await asyncio.to_thread(m.source.join, 30)

    # ---- ingest ---------------------------------------------------------------------------------------
    def _check_free(self, m: Managed) -> None:
        if m.source is not None and m.source.running:
            raise Conflict(
                f"a live source ({m.source.url}) is ingesting into session {m.id}; stop it first "
                f"(DELETE /v1/sessions/{m.id}/source)"
            )

    async def ingest_chunks(
        self, m: Managed, make_chunks: Callable[[], Iterator[list[Item]]], interval: float | None = None
    ) -> int:
        """A request ingest (upload, pushed frames or text): `make_chunks()` (called once this request has
        the session's ingest lock, so it sees the stream clock its items follow) gives chunks, decoded off
        the event loop, each a scheduler job; all-or-nothing as a whole."""
        self._check_free(m)
        async with m.lock:
            self._check_free(m)
            m.busy += 1
            try:
                chunks = make_chunks()
                await self.scheduler.run(m.id, self._begin, m)
                added = 0
                error: BaseException | None = None
                try:
                    while True:
                        chunk = await asyncio.to_thread(next, chunks, None)
                        if chunk is None:
                            break
                        added += await self.scheduler.run(m.id, self._step, m, chunk, interval)
                except BaseException as e:
                    error = e
                await asyncio.shield(self.scheduler.run(m.id, self._end, m, error))
                if error is not None:
                    m.error = None if isinstance(error, InputError | ServiceError) else str(error)
                    raise error
                m.error = None
                return added
            finally:
                m.busy -= 1
                m.touch()

    def frame_chunks(
        self, m: Managed, frames: np.ndarray, timestamps: list[float] | None
    ) -> Iterator[list[Item]]:
        """Pushed frames as chunks, timestamps checked (default: the stream clock + 1/fps steps)."""
        from videokv.server.limits import check_time
        from videokv.video.frames import validate_frames

        ingested = m.session.frames_ingested
        clock = m.session.clock
        if timestamps is not None:
            prev = clock
            for i, t in enumerate(timestamps):  # finite, and no jump past the limit (before any work)
                check_time(self.limits, float(t), prev, f"timestamps[{i}]")
                prev = max(prev, float(t))
        start = clock if ingested else 0.0
        arr, ts = validate_frames(frames, timestamps, fps=m.fps, start=start)
        if len(ts) and ingested and ts[0] < clock - 1e-9:
            raise BadRequest(
                f"frame timestamps go back in time: the stream clock is at {clock:.3f}s, the "
                f"first new frame is at {ts[0]:.3f}s; send timestamps >= the clock or omit them"
            )
        if len(ts):
            check_time(
                self.limits, float(ts[-1]), clock + len(ts) * self.limits.max_time_jump, "the last frame"
            )
        return chunked((Frame(float(t), img) for t, img in zip(ts, arr)), self.chunk_frames)

    def text_items(self, m: Managed, events: list[dict]) -> list[TextEvent]:
        """Text events at their times: the clock by default. The rule for late text: an event timed up to
        `max_late_text` seconds before the clock is placed at the clock (its end kept if later); earlier
        than that it is refused (422). Times must be finite and within `max_time_jump` of the clock."""
        from videokv.server.limits import Unprocessable, check_time

        clock = m.session.clock
        limits = self.limits
        out = []
        for i, e in enumerate(events):
            start = clock if e.get("start") is None else float(e["start"])
            end = start if e.get("end") is None else float(e["end"])
            check_time(limits, start, clock, f"events[{i}].start")
            check_time(limits, end, max(start, clock), f"events[{i}].end")
            if end < start:
                raise Unprocessable(f"events[{i}] ends ({end:.3f} s) before it starts ({start:.3f} s)")
            if start < clock - 1e-9:
                if clock - start > limits.max_late_text:
                    raise Unprocessable(
                        f"events[{i}] starts at {start:.3f} s, {clock - start:.3f} s before the stream clock "
                        f"({clock:.3f} s): late text is placed at the clock only up to "
                        f"{limits.max_late_text:g} s late (--max-late-text); omit start"
                        " to place it at the clock"
                    )
                start, end = clock, max(end, clock)
            out.append(TextEvent(start, end, e["text"]))
        return sorted(out, key=lambda e: e.start)

    # ---- live sources -------------------------------------------------------------------------------
    def start_source(
        self,
        m: Managed,
        url: str,
        fps: float | None = None,
        realtime: bool = True,
        subtitles: str | None = None,
        offset: float | None = None,
        start: float = 0.0,
        resume_after: float | None = None,
        transcribe: str | bool | None = None,
    ) -> LiveSource:
        if m.source is not None and m.source.running:
            raise Conflict(
                f"session {m.id} already has a live source ({m.source.url}); stop it first "
                f"(DELETE /v1/sessions/{m.id}/source)"
            )
        if m.lock.locked():
            raise Conflict(f"session {m.id} is ingesting an upload; start the source when it is done")
        fps = m.fps if fps is None else float(fps)
        interval = 1.0 / fps

        def ingest(chunk: list[Item]) -> None:
            self.scheduler.call(m.id, self._step, m, chunk, interval)

        def on_end(source: LiveSource) -> None:
            if source.state == "error":
                m.error = f"live source {source.url}: {source.error}"
            if not m.deleted and not self.closing:  # at shutdown the journal keeps it "running": resumed
                with contextlib.suppress(Exception):  # record the source's end in the journal
                    self.scheduler.call(m.id, self._commit, m)

        source = LiveSource(
            url,
            ingest,
            fps=fps,
            realtime=realtime,
            subtitles=subtitles,
            offset=m.session.clock if offset is None else offset,
            start=start,
            chunk_frames=self.chunk_frames,
            on_end=on_end,
            resume_after=resume_after,
            max_pixels=self.limits.max_frame_pixels,
            follow_redirects=False,  # the app resolved and checked them (limits.resolve_redirects)
            transcribe=transcribe,
        )
        m.source = source
        m.error = None
        source.start()
        return source

    def stop_source(self, m: Managed, wait: float = 60.0) -> None:
        if m.source is None:
            raise NotFound(
                f"session {m.id} has no live source; start one with POST /v1/sessions/{m.id}/source"
            )
        m.source.stop()
        m.source.join(wait)

    # ---- questions ------------------------------------------------------------------------------------
    async def ask(
        self,
        m: Managed,
        question: str,
        choices: list[str] | None = None,
        max_new_tokens: int = 48,
        on_token: Callable[[str], None] | None = None,
        logprobs: int = 0,
        generation: GenerationOptions | None = None,
        check: Callable[[], None] | None = None,
    ) -> dict:
        """The answer to `question` from `m`'s memory, computed on the scheduler in slices. `check` is
        called before each step of the answer (on the model thread): it raises to stop the answer there
        (its client has gone). A session deleted meanwhile ends the answer at its next step with the
        session's error (404; 503 when it moved to another replica), never with a cancellation."""
        from videokv.server.scheduler import SchedulerClosed

        if not question.strip():
            raise BadRequest("the question is empty; ask something about the stream")
        if choices is not None and (len(choices) < 2 or any(not c.strip() for c in choices)):
            raise BadRequest("choices must be at least two non-empty strings (or null for a free answer)")

        def checks() -> None:
            if m.deleted:
                raise gone(m)
            if check is not None:
                check()

        def run():  # a generator: the scheduler runs it in slices, other sessions' jobs in between
            m.session.prefill_chunk = PREFILL_CHUNK_TOKENS
            steps = m.session.ask_steps(question, choices, max_new_tokens, on_token, logprobs, generation)
            return (yield from answer_steps(steps, checks))

        m.asking += 1
        try:
            return await self.scheduler.run(m.id, run)
        except SchedulerClosed:
            if m.deleted:  # forgotten between two slices: the session's own error
                raise gone(m) from None
            raise
        except CorruptData as e:  # a block fetched for this answer failed verification: never served
            self.quarantine(m.id, e)
            m.deleted = True
            if m.source is not None:
                m.source.stop()
            raise
        finally:
            m.asking -= 1
            m.touch()

    # ---- snapshots ------------------------------------------------------------------------------------
    def _snapshot(self, name: str) -> Backend:
        if not NAME_RE.match(name):
            raise NotFound(f"no snapshot {name!r}; list them with GET /v1/snapshots")
        return self.store.child(f"snapshots/{name}")

    async def save(self, m: Managed) -> str:
        name = f"{m.id}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"

        def run() -> str:
            extra = {"fps": m.fps, "system": m.session.system, **m.info(), "saved": time.time()}
            extra.pop("source", None)
            m.session.save(self._snapshot(name), extra=extra)
            return name

        return await self.scheduler.run(m.id, run)

    def snapshots(self) -> list[dict]:
        names = sorted(self.store.children("snapshots"))
        out = []
        for name in names:
            try:
                manifest = saved_session_info(self._snapshot(name))
            except (SaveError, StorageError, OSError):
                continue
            extra = manifest.get("extra") or {}
            out.append(
                {
                    "snapshot": name,
                    "session": extra.get("id"),
                    "memory": (manifest.get("config") or {}).get("name", "?"),
                    "clock": float((manifest.get("state") or {}).get("clock", 0.0)),
                    "created": float(extra.get("saved") or 0.0),
                }
            )
        return sorted(out, key=lambda s: s["created"])

    async def restore_snapshot(self, name: str) -> Managed:
        folder = self._snapshot(name)
        if not folder.exists(SAVE_MANIFEST):
            raise NotFound(f"no snapshot {name!r}; list them with GET /v1/snapshots")
        self._reserve()
        sid = self._new_id()
        target = self.sessions_dir / sid

        def build() -> Managed:
            session = self.qa.load_session(folder, lambda config: self._budgeted(config, target))
            config, extra = session.config, session.saved
            m = Managed(
                sid,
                session,
                target,
                self._journal(sid),
                Thumbnails(target / "thumbs"),
                memory=config.name,
                name=extra.get("name"),
                budget=self.session_bytes,
            )
            self._check_budget(m)
            self._start_journal(m)
            return m

        m = await self.scheduler.run(sid, build)
        return self._add_or_remove(m)

    # ---- start-up, adoption, quarantine ---------------------------------------------------------------
    def stored_sessions(self) -> list[str]:
        """The ids of the sessions with a journal (or the remains of one) in the store."""
        sids = set(self.store.children("sessions"))
        if self.store.is_local:  # local folders of sessions whose journal is gone (quarantined, below)
            sids |= {p.name for p in self.sessions_dir.iterdir() if p.is_dir() and not p.name.startswith(".")}
        return sorted(s for s in sids if NAME_RE.match(s))

    def restore_all(self) -> list[str]:
        """Bring back the sessions in the store from their journals (their model work on the scheduler);
        live sources that were running are resumed where they stopped. A session that fails verification
        is quarantined, never served, never deleted; with leases, sessions another live server holds are
        left to it. At most `max_sessions` are held. Returns the ids."""
        self.start_leases()
        restored = []
        for sid in self.stored_sessions():
            if len(self.sessions) >= self.max_sessions:
                log.warning(
                    "videokv: %s is left in the store: --max-sessions %d reached", sid, self.max_sessions
                )
                continue
            if not self._lease_free(sid):
                continue
            m = self._restore_or_quarantine(sid)
            if m is not None:
                restored.append(m.id)
        return restored

    def _restore_or_quarantine(self, sid: str) -> Managed | None:
        try:
            return self.restore_one(sid)
        except Exception as e:  # noqa: BLE001 - any failure: quarantined with its reason, the server goes on
            self.quarantine(sid, e)
            return None

    def quarantine(self, sid: str, error: BaseException | str) -> None:
        """Keep session `sid` out of service (its storage untouched) and say why."""
        reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        self.quarantined[sid] = {"session": sid, "reason": reason, "since": time.time()}
        self.sessions.pop(sid, None)
        log.error("videokv: session %s is quarantined (kept in storage, not served): %s", sid, reason)

    def restore_one(self, sid: str | Path) -> Managed | None:
        """Bring back the session `sid` from its journal, resuming its live source if it was running. None
        (its remains removed) if it was being created when its server died. Raises what reading the journal
        raises (CorruptData, SaveError, ...; nothing is deleted then). This is also how a session moves
        between processes that share a store: one `release`s it, the other restores it."""
        sid = Path(sid).name
        if sid in self.sessions:
            return self.sessions[sid]
        journal = self._journal(sid)
        folder = self.sessions_dir / sid
        if self.store.child(f"sessions/{sid}").exists(DELETED):  # a deletion a crash cut: finished now
            log.warning("videokv: %s was being deleted when the server died; deleted", sid)
            self._remove(sid, folder)
            return None
        if self.scheduler.call(sid, journal.migrate_legacy, self.qa):
            log.warning("videokv: session %s: its version-3 journal was migrated to the current format", sid)
        if not journal.exists():
            objects = journal.store.list()
            if set(objects) <= {"new"} and not any((folder / "thumbs").glob("*")):
                log.warning("videokv: %s was being created when the server died; removed", sid)
                self._remove(sid, folder)
                return None
            raise CorruptData(
                f"session {sid} has no commit record (its journal holds {len(objects)} objects)"
            )
        self.moved_away.pop(sid, None)
        m = self.scheduler.call(sid, self._restore_one, sid, folder, journal)
        self.quarantined.pop(sid, None)
        self.sessions[m.id] = m
        if not self.store.is_local:  # one listing of the journal, off the path to the first answer
            threading.Thread(target=self._scrub, args=(m,), name=f"videokv-scrub-{sid}", daemon=True).start()
        spec = m.resume
        if spec and spec.get("state") == "running":
            self._resume(m, spec)
        return m

    async def release(self, sid: str) -> None:
        """Hand session `sid` over to another process that shares the store: stop its live source (its
        journal keeps it "running", so the process that restores it resumes it exactly where the last commit
        ends), let the job in progress finish (a chunk it had not committed is rolled back; jobs waiting for
        the session end with a retryable 503), and drop it from this process, its storage untouched."""
        m = self.get(sid)
        if m.lock.locked() or m.busy:
            raise Conflict(f"session {sid} is ingesting a request; move it when that is done")
        m.moved = m.deleted = True
        self.moved_away[sid] = time.monotonic()
        self.sessions.pop(sid, None)
        if m.source is not None:
            m.source.stop()
        with contextlib.suppress(Exception):
            await self.scheduler.run(sid, lambda: None)  # after the job in progress: nothing writes now
        self.scheduler.forget(sid)
        if m.source is not None:
            await asyncio.to_thread(m.source.join, 30)
        if self.lease_s is not None:
            with contextlib.suppress(StorageError):
                self.store.child(f"sessions/{sid}").delete([OWNER])

    def _restore_one(self, sid: str, folder: Path, journal: Journal) -> Managed:
        if journal.recover():
            log.warning("videokv: session %s: an upload cut by the crash was rolled back", sid)
        if self.store.is_local:  # a folder is listed in no time: verified before it is served
            journal.scrub()
        header = journal.read_header()
        info = header["info"]
        shutil.rmtree(folder / "spill", ignore_errors=True)  # spill files of the dead process
        shutil.rmtree(folder / "uploads", ignore_errors=True)
        budget = info.get("budget")
        overrides: dict = {"spill_dir": str(folder / "spill")}
        if budget is not None and self.session_bytes is None:
            budget = None  # the server now runs without budgets
            overrides.update(host_bytes=None, device_bytes=None)
        session = journal.load(self.qa, **overrides)
        self._claim(sid)
        m = Managed(
            str(info.get("id") or sid),
            session,
            folder,
            journal,
            Thumbnails(folder / "thumbs"),
            memory=str(info.get("memory") or session.config.name),
            name=info.get("name"),
            created=float(info.get("created") or time.time()),
            budget=budget,
            idle_expiry=info.get("idle_expiry"),
        )
        m.thumbs.remove_after(session.clock)  # thumbnails of frames whose chunk never committed
        m.resume = info.get("source") if isinstance(info.get("source"), dict) else None
        if m.resume and m.resume.get("state") != "running":  # it had ended: report how, keep it journaled
            m.source = FinishedSource(m.resume)
            if m.source.state == "error" and m.source.error:
                m.error = f"live source {m.source.url}: {m.source.error}"
        self._refresh(m)
        return m

    def _scrub(self, m: Managed) -> None:
        """Verify that every object a restored session's record names is in the store (a missing one
        quarantines the session) and delete what a crash left behind."""
        try:
            # one of the session's jobs: no commit of it runs beside
            removed = self.scheduler.call(m.id, m.journal.scrub)
            if removed:
                log.info("videokv: session %s: %d objects a crash left behind were deleted", m.id, removed)
        except CorruptData as e:
            if self.sessions.get(m.id) is m:
                self.quarantine(m.id, e)
                m.deleted = True
                if m.source is not None:
                    m.source.stop()
        except (StorageError, OSError) as e:  # the store is away: the next restore verifies again
            log.warning("videokv: session %s could not be verified in the store: %s", m.id, e)

    # ---- leases: servers that share an object store without a registry -------------------------------
    def _claim(self, sid: str) -> None:
        """Write this server as the session's holder (with leases: until the lease runs out)."""
        if self.lease_s is None:
            return
        until = time.time() + self.lease_s
        self.store.child(f"sessions/{sid}").put(
            OWNER, json.dumps({"holder": self.server_id, "until": until}).encode()
        )

    def _lease_free(self, sid: str) -> bool:
        """Whether this server may take session `sid`: no leases, no holder, its own, or the holder's lease
        ran out (the holder died or let it go)."""
        if self.lease_s is None:
            return True
        try:
            owner = json.loads(self.store.child(f"sessions/{sid}").get(OWNER))
        except Missing:
            return True
        except (ValueError, StorageError):
            return False
        if not isinstance(owner, dict):
            return True
        return owner.get("holder") == self.server_id or float(owner.get("until") or 0) < time.time()

    def _adopt_on_request(self, sid: str) -> Managed | None:
        """With leases, a request for a session this server does not hold adopts it from the store when its
        holder's lease ran out (None: not in the store; 503 while another server holds it)."""
        if self.lease_s is None or not NAME_RE.match(sid) or sid in self.quarantined or self.closing:
            return None
        try:
            if not self._journal(sid).exists():
                return None
            if not self._lease_free(sid):
                raise SessionMoved(f"session {sid} is held by another server; retry in a moment")
            if len(self.sessions) >= self.max_sessions:
                raise TooMany(f"session {sid} is in the store but this server holds --max-sessions sessions")
        except StorageError as e:
            raise StorageUnavailable(f"session {sid}: {e}") from e
        log.warning("videokv: adopting session %s from the store (its holder's lease ran out)", sid)
        return self._restore_or_quarantine(sid)

    def renew_leases(self) -> bool:
        """Renew the leases of the sessions this server holds; a session another server took meanwhile (this
        one could not renew for longer than a lease: the store was away) is dropped here, not written."""
        with self._lease_lock:
            started = time.monotonic()
            try:
                lapsed = started - self.renewed_at > self.lease_s
                for sid in list(self.sessions):
                    if lapsed and not self._lease_free(sid):
                        self._drop_taken(sid)
                        continue
                    self._claim(sid)
            except (StorageError, OSError) as e:
                log.warning("videokv: could not renew the sessions' leases: %s", e)
                return False
            self.renewed_at = started
            return True

    def _drop_taken(self, sid: str) -> None:
        m = self.sessions.pop(sid, None)
        if m is None:
            return
        log.warning("videokv: session %s was taken by another server while the store was away", sid)
        m.moved = m.deleted = True
        self.moved_away[sid] = time.monotonic()
        if m.source is not None:
            m.source.stop()

    def start_leases(self) -> None:
        """Renew this server's leases every lease_s / 3 seconds (a daemon thread)."""
        if self.lease_s is None or self._lease_thread is not None:
            return

        def renew() -> None:
            while not self.closing:
                self.renew_leases()
                time.sleep(self.lease_s / 3)

        self.renewed_at = time.monotonic()
        self._lease_thread = threading.Thread(target=renew, name="videokv-leases", daemon=True)
        self._lease_thread.start()

    def _resume(self, m: Managed, spec: dict) -> None:
        url = spec["url"]
        clock = m.session.clock
        resume_after = None
        if is_live(url):
            offset, start = clock, 0.0
        else:
            offset = float(spec.get("offset", 0.0))
            start = max(0.0, clock - offset)
            if "last_t" in spec:  # exact: the original sampling grid, past the last committed frame
                start = 0.0
                resume_after = offset - 1.0 if spec["last_t"] is None else float(spec["last_t"])
        try:
            self.start_source(
                m,
                url,
                fps=spec.get("fps"),
                realtime=bool(spec.get("realtime", True)),
                subtitles=spec.get("subtitles"),
                transcribe=spec.get("transcribe"),
                offset=offset,
                start=start,
                resume_after=resume_after,
            )
            log.info("videokv: session %s resumes its source %s at %.2fs", m.id, url, start)
        except VideoKVError as e:
            m.error = f"could not resume the live source {url}: {e}"

    def close(self) -> None:
        """Stop every live source (their state stays 'running' in the journals, so they resume on the next
        start) and the scheduler."""
        self.closing = True
        for m in list(self.sessions.values()):
            if m.source is not None and m.source.running:
                m.source.stop()
        self.scheduler.close(timeout=30)
        for m in list(self.sessions.values()):
            if m.source is not None:
                m.source.join(5)
