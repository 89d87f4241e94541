"""Spoken narration for test and benchmark streams: espeak-ng (Debian's ``espeak-ng`` package) speaks each
line to a WAV file, and :func:`narration` places the lines on a mono 16 kHz track at their times.

Muxed into a video with :func:`videokv.video.decode.write_video` (``audio=``), it gives real clips with
speech, which the offline model can only know through a transcript (``transcribe=True``).
"""

from __future__ import annotations

import io
import shutil
import subprocess
import wave
from collections.abc import Sequence

import numpy as np

from videokv.errors import InputError

__all__ = ["RATE", "espeak_available", "narration", "speak"]

RATE = 16_000
GAP_S = 0.4  # silence kept between two spoken lines


def espeak_available() -> str | None:
    """The espeak-ng executable, or None when it is not installed."""
    return shutil.which("espeak-ng")


def speak(text: str, rate: int = RATE, words_per_minute: int = 160) -> np.ndarray:
    """``text`` spoken by espeak-ng: mono float32 samples in [-1, 1] at ``rate`` Hz.

    Raises InputError when espeak-ng is not installed (with the command that installs it) or fails.
    """
    exe = espeak_available()
    if exe is None:
        raise InputError("speech synthesis needs espeak-ng; install it with: apt-get install -y espeak-ng")
    try:
        done = subprocess.run(
            [exe, "--stdout", "-s", str(words_per_minute), text], capture_output=True, check=True, timeout=60
        )
    except (subprocess.SubprocessError, OSError) as e:
        raise InputError(f"espeak-ng could not speak {text[:60]!r}: {e}") from e
    with wave.open(io.BytesIO(done.stdout)) as w:
        source_rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
        frames = w.readframes(w.getnframes())
    if width != 2:
        raise InputError(f"espeak-ng wrote {8 * width}-bit audio; expected 16-bit")
    samples = np.frombuffer(frames, dtype=np.int16).reshape(-1, channels).mean(axis=1) / 32768.0
    if source_rate != rate:  # linear resampling is plenty for speech recognition
        n = int(round(len(samples) * rate / source_rate))
        samples = np.interp(np.arange(n) * source_rate / rate, np.arange(len(samples)), samples)
    return samples.astype(np.float32)


def narration(
    lines: Sequence[tuple[float, str]], duration: float, rate: int = RATE, keep: Sequence[bool] | None = None
) -> tuple[np.ndarray, list[tuple[int, float, float, str]]]:
    """Speak ``(time, text)`` lines (sorted by time) onto one track of ``duration`` seconds.

    A line starts at its time, unless the line before is still being spoken (or it would run past the end):
    then it is left out, except lines marked in ``keep`` (the facts a question asks about): for those the
    ordinary line before is left out instead, or, after another fact, the line starts just after it.
    Returns int16 samples and the spoken ``(index in lines, start, end, text)`` spans.
    """
    keep = list(keep) if keep is not None else [False] * len(lines)
    spoken: list[tuple[int, float, float, str, np.ndarray, bool]] = []
    for i, ((t, text), must) in enumerate(zip(lines, keep)):
        voice = speak(text, rate)
        if must:
            while spoken and spoken[-1][2] + GAP_S > t and not spoken[-1][5]:
                spoken.pop()  # a fact wins over the ordinary line before it
            if spoken and spoken[-1][2] + GAP_S > t:
                t = spoken[-1][2] + GAP_S  # after the fact before it
        elif spoken and spoken[-1][2] + GAP_S > t:
            continue
        end = t + len(voice) / rate
        if end > duration:
            if must:
                raise InputError(f"the line {text!r} at {t:.1f} s does not fit before the end ({duration} s)")
            continue
        spoken.append((i, t, end, text, voice, must))
    track = np.zeros(int(round(duration * rate)), dtype=np.int16)
    for _, t, _, _, voice, _ in spoken:
        a = int(round(t * rate))
        track[a : a + len(voice)] = np.round(voice * 32767).astype(np.int16)[: len(track) - a]
    return track, [(i, round(t, 2), round(end, 2), text) for i, t, end, text, _, _ in spoken]
