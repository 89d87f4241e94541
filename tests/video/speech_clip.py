"""A real clip with speech, built at test time: bikes.mp4's frames with an espeak-ng narration as AAC."""

from __future__ import annotations

from pathlib import Path

import pytest

from videokv.bench.speech import RATE, espeak_available, narration
from videokv.video.decode import find_sample_clip, iter_frames, write_video

#: (time in seconds, spoken line): the facts a test asks about.
LINES = (
    (1.0, "The locker code is 4721."),
    (5.5, "The dog is called Biscuit."),
)
DURATION = 10.0
FPS = 5.0


def need_espeak() -> None:
    if espeak_available() is None:
        pytest.skip("espeak-ng is not installed (apt-get install -y espeak-ng; .ci/run installs it)")


def make_speech_clip(
    folder: Path, lines=LINES, duration: float = DURATION, fps: float = FPS
) -> tuple[Path, list]:
    """``folder/speech.mp4``: bikes.mp4's frames at ``fps`` (10 s) with ``lines`` spoken at their times.
    Returns the file and the spoken (start, end, text) spans."""
    need_espeak()
    track, spoken = narration(lines, duration, keep=[True] * len(lines))
    spans = [(start, end, text) for _, start, end, text in spoken]
    frames = [img for _, img in iter_frames(find_sample_clip("bikes.mp4"), fps=fps, end=duration)]
    path = Path(folder) / "speech.mp4"
    write_video(path, frames, fps, audio=track, audio_rate=RATE, crf=30)
    return path, spans
