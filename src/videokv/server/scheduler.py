"""A fair queue in front of one model: one worker thread, per-session FIFO queues, fair by model time.

Every piece of model work (a chunk of ingest, a question) is one job. Jobs of one session run in the order
they were submitted. Of the sessions with pending jobs, the one that has used the least model time goes
next (virtual time, as in fair-share CPU schedulers); a session that gets work after being idle joins no
further behind than the least used waiting one less `credit_s`, so it cannot bank idle time, but a short
question beside a busy session runs before the busy one's next slice. Sessions with equal loads take
turns. A long ingest is submitted chunk by chunk, so a question on another session waits for at most
about one chunk of it. A job that returns a generator (a question: `Session.ask_steps` yields after its
retrieval, between the prefill chunks of a long prompt and between decoding steps) runs in slices of
`slice_s` seconds of model time and goes back to the head of its session's queue after each, so a long
answer (1024 tokens) holds the model for a slice at a time, not for its whole length.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import inspect
import threading
import time
from collections.abc import Callable
from typing import Any


class SchedulerClosed(RuntimeError):
    """The scheduler was shut down; no more jobs run."""


class _Resume:
    """A sliced job's generator, queued again after a slice."""

    def __init__(self, steps) -> None:
        self.steps = steps


def _drop(job: tuple, why: str) -> None:
    """Cancel a waiting job; a sliced one (already running) ends with SchedulerClosed."""
    future, fn = job[0], job[1]
    if isinstance(fn, _Resume):
        fn.steps.close()
        future.set_exception(SchedulerClosed(why))
    else:
        future.cancel()


class Scheduler:
    """Runs callables on a single worker thread, fairly across keys (session ids)."""

    def __init__(self, name: str = "videokv-model", slice_s: float = 0.02, credit_s: float = 1.0) -> None:
        self.slice_s = slice_s
        self.credit_s = credit_s
        # model seconds each session has used (virtual time): the waiting session with the least goes next
        self._used: dict[str, float] = {}
        self._floor = 0.0  # the virtual time of the job run last
        self._queues: dict[str, collections.deque] = {}
        self._ring: collections.deque[str] = collections.deque()  # keys with pending jobs, in turn order
        self._cond = threading.Condition()
        self._closed = False
        self.jobs_run = 0
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    # ---- submitting -----------------------------------------------------------------------------------
    def submit(
        self, key: str, fn: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future:
        """Queue `fn(*args, **kwargs)` behind `key`'s earlier jobs; returns its Future."""
        future: concurrent.futures.Future = concurrent.futures.Future()
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

    def forget(self, key: str) -> None:
        """Cancel `key`'s waiting jobs (the session is gone); a running job finishes."""
        with self._cond:
            queue = self._queues.pop(key, None)
            self._used.pop(key, None)
            if key in self._ring:
                self._ring.remove(key)
        for job in queue or ():
            _drop(job, "the session is gone")

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
                _drop(job, "the model scheduler is shut down")
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # ---- the worker -----------------------------------------------------------------------------------
    def _next(self) -> tuple | None:
        with self._cond:
            while not self._ring and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            key = min(self._ring, key=self._used.__getitem__)  # ties: the first in turn order
            self._ring.remove(key)
            self._floor = self._used[key]
            queue = self._queues[key]
            job = queue.popleft()
            if queue:
                self._ring.append(key)  # its next job waits for every other session's turn
            else:
                del self._queues[key]
            return key, *job

    def _activate(self, key: str) -> None:
        """A session gets pending work: it joins the waiting ones, no further behind than the least used
        of them less `credit_s` (a session that was idle does not bank its idle time, but a short question
        arriving beside a busy session runs before the busy one's next slice)."""
        active = [self._used[k] for k in self._ring]
        floor = min(active) if active else self._floor
        self._used[key] = max(self._used.get(key, float("-inf")), floor - self.credit_s)
        self._ring.append(key)

    def _requeue(self, key: str, future: concurrent.futures.Future, steps) -> None:
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
            queue.appendleft((future, _Resume(steps), (), {}))
            self._cond.notify()

    def _work(self) -> None:
        while True:
            job = self._next()
            if job is None:
                return
            key, future, fn, args, kwargs = job
            t0 = time.monotonic()
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
                while time.monotonic() < until:
                    next(steps)
                self._requeue(key, future, steps)
            except StopIteration as stop:
                future.set_result(stop.value)
            except BaseException as e:  # the job's error belongs to whoever waits on it
                future.set_exception(e)
            finally:
                self.jobs_run += 1
                with self._cond:
                    if key in self._used:
                        self._used[key] += time.monotonic() - t0
