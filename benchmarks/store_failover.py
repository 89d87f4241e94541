"""Memory on an object store: ingest through S3 vs a folder, questions whose blocks come from S3, and the time
from a server's death to its session answering again, at growing stream lengths.

One stream (random frames at `--fps`, `--frame-tokens` visual tokens per frame, the `rekv` preset) is
ingested in chunks of `--chunk` frames, each chunk committed to two journals as the server commits it: one
in a local folder, one in an S3-compatible store (a real SeaweedFS started on loopback unless `--store`
names one). Per chunk, the model's ingest and each commit are timed apart. At each checkpoint
(`--minutes`), a *failover* is measured as the adopting server pays it after a `kill -9` (the lease wait,
a configuration constant, is not included): a new process-side journal on an empty local cache reads the
commit record, recovers, restores the session lazily (commit record, index parts, ingest context; no block
K/V) and answers one question (time to first token and whole answer; the question fetches the blocks it
selects). The same is timed with an eager restore (every block read first) and from the folder. Finally the
question latency with blocks from S3 on a cold cache, a warm cache, and a session with every block resident.

    python benchmarks/store_failover.py                       # 1, 10 and 60 minutes at 0.5 fps
    python benchmarks/store_failover.py --quick
    python benchmarks/store_failover.py --store s3://bucket/prefix --s3-endpoint http://host:8333
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import (  # noqa: E402
    base_parser,
    finish,
    fmt,
    frame_side,
    load_qa,
    log,
    markdown_table,
    median,
    random_frames,
    resolve_args,
)

from videokv.journal import Journal  # noqa: E402
from videokv.storage import LocalBackend, open_backend  # noqa: E402
from videokv.storage.cache import CachedBackend  # noqa: E402

QUESTION = "What happened in the first minute?"


def parse(argv: list[str] | None):
    p = base_parser(__doc__.split("\n")[0], default_model="tiny-qwen2_vl")
    p.add_argument("--minutes", type=float, nargs="+", default=None, help="checkpoints (default: 1 10 60)")
    p.add_argument("--fps", type=float, default=0.5)
    p.add_argument("--frame-tokens", type=int, default=61)
    p.add_argument("--chunk", type=int, default=8, help="frames per commit (the server's --chunk-frames)")
    p.add_argument("--store", default=None, help="an s3:// URL (default: a SeaweedFS started here)")
    p.add_argument("--s3-endpoint", default=None)
    args = resolve_args(p.parse_args(argv), repeats=3, quick_repeats=1)
    if args.minutes is None:
        args.minutes = [0.5, 1.0] if args.quick else [1.0, 10.0, 60.0]
    return args


def start_store(args):
    """The store's URL and endpoint, and a SeaweedFS to stop at the end (None if --store was given)."""
    if args.store:
        return args.store, args.s3_endpoint, None
    from tests.seaweed import Seaweed

    server = Seaweed()
    server.start()
    return f"s3://{server.bucket()}/bench", server.endpoint, server


def timed_answer(session) -> dict:
    first: list[float] = []
    t0 = time.perf_counter()
    answer = session.ask(
        QUESTION, max_new_tokens=8, on_token=lambda _t: first or first.append(time.perf_counter())
    )
    end = time.perf_counter()
    return {"ttft_s": (first[0] if first else end) - t0, "answer_s": end - t0, "text": answer.text}


def failover(qa, url: str, endpoint: str | None, lazy: bool) -> dict:
    """A reader on an empty cache, as an adopting server (its S3 client already made): recover + restore +
    one answer (seconds)."""
    cache = tempfile.mkdtemp(prefix="vkcache-")
    try:
        store = LocalBackend(url)
        if url.startswith("s3://"):
            store = CachedBackend(_client_for(url, endpoint), cache)
        t0 = time.perf_counter()
        journal = Journal(store)
        journal.recover()
        session = journal.load(qa, lazy=lazy)
        restored = time.perf_counter() - t0
        answer = timed_answer(session)
        return {
            "restore_s": restored,
            "to_first_token_s": restored + answer["ttft_s"],
            "to_answer_s": restored + answer["answer_s"],
            "text": answer["text"],
        }
    finally:
        shutil.rmtree(cache, ignore_errors=True)


_CLIENTS: dict = {}


def _client_for(url: str, endpoint: str | None):
    """One S3 backend per URL for the whole run (a server makes its client once)."""
    if url not in _CLIENTS:
        _CLIENTS[url] = open_backend(url, endpoint)
    return _CLIENTS[url]


def checkpoint(qa, session, urls: dict, endpoint: str | None, repeats: int) -> dict:
    out = {}
    cases = {
        "s3 lazy": (urls["s3"], True),
        "s3 eager": (urls["s3"], False),
        "folder lazy": (urls["folder"], True),
    }
    for name, (url, lazy) in cases.items():
        runs = [failover(qa, url, endpoint, lazy) for _ in range(repeats)]
        out[name] = _medians(runs)
    resident = [timed_answer(session) for _ in range(repeats)]
    out["resident answer"] = _medians(resident)
    texts = {case["text"] for case in out.values()}
    out["answers_equal"] = len(texts) == 1  # every restore answers exactly as the session in memory
    return out


def _medians(runs: list[dict]) -> dict:
    out = {k: median([r[k] for r in runs]) for k in runs[0] if k != "text"}
    out["text"] = runs[0]["text"]
    return out


def question_latency(qa, url: str, endpoint: str | None, repeats: int) -> dict:
    """Answers on a restored session: the first (its blocks fetched from S3, cold cache), then warm."""
    cache = tempfile.mkdtemp(prefix="vkcache-")
    try:
        cold, warm = [], []
        for _ in range(repeats):
            shutil.rmtree(cache, ignore_errors=True)
            session = Journal(CachedBackend(_client_for(url, endpoint), cache)).load(qa)
            cold.append(timed_answer(session))
            warm.append(timed_answer(session))
        return {"cold cache": _medians(cold), "fetched once": _medians(warm)}
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    url, endpoint, server = start_store(args)
    folder = Path(tempfile.mkdtemp(prefix="vkbench-"))
    try:
        qa = load_qa(args, frame_tokens=args.frame_tokens, memory="rekv")
        urls = {"s3": f"{url}/journal", "folder": str(folder / "journal")}
        journals = {"s3": Journal(open_backend(urls["s3"], endpoint)), "folder": Journal(urls["folder"])}
        session = qa.session("rekv", fps=args.fps)
        side = frame_side(args.frame_tokens)
        times = {"ingest": 0.0, "s3": 0.0, "folder": 0.0}
        points, done, k = {}, 0, 0
        for minutes in sorted(args.minutes):
            target = int(round(minutes * 60 * args.fps))
            while done < target:
                n = min(args.chunk, target - done)
                t0 = time.perf_counter()
                session.add_frames(
                    random_frames(n, side, seed=k), timestamps=[(done + i) / args.fps for i in range(n)]
                )
                session.flush()
                times["ingest"] += time.perf_counter() - t0
                for name in ("folder", "s3"):
                    t0 = time.perf_counter()
                    journals[name].commit(session, {})
                    times[name] += time.perf_counter() - t0
                done, k = done + n, k + 1
            log(f"{minutes:g} min ({done} frames, {len(journals['s3'].rows)} blocks): failover...")
            points[f"{minutes:g}"] = {
                "frames": done,
                "blocks": journals["s3"].count,
                "index_parts": len(journals["s3"].index),
                "ingest_s": times["ingest"],
                "commit_s3_s": times["s3"],
                "commit_folder_s": times["folder"],
                "failover": checkpoint(qa, session, urls, endpoint, args.repeats),
            }
        latency = question_latency(qa, urls["s3"], endpoint, args.repeats)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if server is not None:
            server.close()
    return report(args, points, latency)


def report(args, points: dict, latency: dict) -> dict:
    keys = list(points)
    first, last = points[keys[0]], points[keys[-1]]
    ingest_ratio = (last["ingest_s"] + last["commit_s3_s"]) / (last["ingest_s"] + last["commit_folder_s"])
    rows = []
    for key, p in points.items():
        f = p["failover"]
        rows.append(
            [
                key,
                p["frames"],
                p["blocks"],
                p["index_parts"],
                fmt(f["s3 lazy"]["restore_s"]),
                fmt(f["s3 lazy"]["to_first_token_s"]),
                fmt(f["s3 lazy"]["to_answer_s"]),
                fmt(f["s3 eager"]["to_answer_s"]),
                fmt(f["folder lazy"]["to_answer_s"]),
                fmt(f["resident answer"]["answer_s"]),
            ]
        )
    table = markdown_table(
        [
            "minutes",
            "frames",
            "blocks",
            "index parts",
            "s3 lazy restore s",
            "s3 lazy to 1st token s",
            "s3 lazy to answer s",
            "s3 eager to answer s",
            "folder lazy to answer s",
            "resident answer s",
        ],
        rows,
    )
    growth = last["failover"]["s3 lazy"]["to_answer_s"] / first["failover"]["s3 lazy"]["to_answer_s"]
    eager = last["failover"]["s3 eager"]["to_answer_s"] / first["failover"]["s3 eager"]["to_answer_s"]
    table += (
        f"\n\ningest + commit through s3 / through a folder: {ingest_ratio:.2f}x "
        f"(commits alone: s3 {last['commit_s3_s']:.1f} s, folder {last['commit_folder_s']:.1f} s, "
        f"model {last['ingest_s']:.1f} s)\n"
        f"kill -9 to answering at {keys[-1]} min / at {keys[0]} min: lazy {growth:.2f}x, eager {eager:.2f}x\n"
        f"question with blocks from s3: cold cache {latency['cold cache']['answer_s']:.3f} s, "
        f"fetched once {latency['fetched once']['answer_s']:.3f} s"
    )
    results = {
        "points": points,
        "question_latency": latency,
        "ingest_ratio_s3_over_folder": ingest_ratio,
        "failover_growth_lazy": growth,
        "failover_growth_eager": eager,
    }
    return finish(args, "store_failover", results, table)


if __name__ == "__main__":
    main()
