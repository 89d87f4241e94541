"""`videokv serve` (the HTTP service) and `videokv stream` (live ingest in a terminal, questions on stdin)."""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import sys
import threading
import time
from collections.abc import Callable

LOOPBACK_NAMES = ("localhost", "ip6-localhost")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def add_parsers(sub: argparse._SubParsersAction, add_model_args: Callable) -> None:
    """Register `serve` and `stream` on the CLI's subparsers (each sets `func`)."""
    serve = sub.add_parser(
        "serve",
        help="run the HTTP service: sessions over live streams, questions answered as they stream",
        description="Run the videokv HTTP service (API under /v1, web page at /, OpenAPI at /openapi.json).",
    )
    serve.add_argument("--data-dir", default="videokv-data", help="folder of sessions and snapshots")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    serve.add_argument(
        "--token",
        default=None,
        help="bearer token every /v1 request must send (default: $VIDEOKV_TOKEN); required off loopback",
    )
    serve.add_argument(
        "--max-upload-mb", type=float, default=512, help="largest upload in MiB (default: 512)"
    )
    serve.add_argument("--max-sessions", type=int, default=16, help="sessions held at once (default: 16)")
    serve.add_argument(
        "--session-mb",
        type=float,
        default=None,
        help="each session's budget of resident KV memory in MiB; older blocks spill to disk (default: none)",
    )
    serve.add_argument(
        "--chat-idle-s",
        type=float,
        default=600.0,
        help="seconds without a request after which a session an OpenAI chat kept (keep_session) is "
        "deleted (default: 600)",
    )
    _add_store_args(serve)
    _add_limit_args(serve)
    _add_connection_args(serve)
    _add_ray_args(serve)
    add_model_args(serve, answers="")  # each request says how it wants its answer
    serve.set_defaults(func=cmd_serve)

    stream = sub.add_parser(
        "stream",
        help="ingest a live source (file, URL, RTSP) and answer questions typed while it streams",
        description="Ingest SOURCE at stream pace; type a question and press Enter at any time; "
        "EOF (Ctrl-D) or 'quit' ends it.",
    )
    stream.add_argument("source", help="a video file, an http(s):// or rtsp:// URL: anything PyAV opens")
    stream.add_argument("--subtitles", help="SRT or WebVTT file of timed text, interleaved with the frames")
    from videokv.cli import add_transcribe_arg

    add_transcribe_arg(stream)
    stream.add_argument(
        "--realtime",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="follow the wall clock as a camera would (--no-realtime: as fast as the model goes)",
    )
    stream.add_argument(
        "--wait", action="store_true", help="ingest the whole source before reading the first question"
    )
    stream.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    add_model_args(stream, answers="json")
    stream.set_defaults(func=cmd_stream)


def _add_store_args(serve: argparse.ArgumentParser) -> None:
    g = serve.add_argument_group("storage (docs/SERVER.md, 'Durability'; docs/SCALE.md)")
    g.add_argument(
        "--store",
        default=None,
        help="where sessions' journals and snapshots live: s3://BUCKET/PREFIX (an S3-compatible object "
        "store; credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE) or a folder "
        "(default: --data-dir). With an object store, --data-dir is this server's own scratch folder and "
        "servers on one store share no disk",
    )
    g.add_argument("--s3-endpoint", default=None, help="the object store's URL when it is not AWS S3")
    g.add_argument(
        "--cache-mb",
        type=float,
        default=2048,
        help="the local cache of the object store's blocks, in MiB (default: 2048)",
    )
    g.add_argument(
        "--lease-s",
        type=float,
        default=15.0,
        help="with --store s3://...: seconds a server's hold on its sessions lasts unrenewed; a session "
        "whose server died is adopted by another server on the same store after this (default: 15)",
    )


def _check_store(args: argparse.Namespace) -> str | None:
    """What is wrong with --store (None: it answers)."""
    if not args.store:
        return None
    from videokv.errors import StorageError
    from videokv.storage import open_backend

    try:
        open_backend(args.store, args.s3_endpoint).children("sessions")
    except (StorageError, OSError) as e:
        return f"--store {args.store}: {e}"
    return None


def _store_options(args: argparse.Namespace) -> dict:
    """The manager's storage arguments from `serve`'s options."""
    remote = bool(args.store) and str(args.store).startswith("s3://")
    return {
        "store": args.store,
        "endpoint": args.s3_endpoint,
        "cache_bytes": int(args.cache_mb * 2**20),
        "lease_s": args.lease_s if remote else None,
    }


def _add_limit_args(serve: argparse.ArgumentParser) -> None:
    """The per-request limits (videokv.server.limits.Limits; docs/SERVER.md has the table)."""
    from videokv.server.limits import Limits

    d = Limits()
    g = serve.add_argument_group("limits (a request past one is refused with 413/422 naming the flag)")
    helps = {
        "max_question_chars": "characters of a question",
        "max_choices": "choices of a multiple-choice question",
        "max_choice_chars": "characters of one choice",
        "max_text_chars": "characters of one text event (pushed or a subtitle)",
        "max_text_events": "text events in one request (pushed, or an upload's subtitles)",
        "max_request_tokens": "text tokens in one request (question + choices, or all pushed text)",
        "max_frame_pixels": "width x height of one image or video frame, read from its header",
        "max_request_pixels": "pixels of all frames pushed in one request",
        "max_json_mb": "MiB of a JSON body, counted as it streams in",
        "max_time_jump": "seconds an item may lie ahead of the stream clock (or of the item before it)",
        "max_late_text": "seconds before the clock that pushed text is still placed at the clock",
        "max_ingest_tokens": "stream tokens a retrieval session's ingest context (its window) may hold",
        "max_session_rps": "requests a second to one session's routes; more wait their turn, then 429",
        "refusal_cost": "requests that one refused for a limit (413/415/422) counts as in --max-session-rps",
    }
    for name, text in helps.items():
        default = getattr(d, name)
        g.add_argument(
            Limits.flag(name), type=type(default), default=default, help=f"{text} (default: {default})"
        )
    a = serve.add_argument_group("what requests may reach")
    a.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a Host name (and page origin) to answer besides loopback names, IP addresses and --host "
        "(repeatable; '*' for any: turns the DNS-rebinding guard off)",
    )
    a.add_argument(
        "--media-dir",
        default=None,
        help="a folder whose files a source or subtitles path in a request may name (default: none; "
        "requests can only upload files)",
    )
    a.add_argument(
        "--allow-urls", action="store_true", help="allow URL sources (http, rtsp, ...) to any host"
    )
    a.add_argument(
        "--allow-url-host",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="allow URL sources to this host only (repeatable; redirects are checked against the list)",
    )


def _add_connection_args(serve: argparse.ArgumentParser) -> None:
    """Timeouts of the HTTP connections (videokv.server.connections)."""
    from videokv.server.connections import DEFAULT_KEEP_ALIVE_S, DEFAULT_READ_TIMEOUT_S

    g = serve.add_argument_group("connections (idle and stalled clients are disconnected)")
    g.add_argument(
        "--read-timeout-s",
        type=float,
        default=DEFAULT_READ_TIMEOUT_S,
        help="seconds a connection has to send a request's headers, and may stay silent in the middle of "
        f"its body; past them it is closed (default: {DEFAULT_READ_TIMEOUT_S:g})",
    )
    g.add_argument(
        "--keep-alive-s",
        type=float,
        default=DEFAULT_KEEP_ALIVE_S,
        help="seconds an idle keep-alive connection is kept open after a response (default: "
        f"{DEFAULT_KEEP_ALIVE_S:g})",
    )


def _add_ray_args(serve: argparse.ArgumentParser) -> None:
    """Many replicas on Ray Serve (videokv.server.ray_serve; docs/SERVER.md, "Many workers")."""
    g = serve.add_argument_group("many workers: Ray Serve (pip install 'videokv[ray]')")
    g.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="serve with Ray Serve: 'auto' (the running cluster), a cluster address (host:port or "
        "ray://...), or nothing (a local Ray started for this command); --data-dir must be a folder every "
        "node reaches; Ray's token auth follows RAY_AUTH_MODE and RAY_AUTH_TOKEN_PATH (docs/SERVER.md, "
        "'Ray token auth')",
    )
    g.add_argument("--replicas", type=int, default=2, help="replicas, one model each (default: 2)")
    g.add_argument(
        "--max-replicas",
        type=int,
        default=None,
        help="autoscale between --replicas and this many on sessions held (default: no autoscaling)",
    )
    g.add_argument(
        "--target-sessions",
        type=int,
        default=None,
        help="sessions per replica the autoscaler aims at (default: half of --max-sessions)",
    )
    g.add_argument(
        "--replica-mb",
        type=float,
        default=None,
        help="each replica's budget of resident KV memory in MiB: a new session goes to a replica with room "
        "for its --session-mb, 429 when none has (default: none; --max-sessions is per replica)",
    )
    g.add_argument(
        "--replica-cpus", type=float, default=1.0, help="CPUs Ray reserves per replica (default: 1)"
    )
    _add_gpu_arg(g)


def _add_gpu_arg(g) -> None:
    g.add_argument(
        "--replica-gpus",
        type=float,
        default=None,
        help="GPUs Ray reserves per replica (default: 1 with --device cuda, else 0)",
    )


def _serve_ray(args: argparse.Namespace, token: str | None, limits) -> int:
    import dataclasses

    from videokv.server.ray_serve import ServeOptions, serve_cluster

    for name in ("replicas", "max_replicas", "target_sessions"):
        value = getattr(args, name)
        if value is not None and value < 1:
            print(f"videokv serve: --{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    if args.replica_mb is not None and args.replica_mb <= 0:
        print("videokv serve: --replica-mb must be > 0", file=sys.stderr)
        return 2
    session_bytes = None if args.session_mb is None else int(args.session_mb * 2**20)
    replica_bytes = None if args.replica_mb is None else int(args.replica_mb * 2**20)
    if replica_bytes is not None and session_bytes is not None and session_bytes > replica_bytes:
        print(
            "videokv serve: --session-mb is larger than --replica-mb: no session would fit", file=sys.stderr
        )
        return 2
    limit_values = {
        k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(limits).items()
    }
    options = ServeOptions(
        model=args.model,
        data_dir=args.data_dir,
        memory=args.memory,
        memory_set=args.memory_set,
        frame_tokens=_frame_tokens(args),
        device=args.device,
        chunk_frames=args.chunk_frames,
        token=token,
        host=args.host,
        port=args.port,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_sessions=args.max_sessions,
        session_bytes=session_bytes,
        replica_bytes=replica_bytes,
        replicas=args.replicas,
        max_replicas=args.max_replicas,
        target_sessions=args.target_sessions,
        replica_cpus=args.replica_cpus,
        replica_gpus=args.replica_gpus
        if args.replica_gpus is not None
        else (1.0 if (args.device or "").startswith("cuda") else 0.0),
        limits=limit_values,
        store=args.store,
        s3_endpoint=args.s3_endpoint,
        cache_bytes=int(args.cache_mb * 2**20),
    )
    return serve_cluster(options, None if args.ray == "local" else args.ray)


def _limits(args: argparse.Namespace):
    from videokv.server.limits import Limits

    d = Limits()
    values = {
        name: getattr(args, name)
        for name in vars(d)
        if (name.startswith("max_") or name == "refusal_cost") and hasattr(args, name)
    }
    return Limits(
        **values,
        allowed_hosts=tuple(args.allowed_host),
        media_dir=args.media_dir,
        allow_urls=args.allow_urls,
        url_hosts=tuple(args.allow_url_host),
    )


def _frame_tokens(args: argparse.Namespace) -> int:
    return args.frame_tokens or (16 if args.model == "offline" else 64)


def _load_qa(args: argparse.Namespace):
    from videokv.api import VideoQA

    return VideoQA.from_pretrained(
        args.model,
        device=args.device,
        memory=args.memory,
        memory_set=args.memory_set,
        frame_tokens=_frame_tokens(args),
    )


# ---- serve ----------------------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get("VIDEOKV_TOKEN") or None
    if not is_loopback(args.host) and not token:
        print(
            f"videokv serve: refusing to bind {args.host} without a token: anyone who can reach it could use "
            "the model and read the sessions. Pass --token T (or set VIDEOKV_TOKEN), or bind 127.0.0.1.",
            file=sys.stderr,
        )
        return 2
    for name in ("max_upload_mb", "max_sessions"):
        if getattr(args, name) <= 0:
            print(f"videokv serve: --{name.replace('_', '-')} must be > 0", file=sys.stderr)
            return 2
    if args.session_mb is not None and args.session_mb <= 0:
        print("videokv serve: --session-mb must be > 0", file=sys.stderr)
        return 2
    for name in ("chat_idle_s", "read_timeout_s", "keep_alive_s", "cache_mb", "lease_s"):
        if not (math.isfinite(getattr(args, name)) and getattr(args, name) > 0):
            print(f"videokv serve: --{name.replace('_', '-')} must be > 0", file=sys.stderr)
            return 2

    try:
        limits = _limits(args)
        limits.check()
    except ValueError as e:
        print(f"videokv serve: {e}", file=sys.stderr)
        return 2
    if limits.media_dir is not None and not os.path.isdir(limits.media_dir):
        print(f"videokv serve: --media-dir {limits.media_dir} is not a folder", file=sys.stderr)
        return 2

    import uvicorn

    from videokv.presets import get_preset

    get_preset(args.memory)  # an unknown preset fails before the model loads
    problem = _check_store(args)  # and so does a store that cannot be reached or named
    if problem:
        print(f"videokv serve: {problem}", file=sys.stderr)
        return 2
    if args.ray is not None:
        return _serve_ray(args, token, limits)

    from videokv.server.app import create_app
    from videokv.server.connections import timed_h11

    qa = _load_qa(args)
    app = create_app(
        qa,
        args.data_dir,
        token=token,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_sessions=args.max_sessions,
        session_bytes=None if args.session_mb is None else int(args.session_mb * 2**20),
        default_memory=args.memory,
        chunk_frames=args.chunk_frames,
        model_name=args.model,
        limits=limits,
        bound_host=args.host,
        chat_idle_s=args.chat_idle_s,
        **_store_options(args),
    )
    where = f"http://{args.host if ':' not in args.host else f'[{args.host}]'}:{args.port}"
    print(f"videokv serve: {args.model} on {where} (data in {args.data_dir})", file=sys.stderr, flush=True)
    # asyncio + h11 as always (the ray extra installs uvloop and httptools, which uvicorn would pick
    # otherwise), with a read timeout for stalled clients (connections.py)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        timeout_graceful_shutdown=10,
        timeout_keep_alive=args.keep_alive_s,
        loop="asyncio",
        http=timed_h11(args.read_timeout_s),
    )
    return 0


# ---- stream ---------------------------------------------------------------------------------------------
class _Progress:
    """A progress line on stderr, redrawn in place: stream clock, frames, blocks, MiB."""

    def __init__(self, session, source, enabled: bool):
        self.session = session
        self.source = source
        self.enabled = enabled and sys.stderr is not None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.stats: dict = {}
        self.tty = sys.stderr.isatty()

    def line(self) -> str:
        from videokv.api import kv_memory

        s = self.stats
        kv = kv_memory(s)
        return (
            f"[stream {s.get('stream_seconds', 0.0):7.1f}s | {s.get('frames', 0)} frames | "
            f"{s.get('blocks', 0)} blocks | KV {kv['resident_bytes'] / 2**20:.2f} MiB resident, "
            f"{kv['offloaded_bytes'] / 2**20:.2f} MiB offloaded | {self.source.state}]"
        )

    def _run(self) -> None:
        last = ""
        while not self._stop.wait(0.5 if self.tty else 2.0):
            text = self.line()
            if text != last:
                print(
                    ("\r" if self.tty else "") + text,
                    end="" if self.tty else "\n",
                    file=sys.stderr,
                    flush=True,
                )
                last = text

    def start(self) -> None:
        if self.enabled:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self.enabled:
            self._thread.join(5)
            print(("\r" if self.tty else "") + self.line(), file=sys.stderr, flush=True)


def cmd_stream(args: argparse.Namespace) -> int:
    from videokv.cli import check_stream_args
    from videokv.errors import InputError
    from videokv.server.live import LiveSource
    from videokv.server.scheduler import Scheduler
    from videokv.video.decode import probe

    check_stream_args(args)
    if "://" not in args.source:
        probe(args.source)  # a missing or unreadable file fails before the model loads
        if args.transcribe:
            from videokv.video.transcribe import require_audio

            require_audio(args.source)
    if args.model == "offline":
        from videokv.cli import OFFLINE_CLI_NOTICE

        print(OFFLINE_CLI_NOTICE, file=sys.stderr)
    qa = _load_qa(args)
    scheduler = Scheduler()
    session = scheduler.call("stream", qa.session, fps=args.fps)
    progress: _Progress | None = None

    def ingest(chunk) -> None:
        def step() -> None:
            n_frames = sum(1 for it in chunk if hasattr(it, "image"))
            session.add_items(chunk, chunk_frames=max(1, n_frames), frame_interval=1.0 / args.fps)
            session.flush()
            if progress is not None:
                progress.stats = session.stats

        scheduler.call("stream", step)

    source = LiveSource(
        args.source,
        ingest,
        fps=args.fps,
        realtime=args.realtime,
        subtitles=args.subtitles,
        chunk_frames=args.chunk_frames,
        transcribe=args.transcribe,
    )
    progress = _Progress(session, source, not args.quiet and not args.json)
    source.start()
    progress.start()
    try:
        if args.wait:
            source.join()
        if sys.stdin.isatty():
            print(
                "Ask a question about the stream and press Enter (Ctrl-D or 'quit' to end).", file=sys.stderr
            )
        for line in sys.stdin:
            question = line.strip()
            if not question:
                continue
            if question.lower() in ("quit", "exit", ":q"):
                break
            _answer(scheduler, session, question, args)
    except KeyboardInterrupt:
        pass
    finally:
        source.stop()
        source.join(60)
        progress.stop()
        scheduler.close()
    if source.state == "error":
        raise InputError(f"the source {args.source} failed: {source.error}")
    return 0


def _answer(scheduler, session, question: str, args: argparse.Namespace) -> None:
    import json

    from videokv.errors import InputError

    streamed = not args.json

    def on_token(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    if streamed:
        sys.stdout.write(f"Q: {question}\nA: ")
        sys.stdout.flush()
    t0 = time.perf_counter()
    try:
        answer = scheduler.call(
            "stream",
            session.ask,
            question,
            max_new_tokens=args.max_new_tokens,
            on_token=on_token if streamed else None,
        )
    except InputError as e:
        print(f"\nvideokv: {e}", file=sys.stderr)
        return
    if not streamed:
        print(json.dumps(answer.to_dict()), flush=True)
        return
    from videokv.api import kv_memory, kv_text
    from videokv.cli import evidence_lines

    evidence = "".join(f"   {line}\n" for line in evidence_lines(answer.evidence))
    s = answer.stats
    print(
        f"\n{evidence}"
        f"   at stream {s['stream_seconds']:.1f}s | {s['blocks']} blocks | "
        f"{kv_text(kv_memory(s))} | answered in {time.perf_counter() - t0:.2f}s\n",
        flush=True,
    )
