"""Receiving a multipart upload as a stream: file parts go straight to disk, under a size cap.

Starlette's form parser would spool the whole upload before the handler sees it; this parser writes each
file part into the session's folder as it arrives and stops writing as soon as the cap is passed (the rest
of the body is read and dropped, up to a bound, so the client gets its 413 answer). The cap counts every
byte of the body: the files' and fields' bytes, and the multipart framing (part headers, boundaries) beyond
an allowance of FRAMING_BYTES (python-multipart bounds one part's headers: 8 lines of 4 KiB). A file the
server cannot write (a full disk, no file descriptors left) ends the request with that OSError (507 / 503),
its partial files removed.
"""

from __future__ import annotations

import contextlib
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from videokv.server.sessions import BadRequest, TooLarge

FILE_FIELDS = ("file", "subtitles")
MAX_FIELD_BYTES = 1024  # a plain form field (fps)
FRAMING_BYTES = 64 * 2**10  # multipart framing (part headers, boundaries) a body may carry beyond the cap
DRAIN_BYTES = 256 * 2**20  # read and drop at most this much past the cap before answering 413
_SAFE_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,8}$")


@dataclass
class Upload:
    """What a multipart request carried: saved file parts and small fields."""

    files: dict[str, Path] = field(default_factory=dict)
    filenames: dict[str, str] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)
    size: int = 0

    def cleanup(self) -> None:
        for path in self.files.values():
            path.unlink(missing_ok=True)


class _Receiver:
    def __init__(self, folder: Path, max_bytes: int):
        self.folder = folder
        self.max_bytes = max_bytes
        self.upload = Upload()
        self.too_large = False
        self.error: str | None = None
        self._headers: dict[str, str] = {}
        self._field = b""
        self._value = b""
        self._name: str | None = None
        self._fh: BinaryIO | None = None
        self._buf: bytearray | None = None

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self.part_begin,
            "on_header_field": lambda d, s, e: setattr(self, "_field", self._field + d[s:e]),
            "on_header_value": lambda d, s, e: setattr(self, "_value", self._value + d[s:e]),
            "on_header_end": self.header_end,
            "on_headers_finished": self.headers_finished,
            "on_part_data": self.part_data,
            "on_part_end": self.part_end,
        }

    def part_begin(self) -> None:
        self._headers = {}
        self._name = None
        self._fh = None
        self._buf = None

    def header_end(self) -> None:
        self._headers[self._field.decode("latin-1").lower()] = self._value.decode("latin-1")
        self._field, self._value = b"", b""

    def headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get("content-disposition", ""))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        filename = params.get(b"filename")
        self._name = name
        if name in FILE_FIELDS:
            if name in self.upload.files:
                self.error = f"the multipart field {name!r} appears twice; send one"
                return
            original = filename.decode("utf-8", "replace") if filename else name
            suffix = Path(original).suffix.lower()
            suffix = suffix if _SAFE_SUFFIX.match(suffix) else ""
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / f"{name}-{secrets.token_hex(4)}{suffix}"
            self.upload.files[name] = path
            self.upload.filenames[name] = original
            self._fh = open(path, "wb")  # noqa: SIM115 - closed in part_end
        else:
            self._buf = bytearray()

    def part_data(self, data: bytes, start: int, end: int) -> None:
        n = end - start
        self.upload.size += n
        if self.upload.size > self.max_bytes:
            self.too_large = True
            self._close()
            return
        if self._fh is not None:
            self._fh.write(data[start:end])
        elif self._buf is not None and len(self._buf) + n <= MAX_FIELD_BYTES:
            self._buf += data[start:end]

    def part_end(self) -> None:
        if self._buf is not None and self._name:
            self.upload.fields[self._name] = self._buf.decode("utf-8", "replace")
        self._close()

    def _close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


async def receive_upload(request: Request, folder: Path, max_bytes: int) -> Upload:
    """Parse a multipart/form-data request, saving the `file` and `subtitles` parts into `folder`.

    Raises TooLarge past `max_bytes` (nothing is kept), BadRequest for a request that is not multipart.
    """
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise BadRequest(
            "send the video as multipart/form-data with a 'file' part (and optionally 'subtitles', 'fps')"
        )
    limit = max_bytes + FRAMING_BYTES  # the whole body: files, fields and framing
    _check_declared(request, limit, max_bytes)
    receiver = _Receiver(folder, max_bytes)
    try:
        parser = MultipartParser(boundary, receiver.callbacks())
    except Exception as e:
        raise BadRequest(f"bad multipart boundary: {e}") from e
    try:
        await _feed(request, parser, receiver, limit)
    except BaseException:
        receiver._close()
        receiver.upload.cleanup()
        raise
    receiver._close()
    if receiver.too_large:
        receiver.upload.cleanup()
        raise _too_large(max_bytes)
    if receiver.error:
        receiver.upload.cleanup()
        raise BadRequest(receiver.error)
    return receiver.upload


async def _feed(request: Request, parser: MultipartParser, receiver: _Receiver, limit: int) -> None:
    """Stream the body into the parser, counting every byte against `limit`; past it (or past the cap on
    the files) the rest is read and dropped, up to DRAIN_BYTES. A file that cannot be written raises its
    OSError; a malformed body BadRequest."""
    received = drained = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            receiver.too_large = True
        if receiver.too_large:
            drained += len(chunk)
            if drained > DRAIN_BYTES:
                break
            continue
        try:
            parser.write(chunk)
        except OSError:  # the server's disk or file descriptors, not the client's body
            raise
        except Exception as e:  # python-multipart raises its own parse errors
            raise BadRequest(f"the multipart body is malformed: {e}") from e
    if not receiver.too_large:
        with contextlib.suppress(Exception):
            parser.finalize()


def _check_declared(request: Request, limit: int, max_bytes: int) -> None:
    """413 at once for a body whose Content-Length is over `limit` (nothing of it is read)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise _too_large(max_bytes)


def _too_large(max_bytes: int) -> TooLarge:
    return TooLarge(
        f"the upload is larger than this server's limit of {max_bytes / 2**20:.1f} MiB (every byte of the "
        "body counts: files, fields, part headers); send a shorter clip, stream it with POST "
        "/v1/sessions/{id}/source, or start the server with a larger --max-upload-mb"
    )
