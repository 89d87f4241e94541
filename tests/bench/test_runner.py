"""`bench run` (worker processes, resumable records) and `bench report` (table, plots), on a tiny model."""

from __future__ import annotations

import json
import shutil

import pytest

from videokv.bench.needles import make_needles
from videokv.bench.report import summarize, write_report
from videokv.bench.runner import RunSettings, read_records, run_benchmark
from videokv.cli import main
from videokv.errors import InputError

PRESETS = ["full", "rekv"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_needles(tmp_path_factory.mktemp("ds"), minutes=[0.5], questions=2, seed=1)


def settings(dataset, **kw) -> RunSettings:
    return RunSettings(dataset=str(dataset), model="tiny-qwen2_vl", frame_tokens=4, max_new_tokens=4, **kw)


@pytest.fixture(scope="module")
def run(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    results = run_benchmark(dataset, PRESETS, out, settings(dataset, evidence_kind="text"), progress=False)
    return out, results


def test_one_record_per_question_with_every_measure(run):
    out, results = run
    for preset in PRESETS:
        recs = results[preset]
        assert [(r["video_id"], r["q"]) for r in recs] == [("needles-0.5min", 0), ("needles-0.5min", 1)]
        for r in recs:
            assert r["preset"] == preset and isinstance(r["correct"], bool)
            assert r["resident_bytes"] > 0 and r["peak_rss_bytes"] > r["resident_bytes"]
            assert r["ttft_s"] > 0 and r["answer_s"] >= r["retrieval_s"] >= 0
            assert 0.0 <= r["evidence_recall"] <= 1.0
            assert r["stream_seconds"] <= r["time"] + 2.0 and r["ingest_fps"] > 0
            # the ingest context is counted apart from the store (memory presets); `full` has no store
            assert (r["ingest_context_bytes"] > 0) == (preset not in ("full", "window"))
        assert recs[1]["stream_tokens"] >= recs[0]["stream_tokens"]  # the stream went on between questions
    # `full` attends to the whole stream: every evidence span is covered
    assert all(r["evidence_recall"] == 1.0 for r in results["full"])
    run_file = json.loads((out / "run.json").read_text())
    assert run_file["settings"]["model"] == "tiny-qwen2_vl" and run_file["machine"]["cpus"] >= 1


def test_resume_after_a_crash_recomputes_only_what_is_missing(run, dataset, tmp_path):
    out, results = run
    crashed = tmp_path / "crashed"
    (crashed / "results").mkdir(parents=True)
    (crashed / "run.json").write_text((out / "run.json").read_text())
    # a crash mid-write: the first record complete, the second torn
    first = json.dumps(results["rekv"][0]) + "\n"
    (crashed / "results" / "rekv.jsonl").write_text(first + json.dumps(results["rekv"][1])[:40])
    again = run_benchmark(
        dataset, ["rekv"], crashed, settings(dataset, evidence_kind="text"), progress=False
    )["rekv"]
    assert (crashed / "results" / "rekv.jsonl").read_text().startswith(first)
    assert len(again) == 2 and again[0] == results["rekv"][0]
    for key in ("prediction", "correct", "stream_tokens", "memory_tokens", "resident_bytes", "evidence"):
        assert again[1][key] == results["rekv"][1][key]  # the same stream and answer, recomputed
    # a complete run resumes to nothing
    before = (out / "results" / "full.jsonl").read_bytes()
    run_benchmark(dataset, ["full"], out, settings(dataset, evidence_kind="text"), progress=False)
    assert (out / "results" / "full.jsonl").read_bytes() == before


def test_other_settings_or_unknown_preset_are_refused(run, dataset):
    out, _ = run
    with pytest.raises(InputError, match="other settings"):
        run_benchmark(dataset, ["full"], out, settings(dataset, evidence_kind=None), progress=False)
    with pytest.raises(InputError, match="preset"):
        run_benchmark(dataset, ["nope"], out, settings(dataset), progress=False)
    with pytest.raises(InputError, match="no video"):
        run_benchmark(dataset, ["full"], out, settings(dataset), videos=["missing"], progress=False)


def test_read_records_drops_a_torn_last_line(tmp_path):
    f = tmp_path / "r.jsonl"
    f.write_text('{"a": 1}\n{"a": 2}\n{"a"')
    assert read_records(f) == [{"a": 1}, {"a": 2}]
    assert f.read_text() == '{"a": 1}\n{"a": 2}\n'


def test_report_writes_a_table_and_plots(run, tmp_path):
    out, results = run
    _, rows = summarize(out)
    assert {(r["preset"], r["video_id"]) for r in rows} == {(p, "needles-0.5min") for p in PRESETS}
    for r in rows:
        want = sum(x["correct"] for x in results[r["preset"]]) / 2
        assert r["accuracy"] == want and r["answered"] == 2
    files = write_report(out, tmp_path / "docs", "needles")
    md = (tmp_path / "docs" / "needles.md").read_text()
    assert "| `full` |" in md and "| `rekv` |" in md and "needles-0.5min" in md
    pngs = [f for f in files if f.suffix == ".png"]
    assert len(pngs) == 2 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert "--memory-set" not in md  # no overrides in this run


def test_report_names_the_memory_overrides(run, tmp_path):
    out, _ = run
    folder = tmp_path / "copy"
    shutil.copytree(out, folder)
    meta = json.loads((folder / "run.json").read_text())
    meta["settings"]["memory_set"] = ["text_k=4"]
    (folder / "run.json").write_text(json.dumps(meta))
    write_report(folder, tmp_path / "docs", "x")
    assert "(`--memory-set`) `text_k=4`" in (tmp_path / "docs" / "x.md").read_text()


def test_cli_report_and_errors(run, tmp_path, capsys):
    out, _ = run
    assert main(["bench", "report", str(out), "--docs", str(tmp_path), "--name", "x"]) == 0
    assert (tmp_path / "x.md").exists()
    assert main(["bench", "report", str(tmp_path)]) == 2
    assert "not a `videokv bench run` folder" in capsys.readouterr().err


def test_report_refuses_to_overwrite_unless_forced(run, tmp_path, capsys):
    """`bench report --docs docs --name needles` must not silently replace a committed report."""
    out, _ = run
    docs = tmp_path / "docs"
    docs.mkdir()
    committed = docs / "needles.md"
    committed.write_text("committed\n")
    with pytest.raises(InputError, match="would overwrite .*needles.md.*--force"):
        write_report(out, docs, "needles")
    assert committed.read_text() == "committed\n"
    assert sorted(p.name for p in docs.iterdir()) == ["needles.md"]  # nothing else written either
    args = ["bench", "report", str(out), "--docs", str(docs), "--name", "needles"]
    assert main(args) == 2
    assert "--force" in capsys.readouterr().err and committed.read_text() == "committed\n"
    assert main([*args, "--force"]) == 0
    assert committed.read_text().startswith("# Benchmark: needles")
    # any one of its files counts: a JSON or a plot of that name is not replaced either
    (docs / "other_latency_vs_length.png").write_bytes(b"png")
    assert main(["bench", "report", str(out), "--docs", str(docs), "--name", "other"]) == 2
    assert not (docs / "other.md").exists()


def test_report_names_every_command_and_what_frame_tokens_counts(run, tmp_path):
    """A folder written by several commands (more videos, a resume) names them all; `--frame-tokens` is
    read as `videokv ask` reads it: per temporal patch of 2 frames, not per frame."""
    out, _ = run
    folder = tmp_path / "copy"
    shutil.copytree(out, folder)
    meta = json.loads((folder / "run.json").read_text())
    meta["command"] = "videokv bench run ds.json --out copy --videos a"
    meta["resumed"] = ["videokv bench run ds.json --out copy --videos a,b"]
    (folder / "run.json").write_text(json.dumps(meta))
    write_report(folder, tmp_path / "docs", "x")
    md = (tmp_path / "docs" / "x.md").read_text()
    assert "```bash\nvideokv bench run ds.json --out copy --videos a\n" in md
    assert "videokv bench run ds.json --out copy --videos a,b\n```" in md
    assert "`--frame-tokens 4` (visual tokens per temporal patch of 2 frames" in md
    assert "tokens per frame" not in md


def test_a_resumed_run_records_its_command(run, dataset, tmp_path):
    out, _ = run
    folder = tmp_path / "copy"
    shutil.copytree(out, folder)
    first = json.loads((folder / "run.json").read_text())["command"]
    again = "videokv bench run ds.json --memory full --out copy"
    for _ in range(2):  # recorded once, however often it is run
        run_benchmark(
            dataset, ["full"], folder, settings(dataset, evidence_kind="text"), progress=False, command=again
        )
    meta = json.loads((folder / "run.json").read_text())
    assert meta["command"] == first and meta["resumed"] == [again]


def test_bench_run_frame_tokens_help_says_per_temporal_patch(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "per temporal patch (2 frames)" in text and "per frame" not in text


@pytest.mark.realmodel
def test_offline_model_answers_needles_with_full_memory(tmp_path):
    """The real-weights model answers the needle questions of a stream that fits its context (in the official
    Qwen2-VL layout it misses one of the four, "What number is painted on the ferry?", whatever the
    question's prefix; the old per-frame layout answered all four), and every answer saw its evidence."""
    data = make_needles(tmp_path / "ds", minutes=[1], questions=4, seed=7)
    results = run_benchmark(
        data,
        ["full"],
        tmp_path / "run",
        RunSettings(dataset=str(data), frame_tokens=12, evidence_kind="text"),
        progress=False,
    )["full"]
    assert len(results) == 4
    wrong = [(r["question"], r["gold"], r["prediction"]) for r in results if not r["correct"]]
    assert len(wrong) <= 1, wrong
    assert all(r["evidence_recall"] == 1.0 for r in results)


def test_full_stops_before_it_would_pass_the_models_context(dataset, qwen):
    """`full` skips (with the reason) the questions whose stream would not fit the context; a retrieval
    preset answers them all."""
    from videokv.api import VideoQA
    from videokv.bench.worker import run_job

    cfg = qwen[0].config.get_text_config()
    saved = cfg.max_position_embeddings
    cfg.max_position_embeddings = 120  # the 30 s stream is ~300 tokens: the first question fits, not all
    try:
        out: dict[str, list[dict]] = {}
        for preset in ("full", "rekv"):
            job = {**vars(settings(dataset)), "preset": preset, "video_id": "needles-0.5min", "done": []}
            run_job(job, out.setdefault(preset, []).append, VideoQA.from_model(*qwen, frame_tokens=4))
    finally:
        cfg.max_position_embeddings = saved
    full, rekv = out["full"], out["rekv"]
    assert [r["q"] for r in full] == [0, 1] and [r["q"] for r in rekv] == [0, 1]
    assert "skipped" in full[-1] and "120-token context" in full[-1]["skipped"]
    assert all("skipped" not in r for r in rekv)
    assert rekv[-1]["stream_tokens"] > 120  # the whole stream would not have fitted
    answered = [r for r in full if "skipped" not in r]
    assert all(r["memory_tokens"] <= 120 for r in answered)
