"""One replica of `videokv serve --ray`: a Ray Serve deployment replica holding one model and many sessions.

Each replica runs the single-process service unchanged (`create_app`: the same routes, limits, scheduler,
journal) on a private port of its node, and the router (ray_router.py) forwards each request for a session
to the replica that holds it. Sessions are held through the public API (`VideoQA`, `Session`) by the
ordinary `SessionManager`; what a replica adds:

- it restores no session at start: the registry (ray_registry.py) hands it sessions to *adopt* (restore from
  their journal in the shared data folder, resuming a live source where the last commit ends) when another
  replica died or a session is moved, and it *releases* a session being moved away;
- fencing: `sessions/<id>/owner` names the replica that may write the session's journal; a replica that
  finds another's name there (it was declared dead while alive, and the session moved on) drops the session
  instead of committing, so two processes never write one journal;
- it reports its sessions and their resident bytes to the registry every half second (heartbeats), and
  its session count to Ray Serve's autoscaler (`record_autoscaling_stats`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import threading
import time

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from videokv.server.ray_registry import CLUSTER_HEADER, HEARTBEAT_S, get_registry
from videokv.server.sessions import OWNER, Managed, SessionManager, gone
from videokv.storage import Missing

log = logging.getLogger("videokv.ray")


class ClusterManager(SessionManager):
    """The session manager of a replica: fenced journal writes (see the module docstring)."""

    replica_id: str = "local"

    def _owner(self, sid: str) -> str | None:
        try:
            return self.store.child(f"sessions/{sid}").get(OWNER).decode().strip()
        except Missing:
            return None

    def _commit(self, m: Managed) -> None:
        holder = self._owner(m.id)
        if holder is None:
            self.store.child(f"sessions/{m.id}").put(OWNER, self.replica_id.encode())
        elif holder != self.replica_id:  # the session moved on while this replica was thought dead
            log.warning("videokv: session %s is now held by replica %s; dropped here", m.id, holder)
            m.moved = m.deleted = True
            self.moved_away[m.id] = time.monotonic()
            self.sessions.pop(m.id, None)
            if m.source is not None:
                m.source.stop()
            raise gone(m)
        super()._commit(m)

    def take(self, sid: str) -> Managed | None:
        """Adopt session `sid` from its journal (this replica becomes its owner first)."""
        if sid in self.sessions:
            return self.sessions[sid]
        if not self._journal(sid).exists():
            return None
        self.store.child(f"sessions/{sid}").put(OWNER, self.replica_id.encode())
        return self.restore_one(sid)


def cluster_routes(manager: ClusterManager, secret: str) -> APIRouter:
    """Replica-internal routes the registry calls (the cluster secret in `x-videokv-cluster`)."""
    router = APIRouter(prefix="/_cluster", include_in_schema=False)

    def refuse(request: Request) -> JSONResponse | None:
        given = request.headers.get(CLUSTER_HEADER, "")
        if not secrets.compare_digest(given.encode(), secret.encode()):
            return JSONResponse({"detail": "replica-internal route"}, status_code=403)
        return None

    @router.post("/adopt/{sid}")
    async def adopt(sid: str, request: Request) -> JSONResponse:
        if (bad := refuse(request)) is not None:
            return bad
        try:
            m = await asyncio.to_thread(manager.take, sid)
        except Exception as e:  # a journal this replica cannot read: the registry decides what next
            log.exception("videokv: cannot adopt session %s", sid)
            return JSONResponse({"detail": f"cannot adopt session {sid}: {e}"}, status_code=500)
        if m is None:
            return JSONResponse({"detail": f"no journal for session {sid}"}, status_code=404)
        return JSONResponse(m.status())

    @router.post("/release/{sid}")
    async def release(sid: str, request: Request) -> JSONResponse:
        if (bad := refuse(request)) is not None:
            return bad
        await manager.release(sid)
        return JSONResponse({"released": sid})

    return router


def _free_socket(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(2048)
    return sock


class ReplicaServer:
    """The body of the Ray Serve replica (ray_serve.py wraps it in `serve.deployment`).

    options: the `videokv serve` settings (ray_serve.ServeOptions as a dict). The constructor loads the
    model, starts the service on a private port and the heartbeats; `close` stops them (journals keep live
    sources "running", so the replica that adopts a session resumes it).
    """

    def __init__(self, options: dict):
        import ray
        import torch
        import uvicorn
        from ray import serve

        from videokv.api import VideoQA
        from videokv.server.app import create_app
        from videokv.server.limits import Limits

        threads = max(1, int(options.get("replica_cpus") or 1))
        torch.set_num_threads(threads)
        try:
            self.id = serve.get_replica_context().replica_id.unique_id
        except Exception:  # outside Serve (a plain actor): a random id
            self.id = secrets.token_hex(4)
        self.node = ray.util.get_node_ip_address()
        self.pid = os.getpid()
        self.options = options
        qa = VideoQA.from_pretrained(
            options["model"],
            device=options.get("device"),
            memory=options["memory"],
            memory_set=options.get("memory_set"),
            frame_tokens=options.get("frame_tokens"),
        )
        info = {"id": self.id, "pid": self.pid, "node": self.node}
        ClusterManager.replica_id = self.id
        store = options.get("store")
        data_dir = options["data_dir"]
        if store and str(store).startswith("s3://"):  # sessions live in the store: a folder of its own
            data_dir = os.path.join(data_dir, f"replica-{self.id}")
        app: FastAPI = create_app(
            qa,
            data_dir,
            store=store,
            endpoint=options.get("s3_endpoint"),
            cache_bytes=options.get("cache_bytes"),
            token=options.get("token"),
            max_upload_bytes=options["max_upload_bytes"],
            max_sessions=options["max_sessions"],
            session_bytes=options.get("session_bytes"),
            default_memory=options["memory"],
            chunk_frames=options["chunk_frames"],
            model_name=options["model"],
            limits=Limits(
                **{k: tuple(v) if isinstance(v, list) else v for k, v in options["limits"].items()}
            ),
            bound_host=options.get("host", "127.0.0.1"),
            restore_sessions=False,
            replica=info,
            manager_cls=ClusterManager,
        )
        self.manager: ClusterManager = app.state.manager
        app.include_router(cluster_routes(self.manager, options["secret"]))
        sock = _free_socket(self.node)
        self.url = f"http://{self.node}:{sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", loop="asyncio", http="h11", lifespan="on")
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, name="videokv-replica-http", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started and time.monotonic() < deadline:
            if not self._thread.is_alive():
                raise RuntimeError("the replica's HTTP server did not start")
            time.sleep(0.05)
        self.registry = get_registry(options)
        self._stop = threading.Event()  # the first beat registers it (the registry may still be starting)
        self._beats = threading.Thread(target=self._heartbeats, name="videokv-heartbeat", daemon=True)
        self._beats.start()
        log.info("videokv: replica %s (pid %d) serves on %s", self.id, self.pid, self.url)

    def _beat(self) -> None:
        import ray

        held = {sid: int(m.stats.get("memory_bytes", 0)) for sid, m in list(self.manager.sessions.items())}
        ray.get(self.registry.heartbeat.remote(self.id, self.url, self.pid, self.node, held), timeout=10)

    def _heartbeats(self) -> None:
        while True:
            try:
                self._beat()
            except Exception as e:  # the registry restarting: it rebuilds itself from the next beats
                log.warning("videokv: heartbeat failed: %s", e)
            if self._stop.wait(HEARTBEAT_S):
                return

    # ---- Ray Serve hooks -----------------------------------------------------------------------------
    def check_health(self) -> None:
        if not self._thread.is_alive():
            raise RuntimeError("the replica's HTTP server stopped")

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Sessions held: the metric `SessionsPolicy` scales on."""
        return {"sessions": float(len(self.manager.sessions))}

    def describe(self) -> dict:
        return {"id": self.id, "pid": self.pid, "node": self.node, "url": self.url}

    def close(self) -> None:
        self._stop.set()
        self.server.should_exit = True  # its lifespan closes the manager: sources stop, journals stay
        self._thread.join(30)
