"""Scaling of `videokv serve --ray`: one load on 1, 2 and 3 replicas, failover time, sessions per replica.

A real local Ray cluster is started (a head and `max(--replicas) - 1` worker nodes, `ray start` processes on
this machine, one CPU each; tests/server/ray_cluster.py) and, for each replica count, `videokv serve --ray`
with the tiny model. The load, identical for every replica count:

- ingest: `--sessions` sessions each push `--frames` frames (56x84, 4 per request) as fast as the cluster
  takes them, all sessions at once; throughput = all frames / wall time;
- questions: then one thread per session asks `--questions` questions in turn (`max_new_tokens` 8), all
  sessions at once; latency p50 / p95 over all of them.

Then, on 2 replicas: `--kills` times, a session pulling a clip at stream pace has its replica killed with
SIGKILL; the time from the kill to the session answering a question again (client side: the router holds the
question while the session moves) and the registry's own time to re-home it. Finally, with `--session-mb` and
`--replica-mb` budgets, sessions are created until the cluster answers 429: how many each replica holds, and
each one's peak resident bytes after ingest against its budget.

    python benchmarks/ray_scale.py --out benchmarks/results/ray_scale.json     # about 6 minutes here
    python benchmarks/ray_scale.py --replicas 1 2 --sessions 4 --frames 16     # shorter
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import json
import os
import platform
import signal
import statistics
import sys
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.server.conftest import TOKEN, make_clip  # noqa: E402
from tests.server.ray_cluster import RayCluster  # noqa: E402

HEADERS = {"Authorization": f"Bearer {TOKEN}"}


def frames_body(n: int, seed: int) -> dict:
    frames = np.random.default_rng(seed).integers(0, 256, (n, 56, 84, 3), dtype=np.uint8)
    return {"raw": base64.b64encode(frames.tobytes()).decode(), "shape": list(frames.shape)}


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def run_load(url: str, sessions: int, frames: int, questions: int) -> dict:
    with httpx.Client(base_url=url, headers=HEADERS, timeout=600) as c:
        ids = [
            c.post("/v1/sessions", json={"memory": "rekv", "fps": 2.0}).json()["id"] for _ in range(sessions)
        ]
        holders = {c.get(f"/v1/sessions/{s}").json()["replica"]["id"] for s in ids}

    def ingest(k: int) -> int:
        with httpx.Client(base_url=url, headers=HEADERS, timeout=600) as c:
            for j in range(0, frames, 4):
                r = c.post(f"/v1/sessions/{ids[k]}/frames", json=frames_body(min(4, frames - j), 100 * k + j))
                r.raise_for_status()
        return frames

    def ask(k: int) -> list[float]:
        out = []
        with httpx.Client(base_url=url, headers=HEADERS, timeout=600) as c:
            for q in range(questions):
                t = time.perf_counter()
                body = {"question": f"what happens at second {q}?", "max_new_tokens": 8}
                c.post(f"/v1/sessions/{ids[k]}/ask", json=body).raise_for_status()
                out.append(time.perf_counter() - t)
        return out

    with concurrent.futures.ThreadPoolExecutor(sessions) as pool:
        t0 = time.perf_counter()
        total = sum(pool.map(ingest, range(sessions)))
        ingest_s = time.perf_counter() - t0
        lat = [x for xs in pool.map(ask, range(sessions)) for x in xs]
    with httpx.Client(base_url=url, headers=HEADERS, timeout=600) as c:
        for s in ids:
            c.delete(f"/v1/sessions/{s}")
    return {
        "replicas_used": len(holders),
        "frames": total,
        "ingest_s": round(ingest_s, 3),
        "ingest_fps": round(total / ingest_s, 2),
        "questions": len(lat),
        "p50_s": round(statistics.median(lat), 3),
        "p95_s": round(pct(lat, 0.95), 3),
    }


def run_failover(url: str, clip: Path, kills: int) -> list[dict]:
    out = []
    with httpx.Client(base_url=url, headers=HEADERS, timeout=600) as c:
        for k in range(kills):
            while len(c.get("/v1/cluster").json()["replicas"]) < 2:  # Serve's replacement of the last one
                time.sleep(0.5)
            s = c.post("/v1/sessions", json={"memory": "rekv", "fps": 2.0}).json()
            sid, pid = s["id"], s["replica"]["pid"]
            c.post(f"/v1/sessions/{sid}/source", json={"url": str(clip), "fps": 2.0, "realtime": True})
            while c.get(f"/v1/sessions/{sid}").json()["frames"] < 8:
                time.sleep(0.05)
            os.kill(pid, signal.SIGKILL)
            t0 = time.perf_counter()
            while True:
                r = c.post(f"/v1/sessions/{sid}/ask", json={"question": "what?", "max_new_tokens": 2})
                if r.status_code == 200:
                    break
                time.sleep(0.05)
            answered = time.perf_counter() - t0
            rec = c.get("/v1/cluster").json()["failovers"][-1]
            out.append(
                {
                    "kill": k,
                    "answered_again_s": round(answered, 3),
                    "registry_recovered_s": rec["recovered_s"],
                }
            )
            c.delete(f"/v1/sessions/{sid}")
    return out


def run_budget(url: str, frames: int, session_mb: float) -> dict:
    with httpx.Client(base_url=url, headers=HEADERS, timeout=600) as c:
        ids = []
        while True:
            r = c.post("/v1/sessions", json={"memory": "rekv", "fps": 2.0})
            if r.status_code == 429:
                break
            r.raise_for_status()
            ids.append(r.json()["id"])
            assert len(ids) < 200
        peak = 0
        for k, sid in enumerate(ids):
            for j in range(0, frames, 4):
                st = c.post(f"/v1/sessions/{sid}/frames", json=frames_body(4, 7 * k + j)).json()["status"]
                peak = max(peak, st["memory_bytes"])
        per = {r["id"]: len(r["sessions"]) for r in c.get("/v1/cluster").json()["replicas"]}
        for sid in ids:
            c.delete(f"/v1/sessions/{sid}")
    return {
        "sessions_admitted": len(ids),
        "per_replica": sorted(per.values()),
        "peak_session_resident_bytes": peak,
        "session_budget_bytes": int(session_mb * 2**20),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--sessions", type=int, default=6)
    ap.add_argument("--frames", type=int, default=24, help="frames each session pushes")
    ap.add_argument("--questions", type=int, default=4, help="questions each session is asked")
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--session-mb", type=float, default=0.25)
    ap.add_argument("--replica-mb", type=float, default=1.0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    cluster = RayCluster(workers=max(max(args.replicas), 2) - 1)
    results: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} shared CPUs, Python {platform.python_version()}",
        "load": {"sessions": args.sessions, "frames": args.frames, "questions": args.questions},
        "scaling": {},
    }
    try:
        cluster.start()
        base = cluster.root
        clip = make_clip(base / "five.mp4", seconds=30, fps=5)
        for n in args.replicas:
            data = base / f"data{n}"
            data.mkdir()
            url = cluster.serve(data, ["--chunk-frames", "4", "--max-sessions", "64"], replicas=n)
            results["scaling"][n] = run_load(url, args.sessions, args.frames, args.questions)
            print(f"{n} replica(s): {results['scaling'][n]}", file=sys.stderr, flush=True)
            cluster.stop_serve()
        data = base / "data-failover"
        data.mkdir()
        extra = ["--chunk-frames", "4", "--media-dir", str(base)]
        extra += ["--session-mb", str(args.session_mb), "--replica-mb", str(args.replica_mb)]
        url = cluster.serve(data, extra, replicas=2)
        results["failover"] = run_failover(url, clip, args.kills)
        print(f"failover: {results['failover']}", file=sys.stderr, flush=True)
        while len(httpx.get(f"{url}/v1/cluster", headers=HEADERS).json()["replicas"]) < 2:
            time.sleep(0.5)
        results["budget"] = run_budget(url, args.frames, args.session_mb)
        results["budget"]["replica_budget_bytes"] = int(args.replica_mb * 2**20)
    finally:
        cluster.stop()
    one = results["scaling"].get(1) or next(iter(results["scaling"].values()))
    print("| replicas | ingest frames/s | ratio | question p50 s | p95 s |")
    print("|---|---|---|---|---|")
    for n, r in results["scaling"].items():
        ratio = r["ingest_fps"] / one["ingest_fps"]
        print(f"| {n} | {r['ingest_fps']} | {ratio:.2f} | {r['p50_s']} | {r['p95_s']} |")
    print(json.dumps({k: results[k] for k in ("failover", "budget") if k in results}, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
