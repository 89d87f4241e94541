"""The media of an OpenAI chat request: `image_url` and `video_url` parts read from data URIs, URLs or
server paths, under the service's guards, checked before anything is ingested.

A data URI (`data:video/mp4;base64,...`, `data:image/png;base64,...`) is decoded here; a video's bytes are
capped by --max-upload-mb and written to a temporary file under the data dir. An http(s) URL is allowed only
as the service's URL sources are (--allow-urls / --allow-url-host, every redirect checked) and downloaded
under the same cap; a live stream (rtsp, ...) is a source (POST /v1/sessions/{id}/source), not a chat
part. A `file://` URL or a plain path must lie under --media-dir. Every video is probed (it must be one
FFmpeg reads, with frames of at most --max-frame-pixels) and every image's size read from its header before
the request does any model work.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from videokv.errors import VideoError
from videokv.server import limits as L
from videokv.server.sessions import BadRequest, NotAVideo, TooLarge, frames_from_request
from videokv.video.decode import VideoInfo, probe

_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*?);base64,", re.IGNORECASE)


class MediaError(BadRequest):
    """A bad media part; `param` names it (messages[i].content[j])."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


@dataclass
class Media:
    """One image or video of a request, ready to ingest: an image as a uint8 [1, H, W, 3] array, a video as
    a local file with its header."""

    kind: str  # "image" or "video"
    where: str  # messages[i].content[j]
    frames: np.ndarray | None = None
    path: Path | None = None
    info: VideoInfo | None = None


@dataclass
class MediaSet:
    """The media of one request, in order, and the temporary files to remove when it is done."""

    items: list[Media] = field(default_factory=list)
    temp: list[Path] = field(default_factory=list)

    def cleanup(self) -> None:
        for path in self.temp:
            path.unlink(missing_ok=True)


def temp_dir(data_dir: Path) -> Path:
    """The folder of request media in transit (emptied when the server starts)."""
    return Path(data_dir) / "openai-media"


def clear_temp(data_dir: Path) -> None:
    shutil.rmtree(temp_dir(data_dir), ignore_errors=True)


def _data_uri(url: str, where: str, kind: str, max_bytes: int) -> bytes:
    m = _DATA_URI.match(url[:300])
    if m is None:
        raise MediaError(f"{where}: a data URI must be base64: data:<type>;base64,<data>", where)
    mime = (m.group("mime") or "").lower()
    if mime and not (mime.startswith(kind + "/") or mime == "application/octet-stream"):
        raise MediaError(
            f"{where}: a {kind} part carries {mime!r} data; send {kind}/* (e.g. {_EXAMPLE[kind]})", where
        )
    payload = url[m.end() :]
    if len(payload) * 3 // 4 > max_bytes:
        raise TooLarge(
            f"{where}: the {kind} ({len(payload) * 3 // 4} bytes) is over this server's limit of {max_bytes} "
            "bytes; send a shorter clip, or start the server with a larger --max-upload-mb"
        )
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise MediaError(f"{where}: the data URI is not valid base64 ({e})", where) from e


_EXAMPLE = {"image": "image/png", "video": "video/mp4"}


def _download(limits: L.Limits, url: str, where: str, max_bytes: int, folder: Path, suffix: str) -> Path:
    """An http(s) URL allowed by the URL policy, downloaded (redirects checked) under `max_bytes`."""
    import httpx

    L.check_url(limits, url)
    if urlsplit(url).scheme.lower() not in ("http", "https"):
        raise MediaError(
            f"{where}: {urlsplit(url).scheme}:// is a live stream; ingest it as a source "
            "(POST /v1/sessions/{id}/source) and ask with extra_body session, or send an http(s) URL "
            "or a data URI",
            where,
        )
    url = L.resolve_redirects(limits, url)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{secrets.token_hex(8)}{suffix}"
    size = 0
    try:
        with httpx.Client(follow_redirects=False, timeout=30.0) as client, client.stream("GET", url) as r:
            if r.status_code != 200:
                raise MediaError(f"{where}: fetching the URL answered HTTP {r.status_code}", where)
            with open(path, "wb") as fh:
                for chunk in r.iter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise TooLarge(
                            f"{where}: the URL's content is over this server's limit of {max_bytes} bytes; "
                            "start the server with a larger --max-upload-mb"
                        )
                    fh.write(chunk)
    except httpx.HTTPError as e:
        path.unlink(missing_ok=True)
        raise MediaError(f"{where}: cannot fetch the URL ({type(e).__name__})", where) from None
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def _local(limits: L.Limits, url: str, where: str, max_bytes: int) -> Path:
    try:
        path = L.server_path(limits, url, f"{where}:")
    except BadRequest as e:
        raise MediaError(str(e), where) from None
    if path.stat().st_size > max_bytes:
        raise TooLarge(
            f"{where}: the file is over this server's limit of {max_bytes} bytes; start the server with a "
            "larger --max-upload-mb"
        )
    return path


def _probe_video(limits: L.Limits, path: Path, where: str) -> VideoInfo:
    try:
        info = probe(path)
    except VideoError as e:
        error = NotAVideo(
            f"{where} is not a video FFmpeg can read ({str(e).split(': ', 1)[-1]}); send an mp4, webm, mkv, "
            "mov or avi file"
        )
        error.param = where
        raise error from None
    if info.duration <= 0 and info.frames <= 0:
        error = NotAVideo(f"{where} has no frames; send a video with at least one frame")
        error.param = where
        raise error
    L.check_frame_pixels(limits, info.width, info.height, f"the frames of {where}")
    return info


def read_media(
    parts: list[tuple[str, str, str]],
    limits: L.Limits,
    data_dir: Path,
    max_bytes: int,
    check: Callable[[], None] | None = None,
) -> MediaSet:
    """Read and check every (kind, url, where) part (blocking: run it in a worker thread); `check` is called
    before each part (it raises to stop: the client has gone). On error the temporary files made so far are
    removed."""
    out = MediaSet()
    folder = temp_dir(data_dir)
    try:
        pixels = 0
        for kind, url, where in parts:
            if check is not None:
                check()
            url = url.strip()
            scheme = urlsplit(url).scheme.lower() if "://" in url or url.lower().startswith("data:") else ""
            if url.lower().startswith("data:"):
                data = _data_uri(url, where, kind, max_bytes)
                path = None
                if kind == "video":
                    folder.mkdir(parents=True, exist_ok=True)
                    path = folder / f"{secrets.token_hex(8)}.video"
                    path.write_bytes(data)
                    out.temp.append(path)
            elif scheme and scheme != "file":
                path = _download(
                    limits, url, where, max_bytes, folder, ".video" if kind == "video" else ".img"
                )
                out.temp.append(path)
                data = None if kind == "video" else path.read_bytes()
            else:
                path = _local(limits, url, where, max_bytes)
                data = None if kind == "video" else path.read_bytes()
            if kind == "video":
                out.items.append(Media("video", where, path=path, info=_probe_video(limits, path, where)))
                continue
            try:
                ((w, h),) = L.image_sizes(limits, [data])
            except BadRequest as e:
                raise MediaError(f"{where}: {str(e).replace('image 0 ', 'the image ')}", where) from None
            pixels += w * h
            if pixels > limits.max_request_pixels:
                raise L.over("max_request_pixels", limits, "the pixels of this request's images", pixels, 413)
            try:
                frames = frames_from_request([data], None, None)
            except BadRequest as e:
                raise MediaError(f"{where}: {e}", where) from None
            out.items.append(Media("image", where, frames=frames))
        return out
    except BaseException:
        with contextlib.suppress(Exception):
            out.cleanup()
        raise
