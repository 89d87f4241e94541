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


def test_a_short_question_goes_before_a_long_answer_under_way_whichever_session_used_more():
    """Short jobs first (least attained service by levels): a fresh question waits for the slice in
    progress only, even when its session has used more model time than the one answering at length (the
    fair share alone ran the long answer first until the two sessions' model times met)."""
    s = Scheduler(slice_s=0.01, quantum_s=0.05, age_s=10.0)
    try:
        log: list = []
        s.submit("honest", time.sleep, 0.3).result(5)  # the honest session has used 0.3 s of model time
        long = s.submit("hostile", lambda: (yield from long_answer(200, 0.005, log)))  # 1 s in all
        while len(log) < 25:  # past its first quantum (0.05 s): level 1
            time.sleep(0.005)
        t0 = time.monotonic()
        short = s.submit("honest", lambda: log.append(("short",)) or "short done")
        assert short.result(5) == "short done"
        waited = time.monotonic() - t0
        at = log.index(("short",))
        assert at <= 25 + 6, at  # after the slice in progress (two steps), not after the long answer's
        assert waited < 0.1, waited
        assert long.result(5) == "long done"
    finally:
        s.close()


def test_a_long_answer_keeps_moving_under_a_stream_of_short_jobs():
    """Aging: a job waiting moves up a level per `age_s`, so a long answer is not starved by another
    session that always has a fresh short job waiting."""
    s = Scheduler(slice_s=0.01, quantum_s=0.02, age_s=0.1)
    try:
        log: list = []
        long = s.submit("long", lambda: (yield from long_answer(400, 0.002, log)))
        while len(log) < 20:  # past its first quantum
            time.sleep(0.005)
        shorts = [s.submit("short", time.sleep, 0.01) for _ in range(100)]  # 1 s of fresh short jobs
        time.sleep(0.6)
        done = sum(f.done() for f in shorts)
        progressed = len(log) - 20
        assert done < 100, "the short jobs ran out: the test did not keep them waiting"
        assert progressed >= 8, (progressed, done)  # slices of the long answer ran between them
        assert long.result(10) == "long done"
        for f in shorts:
            f.result(10)
    finally:
        s.close()
