"""`videokv serve --ray`: the service on Ray Serve, many replicas (one model each, many sessions each).

The application is two deployments: `VideoKVRouter` (the HTTP ingress, ray_router.py: session affinity,
placement, failover holds) and `VideoKVReplica` (ray_replica.py: the single-process service on a private
port), plus the registry actor (ray_registry.py). `serve_cluster(args)` runs it from the command line;
`app_builder(args)` builds it from a Ray Serve config file (`serve run` / `serve deploy`, see
docs/ray-serve.yaml and docs/SERVER.md). Every replica must reach `data_dir` (a shared folder): sessions are
journaled there, and a replica restores a dead one's sessions from it. Ray's token auth (RAY_AUTH_MODE,
RAY_AUTH_TOKEN_PATH, RAY_AUTH_TOKEN, ~/.ray/auth_token) is resolved by `ray_auth_mode` before Ray is imported
(docs/SERVER.md, "Ray token auth").
"""

import dataclasses
import math
import os
import secrets
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

APP_NAME = "videokv"
AUTH_DOC = "docs/SERVER.md, 'Ray token auth'"


@dataclasses.dataclass
class ServeOptions:
    """What every replica and the router are built with (passed to them as a dict)."""

    model: str = "tiny-qwen2_vl"
    data_dir: str = "videokv-data"
    memory: str = "rekv"
    memory_set: list[str] | None = None
    frame_tokens: int | None = None
    device: str | None = None
    chunk_frames: int = 8
    token: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_bytes: int = 512 * 2**20
    max_sessions: int = 16  # per replica
    session_bytes: int | None = None
    replica_bytes: int | None = None  # each replica's budget of resident KV memory (admission)
    replicas: int = 2
    max_replicas: int | None = None  # > replicas: autoscale between them on sessions held
    target_sessions: int | None = None  # sessions per replica the autoscaler aims at
    replica_cpus: float = 1.0
    replica_gpus: float = 0.0  # GPUs Ray reserves per replica (1 with --device cuda)
    limits: dict = dataclasses.field(default_factory=dict)
    store: str | None = None  # s3://BUCKET/PREFIX: sessions in an object store, replicas on their own folders
    s3_endpoint: str | None = None
    cache_bytes: int | None = None
    app_name: str = APP_NAME
    secret: str = dataclasses.field(default_factory=lambda: secrets.token_hex(16))

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["data_dir"] = str(Path(self.data_dir).expanduser().resolve())
        return out


class SessionsPolicy:
    """A Ray Serve autoscaling policy on sessions held: enough replicas that each holds about `target`
    sessions, counting one more session than are held (room for the next), within the min/max replicas."""

    def __init__(self, target: int = 8):
        self.target = max(1, int(target))

    def __call__(self, ctx: Any) -> tuple[int, dict]:
        metrics = ctx.aggregated_metrics
        metrics = metrics() if callable(metrics) else (metrics or {})
        held = sum(metrics.get("sessions", {}).values())
        want = math.ceil((held + 1) / self.target)
        lo, hi = ctx.capacity_adjusted_min_replicas, ctx.capacity_adjusted_max_replicas
        return max(lo, min(hi, want)), ctx.policy_state


def build(options: ServeOptions):
    """The Ray Serve application for `options`. (No `from __future__ import annotations` in this module:
    FastAPI reads the route's `Request` annotation as a class, not a string.)"""
    from ray import serve
    from ray.serve.config import AutoscalingConfig, AutoscalingPolicy
    from starlette.requests import Request

    from videokv.server.ray_replica import ReplicaServer
    from videokv.server.ray_router import METHODS, Router, ingress_app

    opts = options.as_dict()
    router_app = ingress_app()

    class VideoKVReplica(ReplicaServer):
        def __del__(self) -> None:  # Serve's graceful shutdown: sources stop, journals keep them running
            self.close()

    @serve.ingress(router_app)
    class VideoKVRouter(Router):
        @router_app.api_route("/{path:path}", methods=METHODS, include_in_schema=False)
        async def route(self, request: Request, path: str):
            return await self.handle(request)

    scaling: dict[str, Any] = {"num_replicas": options.replicas}
    if options.max_replicas and options.max_replicas > options.replicas:
        target = options.target_sessions or max(1, options.max_sessions // 2)
        scaling = {
            "autoscaling_config": AutoscalingConfig(
                min_replicas=options.replicas,
                initial_replicas=options.replicas,
                max_replicas=options.max_replicas,
                metrics_interval_s=2.0,
                look_back_period_s=10.0,
                upscale_delay_s=5.0,
                downscale_delay_s=300.0,
                policy=AutoscalingPolicy(policy_function=SessionsPolicy, policy_kwargs={"target": target}),
            )
        }
    replica = serve.deployment(
        VideoKVReplica,
        name="VideoKVReplica",
        ray_actor_options={"num_cpus": options.replica_cpus, "num_gpus": options.replica_gpus},
        health_check_period_s=2.0,
        health_check_timeout_s=30.0,
        graceful_shutdown_timeout_s=30.0,
        max_ongoing_requests=16,
        **scaling,
    )
    router = serve.deployment(
        VideoKVRouter,
        name="VideoKVRouter",
        num_replicas=1,
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=10_000,
    )
    return router.bind(opts, replica.bind(opts))


def app_builder(args: dict) -> Any:
    """For a Ray Serve config file: `import_path: videokv.server.ray_serve:app_builder` with `args` the
    ServeOptions fields (model, data_dir, replicas, max_sessions, session_bytes, replica_bytes, token...)."""
    fields = {f.name for f in dataclasses.fields(ServeOptions)}
    unknown = set(args) - fields
    if unknown:
        raise ValueError(f"unknown videokv options {sorted(unknown)}; known: {sorted(fields)}")
    if not args.get("token"):
        args = {**args, "token": os.environ.get("VIDEOKV_TOKEN") or None}
    return build(ServeOptions(**args))


def ray_token_source(environ: Mapping[str, str] | None = None) -> str | None:
    """Where Ray finds this process's cluster token, in Ray's own order: the RAY_AUTH_TOKEN variable, the
    file RAY_AUTH_TOKEN_PATH names, ~/.ray/auth_token; None when there is none. A RAY_AUTH_TOKEN_PATH naming
    no readable, non-empty file is a ValueError (Ray would fail on it later, less clearly)."""
    env = os.environ if environ is None else environ
    if env.get("RAY_AUTH_TOKEN", "").strip():
        return "RAY_AUTH_TOKEN"
    named = env.get("RAY_AUTH_TOKEN_PATH")
    if named:
        if not _has_text(Path(named)):
            raise ValueError(
                f"RAY_AUTH_TOKEN_PATH={named} names no readable, non-empty token file ({AUTH_DOC})"
            )
        return f"RAY_AUTH_TOKEN_PATH={named}"
    default = Path(env.get("HOME") or Path.home()) / ".ray" / "auth_token"
    return str(default) if _has_text(default) else None


def _has_text(path: Path) -> bool:
    try:
        return bool(path.read_text().strip())
    except (OSError, UnicodeDecodeError):
        return False


def ray_auth_mode(address: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The RAY_AUTH_MODE to give this process's Ray driver, where the environment sets none; None: leave it
    as it is. An explicit RAY_AUTH_MODE is kept. A local cluster started here (`address` None) is left to Ray,
    which starts it with token auth (generating ~/.ray/auth_token when no token is found). Joining a cluster
    ("auto", host:port, ray://...): "token" when a token is found, since a driver with token auth joins a
    cluster without it too, while Ray's own rule (an explicit address never turns token auth on) cannot join
    one with it. ValueError: RAY_AUTH_MODE=token with no token to join with, or a bad RAY_AUTH_TOKEN_PATH."""
    env = os.environ if environ is None else environ
    explicit = env.get("RAY_AUTH_MODE", "").strip().lower()
    source = ray_token_source(env)
    if explicit == "token" and source is None and address is not None:
        raise ValueError(
            "RAY_AUTH_MODE=token but no Ray token found: set RAY_AUTH_TOKEN_PATH to the cluster's token file "
            f"(or RAY_AUTH_TOKEN, or put it in ~/.ray/auth_token; {AUTH_DOC})"
        )
    if explicit or address is None:
        return None
    return "token" if source else None


def use_ray_auth_mode(mode: str | None) -> None:
    """Set RAY_AUTH_MODE for this process (and the Ray processes it starts). Ray reads it into its config
    when imported: where it is already imported, the config is read again (as Ray's own auto-enable does)."""
    if mode is None:
        return
    os.environ["RAY_AUTH_MODE"] = mode
    if "ray._raylet" in sys.modules:
        from ray._raylet import Config

        Config.initialize("")


def ray_auth_summary(environ: Mapping[str, str] | None = None) -> str:
    """This process's Ray auth in words, for the start-up line: "Ray auth: token (from ...)" or "Ray auth:
    disabled" (its RAY_AUTH_MODE, which Ray itself sets when it turns token auth on)."""
    env = os.environ if environ is None else environ
    mode = env.get("RAY_AUTH_MODE", "").strip().lower() or "disabled"
    if mode != "token":
        return f"Ray auth: {mode}"
    try:
        source = ray_token_source(env)
    except ValueError:
        source = None
    return f"Ray auth: token (from {source or 'nowhere'})"


def _join_error(address: str | None, error: BaseException) -> str:
    """What to tell the user when ray.init fails: a refused token says how to give the cluster's one."""
    from ray.exceptions import AuthenticationError

    where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
    chain, cause = [], error
    while cause is not None and len(chain) < 10:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    # Ray's connect retries keep only the last error's traceback, as text (ray/_private/node.py)
    if any(isinstance(e, AuthenticationError) or "InvalidAuthToken" in str(e) for e in chain):
        return (
            f"videokv serve: {where} refused this process ({ray_auth_summary()}): it runs with Ray token "
            "auth; give this process the cluster's token (what `ray get-auth-token` prints on the head) in "
            f"a file named by RAY_AUTH_TOKEN_PATH, in RAY_AUTH_TOKEN or in ~/.ray/auth_token ({AUTH_DOC})"
        )
    return f"videokv serve: could not start or join {where}: {error}"


def serve_cluster(options: ServeOptions, address: str | None) -> int:
    """Run the application on the Ray cluster at `address` ("auto": the running one; None: start a local
    one) until SIGINT/SIGTERM, then take it down (journals keep live sources running for the next start).
    1: Ray could not be started or joined (a refused token among the causes); 2: a bad Ray auth setting."""
    try:
        use_ray_auth_mode(ray_auth_mode(address))
    except ValueError as e:
        print(f"videokv serve: {e}", file=sys.stderr)
        return 2
    import ray
    from ray import serve

    from videokv.server.ray_registry import kill_registry

    try:
        ray.init(address=address, namespace="videokv", log_to_driver=False, ignore_reinit_error=True)
    except (ConnectionError, RuntimeError, ray.exceptions.RayError) as e:
        print(_join_error(address, e), file=sys.stderr, flush=True)
        return 1
    kill_registry(options.app_name)  # a fresh registry: it adopts the sessions already in data_dir
    serve.start(http_options={"host": options.host, "port": options.port})
    stop = threading.Event()

    def on_signal(signum, frame) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        serve.run(build(options), name=options.app_name, route_prefix="/", blocking=False)
        where = f"http://{options.host if ':' not in options.host else f'[{options.host}]'}:{options.port}"
        print(
            f"videokv serve: {options.model} on {where} via Ray Serve, {options.replicas} replica(s) "
            f"(data in {options.data_dir}; {ray_auth_summary()})",
            file=sys.stderr,
            flush=True,
        )
        stop.wait()
    finally:
        try:
            serve.delete(options.app_name)
        finally:
            kill_registry(options.app_name)
            serve.shutdown()
    return 0
