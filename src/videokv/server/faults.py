"""Faults of the machine, not of the request, as answers a client can act on.

A full disk or quota (ENOSPC, EDQUOT, EFBIG, `StorageFull`) is a 507 naming the cause; a server out of file
descriptors (EMFILE, ENFILE), out of memory for a buffer (ENOMEM), with an I/O error (EIO) or whose storage
does not answer (`StorageUnavailable`, any other `StorageError`) is a 503 with Retry-After; stored memory
that fails verification (`CorruptData`) is a 500 naming it. The request's work was rolled back: what was
acknowledged before stays as it was. Other errors of the machine are a JSON 500 whose details are in the
server's log, never in the answer.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from videokv.errors import CorruptData, StorageError, StorageFull

FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
BUSY = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EIO}
RETRY_AFTER_S = 5


@dataclass(frozen=True)
class Fault:
    """The answer to a fault of the machine: status, message, and Retry-After (seconds) if retryable."""

    status: int
    message: str
    retry_after: int | None = None

    @property
    def headers(self) -> dict[str, str] | None:
        return None if self.retry_after is None else {"Retry-After": str(self.retry_after)}


def _causes(exc: BaseException, depth: int = 4):
    """`exc` and the errors it was raised from (explicitly or while handling), nearest first."""
    seen = 0
    while exc is not None and seen < depth:
        yield exc
        exc = exc.__cause__ or exc.__context__
        seen += 1


def fault_of(exc: BaseException) -> Fault | None:
    """The Fault that `exc` (or an error it was raised from) is, or None if it is not one of the machine."""
    for e in _causes(exc):
        fault = _storage_fault(e) or _os_fault(e)
        if fault is not None:
            return fault
    return None


def _storage_fault(e: BaseException) -> Fault | None:
    """videokv's storage errors: their messages say what failed and what to do already."""
    if isinstance(e, StorageFull):
        return Fault(507, str(e) or "the server's storage is full; retry when space has been freed")
    if isinstance(e, CorruptData):
        return Fault(500, str(e) or "the server's stored memory failed verification; it is not served")
    if isinstance(e, StorageError):  # StorageUnavailable, an I/O error
        retry = int(getattr(e, "retry_after", None) or RETRY_AFTER_S)
        return Fault(503, str(e) or "the server's storage is not available; retry in a moment", retry)
    return None


def _os_fault(e: BaseException) -> Fault | None:
    code = e.errno if isinstance(e, OSError) else None
    if code in FULL:
        return Fault(
            507,
            f"the server's disk is full ({_reason(code)}); nothing of this request was kept: retry when "
            "space has been freed on the server",
        )
    if code in BUSY:
        return Fault(
            503,
            f"the server is out of resources for the moment ({_reason(code)}); nothing of this request was "
            "kept: retry in a moment",
            RETRY_AFTER_S,
        )
    return None


def _reason(code: int) -> str:
    """The system's words for an errno, without the file name (errors never show server paths)."""
    import os

    return f"{errno.errorcode.get(code, code)}: {os.strerror(code)}"


__all__ = ["Fault", "fault_of"]
