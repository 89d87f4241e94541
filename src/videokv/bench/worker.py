"""One benchmark job in its own process: one memory preset over one video, answering its questions in time.

The stream is ingested once, in order, up to each question's `end_time`, then the question is asked (the
question never enters memory, so the stream continues). One JSON record per question is written to stdout as
soon as it is answered. Run by `videokv.bench.runner`: `python -m videokv.bench.worker < job.json`.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from videokv.api import Frame, VideoQA
from videokv.bench.metrics import evidence_recall, is_correct
from videokv.video.subtitles import TextEvent

SLICE_SECONDS = 120.0  # ingest between questions in slices of this much stream time
FIRST_SLICE = 10.0  # the first slice measures the stream's tokens per second


def peak_rss_bytes() -> int:
    """The process's peak resident set size (VmHWM), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _Cursor:
    """A stream of items consumed up to a time, one item of look-ahead."""

    def __init__(self, items: Iterator[Frame | TextEvent]):
        self._items = items
        self._next: Frame | TextEvent | None = None
        self._done = False

    def _peek(self) -> Frame | TextEvent | None:
        if self._next is None and not self._done:
            self._next = next(self._items, None)
            self._done = self._next is None
        return self._next

    def until(self, t: float) -> Iterator[Frame | TextEvent]:
        while (item := self._peek()) is not None:
            at = item.t if isinstance(item, Frame) else item.start
            if at >= t:
                return
            self._next = None
            yield item


def run_job(job: dict, emit: Callable[[dict], None], qa: VideoQA | None = None) -> None:
    """Run `job` (preset, video entry, settings, the question indices already done) and `emit` records.
    `qa`: an already loaded model (default: load `job["model"]`)."""
    from videokv.api import video_items
    from videokv.bench.dataset import load_dataset

    entry = next(e for e in load_dataset(job["dataset"]) if e.video_id == job["video_id"])
    if qa is None:
        # the benchmark's streams carry their facts in subtitles: the system prompt says so (as in RESULTS.md)
        from videokv.api import STREAM_SYSTEM

        qa = VideoQA.from_pretrained(
            job["model"], device=job.get("device"), frame_tokens=job["frame_tokens"], system=STREAM_SYSTEM
        )
    session = qa.session(memory=job["preset"], memory_set=job.get("memory_set") or None, fps=job["fps"])
    max_tokens = qa.max_context
    speech = job.get("transcribe") or False
    items = _Cursor(video_items(entry.video_path, job["fps"], entry.subtitles, transcribe=speech))
    done = set(job.get("done", []))
    kind = job.get("evidence_kind")
    order = sorted(range(len(entry.conversations)), key=lambda i: entry.conversations[i].end_time)
    skip_reason = None
    reached = 0.0  # stream time up to which items have been ingested

    def over_context(until: float) -> str | None:
        """`full` cannot hold more than the model's context: estimate the tokens at `until` first."""
        if job["preset"] != "full" or not max_tokens or session.clock <= 0:
            return None
        stats = session.stats
        expected = stats["memory_tokens"] + stats["stream_tokens"] / session.clock * (until - session.clock)
        if expected <= max_tokens:
            return None
        return (
            f"the stream up to {until:.0f}s (~{expected:.0f} tokens) exceeds the model's "
            f"{max_tokens}-token context"
        )

    for i in order:
        conv = entry.conversations[i]
        base = {"preset": job["preset"], "video_id": entry.video_id, "q": i, "time": conv.end_time}
        t0 = time.perf_counter()
        while skip_reason is None and reached < conv.end_time:
            # ingest in slices, so that `full` stops before it passes the context rather than after
            skip_reason = over_context(conv.end_time)
            if skip_reason is None:
                step = min(conv.end_time, reached + (SLICE_SECONDS if session.clock > 0 else FIRST_SLICE))
                session.add_items(items.until(step), chunk_frames=job.get("chunk_frames", 8))
                reached = step
        if skip_reason is not None:
            if i not in done:
                emit({**base, "skipped": skip_reason, "question": conv.question, "task": conv.task})
            continue
        wall_ingest = time.perf_counter() - t0
        if i in done:
            continue
        answer = session.ask(
            conv.question,
            choices=list(conv.choices) if conv.choices else None,
            max_new_tokens=job.get("max_new_tokens", 32),
        )
        attended = [(e.t0, e.t1) for e in answer.evidence if kind is None or kind in e.kind.split("+")]
        s = answer.stats
        emit(
            {
                **base,
                "question": conv.question,
                "question_type": conv.question_type,
                "task": conv.task,
                "gold": conv.answer,
                "choices": list(conv.choices) if conv.choices else None,
                "prediction": answer.text,
                "choice": answer.choice,
                "correct": is_correct(
                    answer.text,
                    conv.answer,
                    conv.choices,
                    answer.choice,
                    conv.answer_index,
                    conv.task,
                ),
                "evidence_recall": evidence_recall(conv.evidence, attended),
                "evidence": [[e.t0, e.t1, e.kind, e.level] for e in answer.evidence],
                "stream_seconds": s["stream_seconds"],
                "stream_tokens": s["stream_tokens"],
                "memory_tokens": s["memory_tokens"],
                "resident_bytes": s["memory_bytes"],
                "offloaded_bytes": s.get("offloaded_bytes", 0),
                # memory presets also hold the ingest context (sinks + the recent window) besides the store
                "ingest_context_bytes": s.get("ingest_context_bytes", 0),
                "context_tokens": s["context_tokens"],
                "peak_rss_bytes": peak_rss_bytes(),
                "ingest_fps": round(s["frames"] / s["ingest_s"], 3) if s["ingest_s"] else None,
                "ingest_wall_s": round(wall_ingest, 3),
                "ttft_s": round(s["retrieval_s"] + s["ttft_s"], 4),
                "answer_s": round(s.get("prefill_s", 0) + s.get("decode_s", 0) + s["retrieval_s"], 4),
                "retrieval_s": s["retrieval_s"],
            }
        )


def main() -> int:
    job = json.loads(sys.stdin.read())
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    def emit(record: dict) -> None:
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()

    run_job(job, emit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
