"""The cluster's registry: which replica holds which session, placement of new sessions, and failover.

One named Ray actor per videokv application (`registry_name(app)`, namespace `videokv`, detached, restarted by
Ray if it dies: its state is rebuilt from the replicas' heartbeats within a second). Replicas report every
`HEARTBEAT_S` seconds: their private address, process id and the sessions they hold with their resident
bytes. The router asks it where a session lives (`lookup`) and where a new one goes (`pick`: the least-loaded
replica with room, or none: 429).

Failover: a replica not heard from for `STALE_S` is probed (a TCP connect to its private port); a refused
connection (the process is gone: `kill -9`), or `SILENT_DEAD_S` of silence, makes it dead. Each of its
sessions is then *moving*: the registry asks a live replica (least loaded, with room if any) to adopt it,
i.e. to restore it from its journal in the shared data folder and resume its live source exactly where the
last commit ends. Until that is done the router holds a request for the session, then answers a retryable
503. Moving a session for balance (`move`) takes the same path after the holder releases it. Session
folders with a journal that no replica holds (a whole cluster restarted) are adopted the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger("videokv.ray")

NAMESPACE = "videokv"
HEARTBEAT_S = 0.5  # how often a replica reports
STALE_S = 1.5  # a replica silent this long is probed
SILENT_DEAD_S = 45.0  # a replica silent this long is dead even if its port still answers
ORPHAN_SCAN_S = 5.0  # how often session folders no replica holds are looked for
ADOPT_WAIT_FOR_ROOM_S = 20.0  # a dead replica's session waits this long for a replica with room
CLUSTER_HEADER = "x-videokv-cluster"  # the cluster secret on replica-internal requests


def registry_name(app: str) -> str:
    return f"videokv-registry-{app}"


@dataclass
class Replica:
    """What the registry knows of one replica."""

    id: str
    url: str
    pid: int
    node: str
    sessions: dict[str, int] = field(default_factory=dict)  # session id -> resident bytes
    seen: float = field(default_factory=time.monotonic)
    pending: int = 0  # new sessions placed on it, not yet created
    dead: bool = False
    probed: float = 0.0

    def info(self) -> dict:
        return {"id": self.id, "pid": self.pid, "node": self.node}


class Registry:
    """The registry actor's class (wrapped with `ray.remote` by `get_registry`); async methods, one loop."""

    def __init__(
        self,
        data_dir: str,
        secret: str,
        max_sessions: int,
        replica_bytes: int | None = None,
        session_bytes: int | None = None,
        store: str | None = None,
        s3_endpoint: str | None = None,
    ):
        from videokv.storage import open_backend

        self.sessions_dir = Path(data_dir) / "sessions"
        # where the sessions' journals are: the shared data folder, or an object store
        self.store = open_backend(store or data_dir, s3_endpoint)
        self.secret = secret
        self.max_sessions = max_sessions
        self.replica_bytes = replica_bytes
        self.session_bytes = session_bytes
        self.replicas: dict[str, Replica] = {}
        self.owner: dict[str, str] = {}  # session id -> replica id
        self.moving: dict[str, float] = {}  # session id -> since when (monotonic)
        self.failovers: list[dict] = []  # each dead replica: when, its sessions, when they answered again
        self._tasks: set[asyncio.Task] = set()
        self._monitor: asyncio.Task | None = None
        self._rr = 0

    # ---- reports from replicas -------------------------------------------------------------------------
    async def heartbeat(self, rid: str, url: str, pid: int, node: str, sessions: dict[str, int]) -> None:
        self._start()
        rec = self.replicas.get(rid)
        if rec is None:
            rec = self.replicas[rid] = Replica(rid, url, pid, node)
            log.info("videokv: replica %s (pid %d) at %s joined", rid, pid, url)
        if rec.dead:
            return  # declared dead: its sessions went elsewhere (it is fenced out of their journals)
        rec.url, rec.pid, rec.node, rec.seen = url, pid, node, time.monotonic()
        rec.sessions = dict(sessions)
        for sid in sessions:
            holder = self.replicas.get(self.owner.get(sid, ""))
            if sid not in self.moving and (holder is None or holder.dead):
                self.owner[sid] = rid
        for sid, holder_id in list(self.owner.items()):
            if holder_id == rid and sid not in sessions and sid not in self.moving:
                if not self._stored(sid):  # deleted
                    self.owner.pop(sid, None)

    # ---- placement ------------------------------------------------------------------------------------
    def _live(self) -> list[Replica]:
        return [r for r in self.replicas.values() if not r.dead]

    def _held(self, r: Replica) -> int:
        return len({*r.sessions, *(s for s, o in self.owner.items() if o == r.id)}) + r.pending

    def _bytes(self, r: Replica) -> int:
        return sum(r.sessions.values())

    def _room(self, r: Replica) -> bool:
        held = self._held(r)
        if held >= self.max_sessions:
            return False
        if self.replica_bytes is None:
            return True
        if self.session_bytes is not None:  # each session may grow to its budget: reserve it
            return (held + 1) * self.session_bytes <= self.replica_bytes
        return self._bytes(r) < self.replica_bytes

    def _least_loaded(self, room: bool = True, exclude: tuple[str, ...] = ()) -> Replica | None:
        live = [r for r in self._live() if r.id not in exclude and (not room or self._room(r))]
        return min(live, key=lambda r: (self._held(r), self._bytes(r), r.id), default=None)

    async def pick(self) -> dict | None:
        """The replica a new session goes to (least loaded with room), reserved until `assign` or `unpick`;
        None when no replica has room."""
        self._start()
        r = self._least_loaded()
        if r is None:
            return None
        r.pending += 1
        return {"id": r.id, "url": r.url}

    async def unpick(self, rid: str) -> None:
        r = self.replicas.get(rid)
        if r is not None and r.pending:
            r.pending -= 1

    async def assign(self, sid: str, rid: str) -> None:
        """Session `sid` now lives on replica `rid` (it was created or restored there)."""
        await self.unpick(rid)
        self.owner[sid] = rid
        r = self.replicas.get(rid)
        if r is not None:
            r.sessions.setdefault(sid, 0)

    async def forget(self, sid: str) -> None:
        """Session `sid` was deleted."""
        rid = self.owner.pop(sid, None)
        self.moving.pop(sid, None)
        if rid in self.replicas:
            self.replicas[rid].sessions.pop(sid, None)

    async def lookup(self, sid: str) -> dict:
        """{"state": "active", "id", "url"} | {"state": "moving", "since"} | {"state": "unknown"}."""
        self._start()
        if sid in self.moving:
            return {"state": "moving", "since": time.monotonic() - self.moving[sid]}
        r = self.replicas.get(self.owner.get(sid, ""))
        if r is None or r.dead:
            return {"state": "moving" if r is not None else "unknown", "since": 0.0}
        return {"state": "active", "id": r.id, "url": r.url}

    async def live(self) -> list[dict]:
        """The live replicas ({"id", "url"}), in turn order (round robin for requests of no session)."""
        self._start()
        live = sorted(self._live(), key=lambda r: r.id)
        if not live:
            return []
        self._rr = (self._rr + 1) % len(live)
        live = live[self._rr :] + live[: self._rr]
        return [{"id": r.id, "url": r.url} for r in live]

    async def cluster(self) -> dict:
        """The cluster as `GET /v1/cluster` shows it."""
        return {
            "replicas": [
                {
                    **r.info(),
                    "sessions": sorted(r.sessions),
                    "resident_bytes": self._bytes(r),
                    "room": self._room(r),
                }
                for r in sorted(self._live(), key=lambda r: r.id)
            ],
            "moving": sorted(self.moving),
            "max_sessions_per_replica": self.max_sessions,
            "replica_budget_bytes": self.replica_bytes,
            "session_budget_bytes": self.session_bytes,
            "failovers": self.failovers[-20:],
        }

    # ---- failures and moves ------------------------------------------------------------------------------
    async def suspect(self, rid: str) -> bool:
        """The router could not reach replica `rid`: probe it now; True if it is (now) dead."""
        r = self.replicas.get(rid)
        if r is None or r.dead:
            return True
        if not await self._probe(r):
            self._dead(r)
        return r.dead

    async def move(self, sid: str, target: str | None = None) -> dict:
        """Move session `sid` to replica `target` (default: the least loaded other one with room): the holder
        releases it (its journal is complete), then the target adopts it, as in a failover."""
        holder = self.replicas.get(self.owner.get(sid, ""))
        if holder is None or holder.dead or sid in self.moving:
            return {"moved": False, "detail": f"session {sid} is not held by a live replica right now"}
        dest = self.replicas.get(target) if target else self._least_loaded(exclude=(holder.id,))
        if dest is None or dest.dead or dest.id == holder.id:
            return {"moved": False, "detail": "no other live replica with room"}
        self.moving[sid] = time.monotonic()  # requests wait from now on, not sent to the holder
        status, body = await self._post(holder, f"/_cluster/release/{sid}")
        if status != 200:
            self.moving.pop(sid, None)
            return {"moved": False, "detail": body.get("detail", f"the holder answered {status}")}
        holder.sessions.pop(sid, None)
        ok = await self._adopt(sid, prefer=dest.id)
        return {"moved": ok, "from": holder.id, "to": self.owner.get(sid)}

    def _dead(self, r: Replica) -> None:
        if r.dead:
            return
        r.dead = True
        now = time.monotonic()
        orphans = sorted({*r.sessions, *(s for s, o in self.owner.items() if o == r.id)})
        log.warning("videokv: replica %s (pid %d) is dead; moving its sessions %s", r.id, r.pid, orphans)
        record = {"replica": r.id, "pid": r.pid, "sessions": orphans, "at": time.time(), "recovered_s": None}
        self.failovers.append(record)
        for sid in orphans:
            self.moving.setdefault(sid, now)
        if orphans:
            self._spawn(self._failover(orphans, record, now))

    async def _failover(self, sids: list[str], record: dict, t0: float) -> None:
        await asyncio.gather(*(self._adopt(sid) for sid in sids))
        record["recovered_s"] = round(time.monotonic() - t0, 3)

    async def _adopt(self, sid: str, prefer: str | None = None) -> bool:
        """Have a live replica restore `sid` from its journal; retried until one does (or it is deleted)."""
        start = time.monotonic()
        tries = 0
        while sid in self.moving:
            if not self._stored(sid):
                self.moving.pop(sid, None)
                self.owner.pop(sid, None)
                return False
            dest = self.replicas.get(prefer or "") if prefer else None
            if dest is None or dest.dead:
                dest = self._least_loaded()
                if dest is None and time.monotonic() - start > ADOPT_WAIT_FOR_ROOM_S:
                    dest = self._least_loaded(room=False)  # a live session beats the budget
            if dest is None:
                await asyncio.sleep(0.25)
                continue
            status, body = await self._post(dest, f"/_cluster/adopt/{sid}")
            if status == 200:
                self.owner[sid] = dest.id
                dest.sessions[sid] = int(body.get("memory_bytes", 0))
                self.moving.pop(sid, None)
                log.info("videokv: session %s now lives on replica %s", sid, dest.id)
                return True
            tries += 1
            prefer = None
            if status == 0 and not await self._probe(dest):
                self._dead(dest)
            if status == 404 or tries > 40:  # no journal, or one no replica can read
                log.error("videokv: no replica could adopt session %s: %s", sid, body)
                self.moving.pop(sid, None)
                self.owner.pop(sid, None)
                return False
            await asyncio.sleep(0.25)
        return sid in self.owner

    async def _post(self, r: Replica, path: str) -> tuple[int, dict]:
        import httpx

        try:
            async with httpx.AsyncClient(timeout=httpx.Timeout(120.0, connect=3.0)) as client:
                resp = await client.post(r.url + path, headers={CLUSTER_HEADER: self.secret})
            try:
                body = resp.json()
            except ValueError:
                body = {"detail": resp.text[:500]}
            return resp.status_code, body if isinstance(body, dict) else {"detail": str(body)}
        except httpx.HTTPError as e:
            return 0, {"detail": f"{type(e).__name__}: {e}"}

    async def _probe(self, r: Replica) -> bool:
        """True if the replica's private port accepts a connection (its process is alive)."""
        parts = urlsplit(r.url)
        r.probed = time.monotonic()
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, parts.port), 2.0)
        except (ConnectionRefusedError, OSError):
            return False
        except TimeoutError:
            return True  # busy or unreachable for now: silence decides (SILENT_DEAD_S)
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        return True

    # ---- the monitor ----------------------------------------------------------------------------------
    def _start(self) -> None:
        if self._monitor is None or self._monitor.done():
            self._monitor = asyncio.get_running_loop().create_task(self._watch())

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self) -> None:
        last_scan = time.monotonic()
        while True:
            await asyncio.sleep(0.2)
            now = time.monotonic()
            for r in self._live():
                silent = now - r.seen
                if silent > SILENT_DEAD_S:
                    self._dead(r)
                elif silent > STALE_S and now - r.probed > 0.5 and not await self._probe(r):
                    self._dead(r)
            if now - last_scan > ORPHAN_SCAN_S and self._live():
                last_scan = now
                self._scan_orphans()

    def _stored(self, sid: str) -> bool:
        """Whether session `sid` has a journal in the store (a storage error counts as yes: not deleted)."""
        try:
            return self.store.exists(f"sessions/{sid}/journal/state") or self.store.exists(
                f"sessions/{sid}/journal/base"
            )
        except OSError:
            return True

    def _scan_orphans(self) -> None:
        """Sessions with a journal in the store that no live replica holds (e.g. the whole cluster restarted),
        seen on two scans in a row (a session being created is not one)."""
        held = {s for s, o in self.owner.items() if o in self.replicas and not self.replicas[o].dead}
        held |= {s for r in self._live() for s in r.sessions}
        try:
            candidates = [
                s for s in self.store.children("sessions") if s not in held and s not in self.moving
            ]
        except OSError as e:
            log.warning("videokv: cannot list the sessions in the store: %s", e)
            return
        seen_before = getattr(self, "_orphans_seen", set())
        self._orphans_seen = {s for s in candidates if self._stored(s)}
        for sid in sorted(self._orphans_seen):
            if sid in seen_before:
                log.warning("videokv: session %s is held by no replica; adopting it", sid)
                self.moving[sid] = time.monotonic()
                self._spawn(self._adopt(sid))


def get_registry(options: dict):
    """The registry actor of the application `options["app_name"]` (the cluster options the router and the
    replicas share): the running one, or a new one built from those options."""
    import ray

    app = options["app_name"]
    actor = ray.remote(Registry).options(
        name=registry_name(app),
        namespace=NAMESPACE,
        get_if_exists=True,
        lifetime="detached",
        max_restarts=-1,
        max_task_retries=-1,
        num_cpus=0,
        max_concurrency=1000,
    )
    return actor.remote(
        data_dir=options["data_dir"],
        secret=options["secret"],
        max_sessions=options["max_sessions"],
        replica_bytes=options.get("replica_bytes"),
        session_bytes=options.get("session_bytes"),
        store=options.get("store"),
        s3_endpoint=options.get("s3_endpoint"),
    )


def kill_registry(app: str) -> None:
    """Remove application `app`'s registry actor, if any (a new start begins with a fresh one)."""
    import ray

    with contextlib.suppress(ValueError):
        ray.kill(ray.get_actor(registry_name(app), namespace=NAMESPACE), no_restart=True)
