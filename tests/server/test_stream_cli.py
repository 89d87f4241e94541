"""`videokv stream`: live ingest in the terminal with questions on stdin (a real subprocess, a real clip)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.server.conftest import make_clip, srt_text
from videokv.video.decode import find_sample_clip


def stream(*args: str, stdin: str = "", timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-c",
        "import sys; from videokv.cli import main; sys.exit(main())",
        "stream",
        *args,
    ]
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout)


def test_stream_a_real_clip_and_answer_piped_questions(tmp_path: Path):
    clip = find_sample_clip("bikes.mp4")  # 10 s of street footage
    subs = tmp_path / "bikes.srt"
    subs.write_text(srt_text([(2.0, 4.0, "a cyclist in a red jacket passes")]))
    proc = stream(
        str(clip),
        "--model",
        "tiny-llava_onevision",
        "--subtitles",
        str(subs),
        "--no-realtime",
        "--wait",
        "--max-new-tokens",
        "6",
        stdin="who passes?\n\nwhat happens at the end?\nquit\nnever asked\n",
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.count("Q: ") == 2 and "Q: who passes?\nA: " in out and "never asked" not in out
    # every answer names its evidence spans, inside the 10 s that were ingested
    lines = re.findall(r"evidence, (frames|text) \((\d+)\): (.*)", out)
    assert lines and {kind for kind, _, _ in lines} == {"frames", "text"}  # the subtitle can be evidence
    for _, n, text in lines:  # every span listed, none cut
        spans = re.findall(r"(\d+\.\d)-(\d+\.\d)s", text)
        assert len(spans) == int(n) and all(0.0 <= float(a) <= float(b) <= 10.0 for a, b in spans)
    assert "at stream 10.0s | 11 blocks" in out
    # the progress line on stderr: stream clock, frames, blocks, resident and offloaded KV (as `ask` counts)
    line = r"\[stream +10\.0s \| 10 frames \| 11 blocks \| KV [\d.]+ MiB resident, "
    line += r"[\d.]+ MiB offloaded \| done\]"
    assert re.search(line, proc.stderr)
    assert re.search(r"KV [\d.]+ MiB resident \(context [\d.]+, blocks: [^)]+\) \| [\d.]+ MiB offloaded", out)


def test_stream_realtime_questions_while_it_streams(tmp_path: Path):
    clip = make_clip(tmp_path / "cam.mp4", seconds=4, fps=4)
    proc = stream(
        str(clip), "--model", "tiny-llava_onevision", "--fps", "2", "--json", stdin="what is there?\n"
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) == 1 and lines[0]["question"] == "what is there?"
    # asked as soon as it was read: the stream had not reached its end (realtime pace)
    assert lines[0]["stats"]["stream_seconds"] < 4.0


@pytest.mark.parametrize("source", ["missing.mp4", "notes.txt"])
def test_stream_bad_source(tmp_path: Path, source: str):
    (tmp_path / "notes.txt").write_text("not a video")
    proc = stream(str(tmp_path / source), "--model", "tiny-llava_onevision", stdin="q\n", timeout=120)
    assert proc.returncode == 2
    assert "videokv: error:" in proc.stderr and source in proc.stderr
