"""The command line, run as a user would (a subprocess for the JSON contract; main() for the rest)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from videokv.cli import main
from videokv.demo import DEMO_QUESTIONS, prepare_demo
from videokv.models.registry import FAMILIES
from videokv.presets import PRESETS
from videokv.video.decode import find_sample_clip


def test_ask_json_one_object_per_question_in_order(tmp_path):
    video, srt = prepare_demo(tmp_path)
    qs = ["What colour is the jacket?", "What number is on the van?"]
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "videokv.cli",
            "ask",
            str(video),
            *qs,
            "--subtitles",
            str(srt),
            "--model",
            "tiny-llava_onevision",
            "--json",
            "--memory",
            "full",
            "--max-new-tokens",
            "3",
            "--logprobs",
            "2",
            "--fps",
            "0.5",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2
    objs = [json.loads(line) for line in lines]
    assert [o["question"] for o in objs] == qs
    for o in objs:
        assert set(o) >= {"question", "answer", "evidence", "stats"}
        assert o["stats"]["frames"] == 5  # 10 s at 0.5 fps
        assert o["stats"]["blocks"] == 5 + 5  # five frames, five subtitle lines
        assert o["evidence"][0]["t0"] == 0.0
        steps = o["logprobs"]  # one per generated token (and the end of sequence, if reached)
        assert 1 <= len(steps) <= 3 and all(len(step["top"]) == 2 for step in steps)
        assert all(step["top"][0]["logprob"] >= step["logprob"] - 1e-6 for step in steps)  # greedy: top-1


def test_ask_multiple_choice_and_window(tmp_path, capsys):
    video, srt = prepare_demo(tmp_path)
    rc = main(
        [
            "ask",
            str(video),
            "Which colour?",
            "--choices",
            "yellow",
            "blue",
            "--model",
            "tiny-qwen2_vl",
            "--memory",
            "window",
            "--memory-set",
            "window=40",
            "--json",
            "--fps",
            "0.5",
        ]
    )
    assert rc == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["answer"] in ("yellow", "blue")
    assert obj["stats"]["memory"] == "window"
    assert obj["stats"]["blocks_in_memory"] < obj["stats"]["blocks"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["ask", "/nonexistent/clip.mp4", "q?"], "not found"),
        (["ask", "{video}", "q?", "--memory", "nope"], "unknown memory preset"),
        (["ask", "{video}", "q?", "--memory-set", "colour=red"], "unknown memory parameter"),
        (["ask", "{video}", "q?", "--subtitles", "/nonexistent.srt"], "not found"),
        (["ask", "{video}", "  "], "empty"),
        (["ask", "{video}", "q?", "--do-sample", "--temperature", "0"], "temperature must be > 0"),
        (["ask", "{video}", "q?", "--top-p", "0.5"], "only apply when sampling"),
        (["ask", "{video}", "q?", "--choices", "a", "b", "--do-sample"], "picked by likelihood"),
    ],
)
def test_errors_are_clear(tmp_path, capsys, argv, message):
    video, _ = prepare_demo(tmp_path)
    argv = [a.replace("{video}", str(video)) for a in argv] + ["--model", "tiny-qwen2_vl", "--fps", "0.5"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "videokv: error:" in err and message in err.lower()


def test_ask_samples_like_the_api_with_the_same_seed(tmp_path, capsys):
    """`videokv ask --do-sample --seed ...` answers what `Session.ask` answers with the same options."""
    from videokv import VideoQA

    video, srt = prepare_demo(tmp_path)
    q = "What colour is the jacket?"
    options = {"do_sample": True, "temperature": 0.7, "top_k": 40, "top_p": 0.95, "seed": 5}
    session = VideoQA.from_pretrained("tiny-llava_onevision").session(fps=0.5)
    session.add_video(video, subtitles=srt)
    expected = session.ask(q, max_new_tokens=8, **options)
    stop = expected.text.strip()[3:5]
    cut = session.ask(q, max_new_tokens=8, stop=[stop], **options)
    flags = ["--do-sample", "--temperature", "0.7", "--top-k", "40", "--top-p", "0.95", "--seed", "5"]
    base = ["ask", str(video), q, "--subtitles", str(srt), "--model", "tiny-llava_onevision", "--fps", "0.5"]
    base += ["--json", "--max-new-tokens", "8", *flags]
    assert main(base) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["answer"] == expected.text and got["stats"]["seed"] == 5
    assert main([*base, "--stop", stop]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["answer"] == cut.text and stop not in got["answer"] and len(got["answer"]) < len(expected.text)
    assert got["stats"]["finish_reason"] == "stop"


def test_presets_lists_sources(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "full" in out and "window" in out and "source:" in out


@pytest.mark.parametrize("preset", list(PRESETS))
def test_ask_works_with_every_preset(tmp_path, capsys, preset):
    video, srt = prepare_demo(tmp_path)
    rc = main(
        [
            "ask",
            str(video),
            "What colour is the jacket?",
            "--subtitles",
            str(srt),
            "--memory",
            preset,
            "--model",
            "tiny-qwen2_vl",
            "--json",
            "--fps",
            "0.5",
            "--max-new-tokens",
            "2",
        ]
    )
    assert rc == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["stats"]["memory"] == preset and obj["evidence"]


@pytest.mark.realmodel
@pytest.mark.parametrize("preset", list(PRESETS))
def test_demo_answers_correctly_with_the_offline_model(capsys, preset):
    """End to end with real weights: the demo's three questions are answered from the subtitles."""
    rc = main(["demo", "--json", "--memory", preset])
    objs = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [o["question"] for o in objs] == [q.question for q in DEMO_QUESTIONS]
    for o, q in zip(objs, DEMO_QUESTIONS):
        assert q.expected.lower() in o["answer"].lower(), (q.question, o["answer"])
    assert rc == 0


def test_ask_transcribe_puts_the_speech_in_memory(tmp_path):
    from tests.video.speech_clip import make_speech_clip
    from videokv.video.transcribe import transcribe

    clip, _ = make_speech_clip(tmp_path)
    said = transcribe(clip, language="en")

    def ask(*extra: str) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "videokv.cli", "ask", str(clip), "What is the locker code?"]
        argv += ["--model", "tiny-llava_onevision", "--json", "--max-new-tokens", "2", "--fps", "0.5", *extra]
        return subprocess.run(argv, capture_output=True, text=True, timeout=300)

    heard = json.loads(ask("--transcribe", "en").stdout)
    assert heard["stats"]["blocks"] == 5 + len(said)  # five frames and one block per transcript event
    assert json.loads(ask().stdout)["stats"]["blocks"] == 5
    silent = subprocess.run(
        [sys.executable, "-m", "videokv.cli", "ask", str(find_sample_clip("bikes.mp4")), "Q?", "--transcribe"]
        + ["--model", "tiny-llava_onevision"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert silent.returncode == 2 and "no audio track to transcribe" in silent.stderr


# ---- checks before ingest (issue 35, item 2) -------------------------------------------------------------
@pytest.fixture(scope="module")
def minute_clip(tmp_path_factory):
    """A real 60-second clip (2 fps, 56x84): 60 frames to ingest at the default 1 fps."""
    from tests.server.conftest import make_clip

    return make_clip(tmp_path_factory.mktemp("minute") / "minute.mp4", seconds=60.0, fps=2.0)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["What colour?", "  "], "the question is empty"),
        (["What colour?", "--choices", "yes"], "at least two options"),
        (["What colour?", "--choices", "yes", " "], "non-empty"),
        (["What colour?", "--max-new-tokens", "0"], "max_new_tokens"),
        (["What colour?", "--logprobs", "21"], "logprobs"),
        (["What colour?", "--fps", "0"], "--fps must be > 0"),
        (["What colour?", "--chunk-frames", "0"], "--chunk-frames"),
        (["What colour?", "--subtitles", "/nonexistent.srt"], "not found"),
    ],
)
def test_ask_refuses_bad_input_before_loading_or_ingesting(minute_clip, capsys, monkeypatch, extra, message):
    """A bad question, option or file fails in well under a second on a 60-second clip: the model is not
    loaded and not one frame is ingested (before the fix, `ask VIDEO ""` and `--choices yes` ingested the
    whole video, then failed)."""
    import time

    from videokv.api import Session, VideoQA

    calls = []
    real = VideoQA.from_pretrained.__func__
    monkeypatch.setattr(
        VideoQA, "from_pretrained", classmethod(lambda *a, **k: calls.append("load") or real(*a, **k))
    )
    monkeypatch.setattr(Session, "add_video", lambda *a, **k: calls.append("ingest"))
    t0 = time.perf_counter()
    assert main(["ask", str(minute_clip), *extra, "--model", "tiny-qwen2_vl"]) == 2
    elapsed = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert err.startswith("videokv: error:") and message in err and err.count("\n") == 1, err
    assert calls == [] and elapsed < 2.0, (calls, elapsed)


# ---- model names (issue 35, item 3) ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "model, env, message",
    [
        ("tiny-qwen2vl", {}, "unknown model 'tiny-qwen2vl' (did you mean 'tiny-qwen2_vl'?)"),
        ("tiny_internvl", {}, "did you mean 'tiny-internvl'?"),
        ("./checkpoints/qwen2-vl", {}, "no checkpoint folder './checkpoints/qwen2-vl'"),
        ("Qwen/Qwen2-VL-2B-Instructx", {"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE is set"),
        ("Qwen/Qwen2-VL-2B-Instructx", {"HF_ENDPOINT": "http://127.0.0.1:{port}"}, "cannot be reached"),
    ],
)
def test_a_bad_model_name_is_one_fast_line(tmp_path, capsys, monkeypatch, model, env, message):
    """A typo in --model is one `videokv: error:` line naming the valid names, in well under the ~25 s of
    network retries (and the 22-line traceback of a tiny typo) it took before."""
    import time

    from tests.server.conftest import free_port
    from videokv.api import TINY_MODELS

    for key in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value.format(port=free_port()))
    video, _ = prepare_demo(tmp_path)
    t0 = time.perf_counter()
    assert main(["ask", str(video), "What colour?", "--model", model]) == 2
    elapsed = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert err.startswith("videokv: error:") and err.count("\n") == 1, err
    assert message in err and all(name in err for name in TINY_MODELS), err
    assert elapsed < 5.0
    if "/" in model and "." not in model:
        assert "--model DIR" in err  # how to pass a local folder instead


# ---- what the output shows (issue 35, item 8) -------------------------------------------------------------
@pytest.mark.parametrize(
    "argv",
    [["serve", "--json"], ["serve", "--logprobs", "2"], ["stream", "clip.mp4", "--logprobs", "2"]],
)
def test_options_that_mean_nothing_are_refused(capsys, argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and "unrecognized arguments: " + argv[-1 if argv[-1] == "--json" else -2] in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize(
    "extra, message",
    [(["--logprobs", "2"], "add --json"), (["--logprobs", "2", "--json", "--choices", "a", "b"], "scored")],
)
def test_logprobs_without_meaning_in_ask_is_an_error(tmp_path, capsys, extra, message):
    video, _ = prepare_demo(tmp_path)
    assert main(["ask", str(video), "Which colour?", *extra, "--model", "tiny-qwen2_vl"]) == 2
    assert message in capsys.readouterr().err


def test_text_output_shows_choice_scores_and_every_evidence_span(tmp_path, capsys):
    """Multiple choice prints every option's score and how it was chosen; the evidence is listed in full,
    frames and text apart: the same spans as the JSON output."""
    import re

    video, srt = prepare_demo(tmp_path)
    argv = ["ask", str(video), "What colour is the jacket?", "--subtitles", str(srt), "--choices"]
    argv += ["yellow", "blue", "red", "--model", "tiny-qwen2_vl", "--memory", "rekv", "--fps", "1"]
    assert main([*argv, "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert main(argv) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "choices (" in x)
    scores = dict(re.findall(r"\*?(yellow|blue|red) (-?\d+\.\d\d)", line))
    assert [float(scores[c]) for c in ("yellow", "blue", "red")] == pytest.approx(
        obj["choice_scores"], abs=0.01
    )
    assert f"*{obj['answer']} " in line and obj["stats"]["choice_by"] in line
    labels = {"frame": "frames", "text": "text", "frame+text": "frames and text"}
    kinds = dict(re.findall(r"evidence, (frames|text|frames and text) \((\d+)\)", out))
    expected: dict[str, int] = {}
    for e in obj["evidence"]:
        expected[labels[e["kind"]]] = expected.get(labels[e["kind"]], 0) + 1
    assert {k: int(v) for k, v in kinds.items()} == expected
    listed = re.findall(r"(\d+\.\d)-(\d+\.\d)s", "\n".join(x for x in out.splitlines() if "evidence," in x))
    assert len(listed) == len(obj["evidence"])  # none cut


def test_memory_figures_are_one_definition_in_text_and_json(tmp_path, capsys):
    """`ask` prints resident KV as the ingest context + resident blocks and offloaded as the blocks on disk,
    the same numbers as the JSON's `kv` (before, the text said 0.0 MiB KV for the default preset while the
    JSON held 0.2 MiB on disk and a 0.2 MiB resident window)."""
    import re

    video, srt = prepare_demo(tmp_path)
    argv = ["ask", str(video), "What colour is the jacket?", "--subtitles", str(srt)]
    argv += ["--model", "tiny-qwen2_vl", "--max-new-tokens", "2"]
    assert main([*argv, "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    kv, stats = obj["kv"], obj["stats"]
    tiers = stats["bytes_by_tier"]
    assert kv["resident_bytes"] == stats["ingest_context_bytes"] + tiers["device"] + tiers["host"] > 0
    assert kv["offloaded_bytes"] == tiers["disk"] > 0 and stats["memory"] == "videokv"
    assert main(argv) == 0
    out = capsys.readouterr().out
    resident, context, offloaded = re.search(
        r"KV (\d+\.\d\d) MiB resident \(context (\d+\.\d\d), blocks: 0\.00\) \| (\d+\.\d\d) MiB offloaded",
        out,
    ).groups()
    assert float(resident) == pytest.approx(kv["resident_bytes"] / 2**20, abs=0.006) and float(resident) > 0
    assert float(context) == pytest.approx(kv["context_bytes"] / 2**20, abs=0.006)
    assert float(offloaded) == pytest.approx(kv["offloaded_bytes"] / 2**20, abs=0.006)


def test_demo_keeps_the_subtitle_file_it_names(tmp_path, capsys, monkeypatch):
    """`videokv demo` prints the path of its subtitle track; that file is still there when it ends (it was a
    temporary folder, deleted on exit), so `videokv ask VIDEO ... --subtitles PATH` works as printed."""
    import re

    monkeypatch.setenv("VIDEOKV_HOME", str(tmp_path / "home"))
    rc = main(["demo", "--model", "tiny-qwen2_vl", "--max-new-tokens", "2"])
    assert rc in (0, 1)  # a random model: the answers are nonsense, the files are the point
    err = capsys.readouterr().err
    video, srt = re.search(
        r"videokv demo: (\S+) \(real street footage, 10 s\) with subtitles (\S+)", err
    ).groups()
    assert srt == str(tmp_path / "home" / "demo" / "bikes.srt")
    assert "Via Roma" in open(srt).read()
    argv = ["ask", video, "Where is the camera?", "--subtitles", srt, "--model", "tiny-qwen2_vl"]
    assert main([*argv, "--max-new-tokens", "2", "--json"]) == 0
    capsys.readouterr()
    out = tmp_path / "mine"
    assert main(["demo", "--out", str(out), "--model", "tiny-qwen2_vl", "--max-new-tokens", "2"]) in (0, 1)
    assert (out / "bikes.srt").exists()


# ---- videokv models -------------------------------------------------------------------------------------
def _run_models(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "videokv.cli", "models", *args], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_models_lists_every_supported_model_type():
    rows = [json.loads(line) for line in _run_models("--json").splitlines()]
    assert [r["model_type"] for r in rows] == list(FAMILIES)
    by_type = {r["model_type"]: r for r in rows}
    assert by_type["qwen3_vl_moe"]["class"] == "Qwen3VLMoeForConditionalGeneration"
    assert by_type["internvl"]["positions"] == "1-D" and by_type["qwen3_vl"]["positions"] == "M-RoPE"
    assert all(r["verified"] for r in rows)
    table = _run_models()
    assert all(t in table for t in FAMILIES) and "docs/ADAPTERS.md" in table
