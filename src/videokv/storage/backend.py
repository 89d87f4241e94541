"""The storage interface under the journal and session saves, and its local-folder implementation.

A backend holds objects by key ("sessions/ab12/state", "blocks/00000003-00000007", ...). The contract every
backend keeps, which the journal's commit protocol (videokv.journal) relies on:

- `put(key, data)` is atomic and durable: when it returns, a reader sees the whole new object, also after a
  crash of this process or machine; if it raises, a reader sees the old object or none, never a part.
- `get(key)` returns what the last successful `put` wrote, or raises `Missing`.
- `list(prefix)` names every object under `prefix` (in no particular order).
- Errors are videokv's: `StorageFull` (no room: disk full, quota), `StorageUnavailable` (cannot be reached
  now: retry), `StorageError` (anything else), each with what to do in its message.

Two backends: `LocalBackend` (a folder; today's default) and `S3Backend` (any S3-compatible object store,
videokv.storage.s3). `open_backend` picks one from a URL.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path

from videokv.errors import StorageError, StorageFull, StorageUnavailable

FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
BUSY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.ETIMEDOUT, errno.EIO}


class Missing(StorageError, KeyError):
    """No object under this key."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "missing object"


def storage_error(e: OSError, what: str) -> StorageError:
    """The videokv error for an OSError met while `what`."""
    if isinstance(e, StorageError):
        return e
    if e.errno in FULL_ERRNOS:
        return StorageFull(f"no space left while {what}: free space on the data folder's disk, then retry")
    if e.errno in BUSY_ERRNOS:
        return StorageUnavailable(f"{what} failed for now ({os.strerror(e.errno or 0)}); retry in a moment")
    return StorageError(f"{what} failed: {e.strerror or e}")


class Backend(ABC):
    """Objects by key (see the module docstring for the contract)."""

    url: str

    @abstractmethod
    def put(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def get(self, key: str, cache: bool = False) -> bytes:
        """The object's bytes; `cache`: the object is immutable (a backend with a local cache may keep it)."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]: ...

    @abstractmethod
    def children(self, prefix: str = "") -> list[str]:
        """The names one level below `prefix` (the "folders" and objects directly under it)."""

    @abstractmethod
    def delete(self, keys: Iterable[str]) -> None:
        """Delete the objects (missing ones are ignored)."""

    @abstractmethod
    def child(self, prefix: str) -> Backend:
        """The same storage seen under `prefix/`."""

    def exists(self, key: str) -> bool:
        try:
            self.get(key)
        except Missing:
            return False
        return True

    def delete_prefix(self, prefix: str = "") -> None:
        self.delete(self.list(prefix))

    def clean(self) -> None:  # noqa: B027 (optional)
        """Remove what a killed writer left half-written (a local folder's temporary files)."""

    @property
    def is_local(self) -> bool:
        return False


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalBackend(Backend):
    """Objects as files under a folder: `put` writes a temporary file, fsyncs it, renames it into place and
    fsyncs the folder; a failed `put` removes its temporary file at once."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.url = str(self.root)

    @property
    def is_local(self) -> bool:
        return True

    def path(self, key: str) -> Path:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise StorageError(f"bad object key {key!r}")
        return self.root / key

    def put(self, key: str, data: bytes) -> None:
        path = self.path(key)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(3)}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise storage_error(e, f"writing {path}") from e

    def get(self, key: str, cache: bool = False) -> bytes:
        path = self.path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError as e:
            raise Missing(f"{path} does not exist") from e
        except IsADirectoryError as e:
            raise Missing(f"{path} is a folder, not an object") from e
        except OSError as e:
            raise storage_error(e, f"reading {path}") from e

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        base = self.root / prefix if prefix else self.root
        if not base.is_dir():
            return []
        out = []
        for folder, _, files in os.walk(base):
            rel = Path(folder).relative_to(self.root)
            out += [str(rel / f) if str(rel) != "." else f for f in files if not f.startswith(".")]
        return out

    def children(self, prefix: str = "") -> list[str]:
        base = self.root / prefix if prefix else self.root
        if not base.is_dir():
            return []
        return [p.name for p in base.iterdir() if not p.name.startswith(".")]

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            with contextlib.suppress(FileNotFoundError):
                self.path(key).unlink()

    def child(self, prefix: str) -> LocalBackend:
        return LocalBackend(self.root / prefix)

    def clean(self) -> None:
        if not self.root.is_dir():
            return
        for folder, _, files in os.walk(self.root):
            for f in files:
                if f.startswith(".") and f.endswith(".tmp"):
                    with contextlib.suppress(OSError):
                        (Path(folder) / f).unlink()


def is_remote(url: str | Path) -> bool:
    return isinstance(url, str) and url.startswith("s3://")


def open_backend(
    url: str | Path,
    endpoint: str | None = None,
    cache_dir: str | Path | None = None,
    cache_bytes: int | None = None,
) -> Backend:
    """The backend a URL names: `s3://BUCKET/PREFIX` (an S3-compatible store; `endpoint`: its URL, default
    AWS or $AWS_ENDPOINT_URL; `cache_dir`/`cache_bytes`: a bounded local cache of immutable objects) or a
    folder path."""
    if isinstance(url, Backend):
        return url
    if is_remote(url):
        from videokv.storage.s3 import S3Backend

        backend: Backend = S3Backend.from_url(str(url), endpoint)
        if cache_dir is not None:
            from videokv.storage.cache import CachedBackend

            backend = CachedBackend(backend, cache_dir, cache_bytes)
        return backend
    if isinstance(url, str) and "://" in url:
        raise StorageError(f"unknown storage URL {url!r}: use a folder path or s3://BUCKET/PREFIX")
    return LocalBackend(url)
