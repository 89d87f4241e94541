"""The command line, run as a user would (a subprocess for the JSON contract; main() for the rest)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from videokv.cli import main
from videokv.demo import DEMO_QUESTIONS, prepare_demo
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
