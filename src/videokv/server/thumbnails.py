"""Thumbnails: a small JPEG (~160 px wide) of every ingested frame, named by its stream time in ms."""

from __future__ import annotations

import bisect
import contextlib
import io
import os
import threading
from pathlib import Path

import numpy as np
from PIL import Image

WIDTH = 160
SUFFIX = ".jpg"


def _name(t: float) -> str:
    return f"{round(t * 1000):012d}{SUFFIX}"


def jpeg_bytes(image: np.ndarray, width: int = WIDTH) -> bytes:
    """A JPEG of an RGB uint8 frame scaled to `width` pixels wide (never enlarged)."""
    img = Image.fromarray(image)
    if img.width > width:
        img = img.resize((width, max(1, round(img.height * width / img.width))), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


class Thumbnails:
    """The thumbnails of one session, in `folder`; times kept sorted in memory."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._lock = threading.Lock()
        self.times: list[float] = []
        if self.folder.exists():
            for p in self.folder.glob(f"*{SUFFIX}"):
                if p.stem.isdigit():
                    self.times.append(int(p.stem) / 1000)
            self.times.sort()

    def add(self, t: float, image: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / _name(t)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            tmp.write_bytes(jpeg_bytes(image))
            os.replace(tmp, path)
        except BaseException:  # a full disk: no half-written file stays behind
            tmp.unlink(missing_ok=True)
            raise
        t = round(t * 1000) / 1000
        with self._lock:
            i = bisect.bisect_left(self.times, t)
            if i == len(self.times) or self.times[i] != t:
                self.times.insert(i, t)

    def remove_after(self, t: float) -> None:
        """Delete thumbnails at or after `t` (their ingest was rolled back)."""
        with self._lock:
            i = bisect.bisect_left(self.times, round(t * 1000) / 1000)
            gone, self.times = self.times[i:], self.times[:i]
        for s in gone:
            with contextlib.suppress(OSError):
                (self.folder / _name(s)).unlink()

    def nearest(self, t: float) -> Path | None:
        """The thumbnail nearest `t` seconds, or None if there is none."""
        with self._lock:
            if not self.times:
                return None
            i = bisect.bisect_left(self.times, t)
            candidates = [c for c in (i - 1, i) if 0 <= c < len(self.times)]
            best = min(candidates, key=lambda c: abs(self.times[c] - t))
            return self.folder / _name(self.times[best])

    def list(self) -> list[float]:
        with self._lock:
            return list(self.times)
