"""`videokv bench run`: every preset over every video of a dataset, one record per question, resumable.

Layout of the output folder:
- `run.json`: the settings (dataset, model, fps, ...), the command, the machine and the date; a later run into
  the same folder must use the same settings (it resumes), and its command is added to `resumed`.
- `results/<preset>.jsonl`: one JSON record per question, appended (and flushed to disk) as soon as the
  question is answered. A crash or Ctrl-C loses nothing already written; a half-written last line is dropped
  when the file is read back.
- `logs/<preset>--<video_id>.log`: the stderr of each job.

Each (preset, video) is a job in its own process (`videokv.bench.worker`): its peak memory is its own, and a
crash in one job does not stop the others.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from videokv.bench.dataset import load_dataset
from videokv.errors import InputError
from videokv.presets import get_preset


@dataclass
class RunSettings:
    dataset: str
    model: str = "offline"
    fps: float = 0.5
    frame_tokens: int = 16
    chunk_frames: int = 8
    max_new_tokens: int = 32
    device: str | None = None
    memory_set: list[str] = field(default_factory=list)
    evidence_kind: str | None = None
    transcribe: str | None = None  # transcribe the audio (a language code, or "auto")


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def read_records(path: Path) -> list[dict]:
    """The complete records of a results file; a torn last line (a crash mid-write) is cut off the file."""
    if not path.exists():
        return []
    records, good = [], 0
    with open(path, "rb") as f:
        data = f.read()
    for line in data.splitlines(keepends=True):
        try:
            if not line.endswith(b"\n"):
                raise ValueError("torn line")
            records.append(json.loads(line))
        except ValueError:
            break
        good += len(line)
    if good < len(data):
        with open(path, "r+b") as f:
            f.truncate(good)
    return records


def _append(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _check_settings(out: Path, settings: RunSettings, command: str | None) -> None:
    run_file = out / "run.json"
    mine = asdict(settings)
    if run_file.exists():
        theirs = json.loads(run_file.read_text()).get("settings", {})
        diff = {k: (theirs.get(k), v) for k, v in mine.items() if theirs.get(k) != v}
        if diff:
            what = ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())
            raise InputError(
                f"{out} holds a run with other settings ({what}); "
                "use another --out folder or the same settings to resume"
            )
        _record_resumed(run_file, command)
        return
    run_file.write_text(
        json.dumps(
            {
                "settings": mine,
                "command": command,
                "machine": machine(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            },
            indent=1,
        )
    )


def _record_resumed(run_file: Path, command: str | None) -> None:
    """A later command into the same folder (other videos or presets, a resume) is added to run.json's
    `resumed` list, so that the report names every command whose records it holds."""
    meta = json.loads(run_file.read_text())
    if not command or command == meta.get("command") or command in meta.get("resumed", []):
        return
    meta.setdefault("resumed", []).append(command)
    tmp = run_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, run_file)


def run_benchmark(
    dataset: str | Path,
    presets: Sequence[str],
    out: str | Path,
    settings: RunSettings | None = None,
    videos: Sequence[str] | None = None,
    progress: bool = True,
    command: str | None = None,
) -> dict[str, list[dict]]:
    """Run (or resume) `presets` over `dataset`; returns the records per preset."""
    dataset = Path(dataset).resolve()
    entries = load_dataset(dataset)
    if videos:
        unknown = sorted(set(videos) - {e.video_id for e in entries})
        if unknown:
            raise InputError(f"no video {', '.join(map(repr, unknown))} in {dataset}")
        entries = [e for e in entries if e.video_id in set(videos)]
    for p in presets:
        get_preset(p)  # an unknown preset fails before any work
    settings = settings or RunSettings(dataset=str(dataset))
    settings.dataset = str(dataset)
    out = Path(out)
    (out / "results").mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    _check_settings(out, settings, command)

    done: dict[str, set[tuple[str, int]]] = {}
    total = n_done = 0
    for p in presets:
        recs = read_records(out / "results" / f"{p}.jsonl")
        done[p] = {(r["video_id"], r["q"]) for r in recs}
        for e in entries:
            total += len(e.conversations)
            n_done += sum((e.video_id, i) in done[p] for i in range(len(e.conversations)))

    from tqdm import tqdm

    bar = tqdm(total=total, initial=n_done, desc="questions", unit="q", file=sys.stderr, disable=not progress)
    failures: list[str] = []
    try:
        for p in presets:
            results = out / "results" / f"{p}.jsonl"
            for e in entries:
                todo = [i for i in range(len(e.conversations)) if (e.video_id, i) not in done[p]]
                if not todo:
                    continue
                bar.set_postfix_str(f"{p} / {e.video_id}")
                job = {
                    **asdict(settings),
                    "preset": p,
                    "video_id": e.video_id,
                    "done": sorted(i for (v, i) in done[p] if v == e.video_id),
                }
                error = _run_job(job, results, out / "logs" / f"{p}--{e.video_id}.log", bar)
                if error:
                    failures.append(error)
    finally:
        bar.close()
    if failures:
        raise InputError(f"{len(failures)} job(s) failed (run again to retry them):\n" + "\n".join(failures))
    return {p: read_records(out / "results" / f"{p}.jsonl") for p in presets}


def _run_job(job: dict, results: Path, log: Path, bar) -> str | None:
    """Run one job; its records are appended as they come. Returns an error message if it failed."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "a") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "videokv.bench.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
        )
        try:
            proc.stdin.write(json.dumps(job))
            proc.stdin.close()
            for line in proc.stdout:
                record = json.loads(line)
                _append(results, record)
                bar.update(1)
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    if rc != 0:
        tail = log.read_text().strip().splitlines()[-3:]
        return f"{job['preset']} / {job['video_id']}: exit {rc}, see {log}: " + " | ".join(tail)
    return None
