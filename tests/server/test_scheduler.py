"""The model scheduler's fairness with long jobs (issue 12): a generator job (a question, yielding between
decoding steps) runs in slices, other sessions' jobs in between; no model, milliseconds of work."""

from __future__ import annotations

import threading
import time

import pytest

from videokv.server.scheduler import Scheduler, SchedulerClosed


def long_answer(steps: int, step_s: float, log: list):
    """A stand-in for Session.ask_steps: `steps` decoding steps of `step_s` seconds each."""
    for i in range(steps):
        time.sleep(step_s)
        log.append(("long", i))
        yield
    return "long done"


def test_a_long_answer_holds_the_model_for_a_slice_not_for_its_length():
    s = Scheduler(slice_s=0.05)
    try:
        log: list = []
        started = threading.Event()

        def gen():
            started.set()
            return (yield from long_answer(40, 0.01, log))  # 0.4 s in all: 8 slices

        long = s.submit("hostile", gen)
        assert started.wait(5)
        t0 = time.monotonic()
        short = s.submit("honest", lambda: log.append(("short",)) or "short done")
        assert short.result(5) == "short done"
        waited = time.monotonic() - t0
        assert long.result(5) == "long done"
        at = log.index(("short",))
        assert 0 < at <= 10, at  # after a slice or two of the long answer, not after its 40 steps
        assert waited < 0.3, waited
        # one session's jobs keep their order: a job queued behind a sliced one runs after it
        log.clear()
        first = s.submit("hostile", lambda: (yield from long_answer(10, 0.01, log)))
        after = s.submit("hostile", lambda: log.append(("after",)))
        first.result(5), after.result(5)
        assert log[-1] == ("after",) and len(log) == 11
    finally:
        s.close()


def test_a_sliced_job_of_a_gone_session_or_a_closed_scheduler_ends_with_an_error():
    s = Scheduler(slice_s=0.02)
    gate = threading.Event()
    busy = s.submit("other", gate.wait, 5)  # holds the worker while the sliced job is requeued
    log: list = []
    job = s.submit("gone", lambda: (yield from long_answer(1000, 0.005, log)))
    time.sleep(0.05)
    gate.set()
    busy.result(5)
    while not log:
        time.sleep(0.01)
    # keep the worker away from the sliced job: another session's job runs while it waits requeued
    s.submit("other", time.sleep, 0.2)
    time.sleep(0.05)
    s.forget("gone")
    with pytest.raises(SchedulerClosed):
        job.result(5)
    s.close()
