"""A fair queue in front of one model: one worker thread, per-session FIFO queues, short jobs first, then
fair by model time.

Every piece of model work (a chunk of ingest, a question) is one job. Jobs of one session run in the order
they were submitted. A job that returns a generator (a question: `Session.ask_steps` yields after its
retrieval, between the prefill chunks of a long prompt and between decoding steps) runs in slices of
`slice_s` seconds of model time and goes back to the head of its session's queue after each, so a long
answer (1024 tokens) holds the model for a slice at a time, not for its whole length.

Which session goes next: the one whose next job has attained the least service *by levels*, then the one
whose session has used the least model time. A job starts at level 0 and moves down a level each time the
steps it has run (a sliced job's yields: retrieval, prefill chunks, decoding steps) pass `quantum`, 4x,
16x, ... that (a multi-level feedback queue in least-attained-service order, as FastServe schedules LLM
serving, Wu et al. 2023, arXiv:2305.05920): a short question or an ingest chunk goes before the next slice
of a long answer that is already under way, whichever session has used more, so one long answer (or eight
of them) cannot double the latency of the short questions beside it. A job moves back up a level for every
`age` pieces of other work that ran while it waited (past level 0, ahead of fresh jobs), so a long answer
keeps moving, a slice at a time, under any load of short ones. Levels and aging count events (steps run,
pieces run), not seconds: which job goes next does not depend on how fast the machine is, or on what else
runs on it. Within a level the session that has used the least model time goes next (virtual time, as in
fair-share CPU schedulers); a session that gets work after being idle joins no further behind than the
least used waiting one less `credit_s`, so it cannot bank idle time. Sessions with equal loads take turns.
A long ingest is submitted chunk by chunk, so a question on another session waits for at most about one
chunk of it.

A job whose generator raises between steps ends with that error: a question whose client has gone stops at
its next step (`SessionManager.ask`). `forget(key, error)` ends a key's waiting jobs with `error()` (a
deleted session's requests get a clear error, not a cancellation).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import inspect
import os
import threading
import time
from collections.abc import Callable
from typing import Any


class SchedulerClosed(RuntimeError):
    """The scheduler was shut down; no more jobs run."""


class _Resume:
    """A sliced job's generator, queued again after a slice: the steps it has run, and the scheduler's piece
    count when it was queued (what it has waited is counted in pieces of work, not in seconds)."""

    def __init__(self, steps, done: int, queued: int) -> None:
        self.steps = steps
        self.done = done
        self.queued = queued


def _drop(job: tuple, error: BaseException) -> None:
    """End a waiting job with `error` (a sliced one's generator is closed first)."""
    future, fn = job[0], job[1]
    if isinstance(fn, _Resume):
        fn.steps.close()
    if not future.done():
        future.set_exception(error)


class Scheduler:
    """Runs callables on a single worker thread, fairly across keys (session ids)."""

    def __init__(
        self,
        name: str = "videokv-model",
        slice_s: float = 0.02,
        credit_s: float = 1.0,
        quantum: int = 32,
        age: int = 64,
        levels: int = 4,
    ) -> None:
        if quantum < 1 or age < 1 or levels < 1:
            raise ValueError(f"quantum, age and levels must be >= 1; got {quantum}, {age}, {levels}")
        self.slice_s = slice_s
        self.credit_s = credit_s
        self.quantum = quantum  # a job stays at level 0 for this many steps, level 1 for 4x, ...
        self.age = age  # a waiting job moves up a level per this many pieces of other work run meanwhile
        self.levels = levels
        self.pieces = 0  # pieces of work picked so far: the clock that aging counts
        # model seconds each session has used (virtual time): the waiting session with the least goes next
        self._used: dict[str, float] = {}
        self._floor = 0.0  # the virtual time of the job run last
        self._queues: dict[str, collections.deque] = {}
        self._ring: collections.deque[str] = collections.deque()  # keys with pending jobs, in turn order
        self._cond = threading.Condition()
        self._closed = False
        self.jobs_run = 0
        # VIDEOKV_TRACE_JOBS=<file>: one line per piece of model work (start, session, job, seconds, job id,
        # when the job was submitted), for finding what holds the model (benchmarks/load_test.py --trace-jobs)
        trace = os.environ.get("VIDEOKV_TRACE_JOBS")
        self._trace = open(trace, "a", buffering=1) if trace else None  # noqa: SIM115 (closed in close)
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    # ---- submitting -----------------------------------------------------------------------------------
    def submit(
        self, key: str, fn: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future:
        """Queue `fn(*args, **kwargs)` behind `key`'s earlier jobs; returns its Future."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.submitted = time.monotonic()  # type: ignore[attr-defined]  (for the trace)
        with self._cond:
            if self._closed:
                raise SchedulerClosed("the model scheduler is shut down")
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = collections.deque()
            if not queue:
                self._activate(key)
            queue.append((future, fn, args, kwargs))
            self._cond.notify()
        return future

    def call(self, key: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Submit and wait (from a thread that is not the worker); returns the result or raises."""
        if threading.current_thread() is self._thread:
            return fn(*args, **kwargs)
        return self.submit(key, fn, *args, **kwargs).result()

    async def run(self, key: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Submit and await (from the event loop)."""
        return await asyncio.wrap_future(self.submit(key, fn, *args, **kwargs))

    def pending(self, key: str | None = None) -> int:
        """Jobs waiting (for `key`, or in all)."""
        with self._cond:
            if key is not None:
                return len(self._queues.get(key, ()))
            return sum(len(q) for q in self._queues.values())

    def forget(self, key: str, error: Callable[[], BaseException] | None = None) -> None:
        """End `key`'s waiting jobs with `error()` (default: SchedulerClosed, the session is gone); a running
        job finishes its piece (a sliced one then ends with SchedulerClosed)."""
        make = error or (lambda: SchedulerClosed("the session is gone"))
        with self._cond:
            queue = self._queues.pop(key, None)
            self._used.pop(key, None)
            if key in self._ring:
                self._ring.remove(key)
        for job in queue or ():
            _drop(job, make())

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop taking jobs, cancel waiting ones, and let the running one finish."""
        with self._cond:
            self._closed = True
            queues = list(self._queues.values())
            self._queues.clear()
            self._ring.clear()
            self._cond.notify_all()
        for queue in queues:
            for job in queue:
                _drop(job, SchedulerClosed("the model scheduler is shut down"))
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        if self._trace is not None:
            self._trace.close()

    # ---- the worker -----------------------------------------------------------------------------------
    def _next(self) -> tuple | None:
        with self._cond:
            while not self._ring and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            # short jobs first (by level), then the least used session; ties: the first in turn order
            key = min(self._ring, key=lambda k: (self._level(self._queues[k][0][1]), self._used[k]))
            self.pieces += 1
            self._ring.remove(key)
            self._floor = self._used[key]
            queue = self._queues[key]
            job = queue.popleft()
            if queue:
                self._ring.append(key)  # its next job waits for every other session's turn
            else:
                del self._queues[key]
            return key, *job

    def _level(self, fn: Any) -> int:
        """A queued job's level: 0 for a job not started, one more for each time the steps it has run pass
        quantum x 4^n, one less for each `age` pieces of other work run since its last slice (below 0: a
        job that has waited long enough goes before fresh ones, for a slice). Counts only: no clock."""
        if not isinstance(fn, _Resume):
            return 0
        level, bound = 0, self.quantum
        while fn.done >= bound and level < self.levels - 1:
            level, bound = level + 1, bound * 4
        return level - (self.pieces - fn.queued) // self.age

    def _activate(self, key: str) -> None:
        """A session gets pending work: it joins the waiting ones, no further behind than the least used
        of them less `credit_s` (a session that was idle does not bank its idle time, but a short question
        arriving beside a busy session runs before the busy one's next slice)."""
        active = [self._used[k] for k in self._ring]
        floor = min(active) if active else self._floor
        self._used[key] = max(self._used.get(key, float("-inf")), floor - self.credit_s)
        self._ring.append(key)

    def _requeue(self, key: str, future: concurrent.futures.Future, steps, done: int) -> None:
        """A sliced job goes back to the head of its session's queue; the session to the back of the ring."""
        with self._cond:
            if self._closed or key not in self._used:  # shut down, or the session is gone (forget)
                steps.close()
                future.set_exception(
                    SchedulerClosed("the model scheduler is shut down or the session is gone")
                )
                return
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = collections.deque()
            if not queue:
                self._ring.append(key)  # charged for its slice already: no credit
            queue.appendleft((future, _Resume(steps, done, self.pieces), (), {}))
            self._cond.notify()

    def _work(self) -> None:
        while True:
            job = self._next()
            if job is None:
                return
            key, future, fn, args, kwargs = job
            t0 = time.monotonic()
            done = fn.done if isinstance(fn, _Resume) else 0
            if not isinstance(fn, _Resume) and not future.set_running_or_notify_cancel():
                continue
            try:
                if isinstance(fn, _Resume):
                    steps = fn.steps
                else:
                    steps = fn(*args, **kwargs)
                    if not inspect.isgenerator(steps):
                        future.set_result(steps)
                        continue
                until = time.monotonic() + self.slice_s
                while True:  # a slice: at least one step, then steps until slice_s has passed
                    next(steps)
                    done += 1
                    if time.monotonic() >= until:
                        break
                self._requeue(key, future, steps, done)
            except StopIteration as stop:
                future.set_result(stop.value)
            except BaseException as e:  # the job's error belongs to whoever waits on it
                future.set_exception(e)
            finally:
                self.jobs_run += 1
                took = time.monotonic() - t0
                with self._cond:
                    if key in self._used:
                        self._used[key] += took
                if self._trace is not None:  # closed only after this thread stops (or close timed out)
                    self._write_trace(key, fn, future, t0, took, done)

    def _write_trace(
        self, key: str, fn: Any, future: concurrent.futures.Future, t0: float, took: float, done: int
    ) -> None:
        """One line of the job trace: start, session, job, seconds, job id, submitted, the job's steps so
        far (a sliced job's; 0 for a plain one)."""
        label = getattr(fn.steps if isinstance(fn, _Resume) else fn, "__qualname__", "?")
        with contextlib.suppress(ValueError):
            self._trace.write(
                f"{t0:.4f}\t{key}\t{label}\t{took:.5f}\t{id(future)}\t{future.submitted:.4f}\t{done}\n"
            )
