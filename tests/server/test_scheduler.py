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
    s = Scheduler(slice_s=0.01, quantum=8, age=1000)
    try:
        log: list = []
        s.submit("honest", time.sleep, 0.3).result(5)  # the honest session has used 0.3 s of model time
        long = s.submit("hostile", lambda: (yield from long_answer(200, 0.005, log)))  # 1 s in all
        while len(log) < 25:  # past its first quantum (8 steps): level 1
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


def _gaps(log: list, after: int) -> list[int]:
    """The runs of short jobs between consecutive steps of the long answer, from log[after:] on."""
    gaps, run = [], 0
    for entry in log[after:]:
        if entry[0] == "long":
            gaps.append(run)
            run = 0
        else:
            run += 1
    return gaps


def test_a_long_answer_keeps_moving_under_a_stream_of_short_jobs():
    """Aging: a job waiting moves up a level per `age` pieces of other work run meanwhile, so a long answer
    is not starved by another session that always has a fresh short job waiting. Counted in pieces: at most
    levels x age short jobs run between two slices of it, however long each takes."""
    s = Scheduler(slice_s=0.01, quantum=4, age=5, levels=4)
    try:
        log: list = []
        gate = threading.Event()
        long = s.submit("long", lambda: (yield from long_answer(400, 0.002, log)))
        while len(log) < 80:  # past 4 x 4 x 4 steps: the lowest level
            time.sleep(0.005)
        s.submit("gate", gate.wait, 5)  # the worker waits while all the short jobs are queued
        time.sleep(0.05)
        mark = len(log)
        shorts = [s.submit("short", lambda i=i: log.append(("short", i))) for i in range(200)]
        gate.set()
        for f in shorts:
            f.result(10)
        assert long.result(10) == "long done"
        gaps = _gaps(log, mark)
        assert sum(gaps) == 200, gaps
        assert max(gaps) <= 4 * 5 + 1, gaps  # a slice of the long answer at least every levels x age pieces
        assert sum(1 for g in gaps if g) >= 8, gaps  # the shorts went first, and the long answer kept moving
    finally:
        s.close()


@pytest.mark.parametrize("slow_s", [0.0005, 0.25])
def test_the_order_does_not_depend_on_how_fast_the_steps_run(slow_s: float):
    """Levels and aging count steps and pieces, not seconds (issue 34, item 10): a short question of 8 steps
    runs before any further slice of two long answers under way, on a fast machine (many steps a slice) and
    on a slow or loaded one (one step a slice, each 500x longer). With levels and aging in wall-clock
    seconds, the slow question dropped to the long answers' level, they aged past it, and slices of them ran
    inside it."""
    s = Scheduler(slice_s=0.005, quantum=8, age=16)
    try:
        log: list = []
        step = {"s": 0.0005}  # the machine's speed: fast until the long answers are under way

        def long_answer_at_speed():
            for i in range(100_000):
                time.sleep(step["s"])
                log.append(("long", i))
                yield

        def question():
            for i in range(8):
                time.sleep(step["s"])
                log.append(("short", i))
                yield
            return "short done"

        s.submit("honest", time.sleep, 0.2).result(5)  # the honest session has used more model time
        longs = [s.submit("hostile", long_answer_at_speed) for _ in range(2)]
        while sum(e[0] == "long" for e in log) < 150:  # past 8 x 4 x 4 steps: the lowest level
            time.sleep(0.01)
        step["s"] = slow_s
        n = len(log)
        while len(log) < n + 2:  # a step at the new speed has ended: a slice is one step from here on
            time.sleep(0.001)
        mark = len(log)
        assert s.submit("honest", question).result(30) == "short done"
        between = log[mark : log.index(("short", 7), mark) + 1]
        longs_between = sum(e[0] == "long" for e in between)
        # the slice in progress when it was submitted (one step when slow, ~10 when fast), nothing after it
        assert longs_between <= (1 if slow_s > 0.005 else 20), between
        assert [e for e in between if e[0] == "short"] == [("short", i) for i in range(8)]
        s.forget("hostile")
        for f in longs:
            with pytest.raises(SchedulerClosed):
                f.result(10)
    finally:
        s.close()
