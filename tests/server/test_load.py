"""A bounded run of the load test (benchmarks/load_test.py): live ingest on some sessions while questions
are asked on all of them; every answer arrives and every session stays under its byte budget.

The numbers of a longer run are in docs/LOAD.md; this test asserts behaviour only, never speed.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

LOAD_TEST = Path(__file__).resolve().parents[2] / "benchmarks" / "load_test.py"
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def load_test():
    """benchmarks/load_test.py as a module (benchmarks/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("videokv_load_test", LOAD_TEST)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_bounded_load_all_answers_arrive_and_budgets_hold(load_test, tmp_path: Path) -> None:
    budget_mb = 0.08  # small enough that the live streams spill blocks to disk within the run
    cfg = load_test.LoadConfig(
        model="tiny-llava_onevision",
        duration=30.0,
        ingest_sessions=2,
        ask_sessions=1,
        askers=2,
        ingest="source",
        fps=2.0,
        realtime=True,
        session_mb=budget_mb,
        max_new_tokens=8,
        data_dir=str(tmp_path / "data"),
    )
    report = load_test.run_load(cfg)
    table = load_test.markdown(report)

    answers = report["answers"]
    assert answers["requested"] > 0, table
    assert answers["received"] == answers["requested"], table
    assert answers["streamed"] > 0 and answers["streamed"] < answers["received"], table  # both kinds
    assert report["errors"] == [], table
    assert report["budgets_held"] and report["passed"], table

    sessions = report["sessions"]
    assert sorted(s["role"] for s in sessions) == ["ask", "ingest", "ingest"]
    for s in sessions:
        assert s["budget"] == int(budget_mb * MiB), s
        assert 0 < s["peak_resident"] <= s["budget"], s
        if s["role"] == "ingest":
            assert s["frames_added"] > 0 and s["ingest_fps"] > 0, s
            # the stream outgrew the budget: older blocks went to disk instead of past the budget
            assert s["peak_offloaded"] > 0, s
    assert report["ingest"]["frames_total"] == sum(s["frames_added"] for s in sessions)
    assert report["server_rss"]["peak_bytes"] > 0
    assert "| answers requested / received |" in table

    # the latencies are ordered statistics of real measurements
    lat = answers["latency_s"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["max"]
