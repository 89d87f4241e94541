"""A bounded local cache in front of an object store: immutable objects (blocks, index parts, context
segments, read with `get(key, cache=True)`) are kept in a folder of their own after their first read or
write, and the least recently used are evicted when the folder holds more than `max_bytes`. Mutable objects
(commit records) always go to the store. The cache is only a copy: deleting it loses nothing."""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

from videokv.storage.backend import Backend

DEFAULT_CACHE_BYTES = 2 << 30


class CachedBackend(Backend):
    def __init__(
        self, inner: Backend, folder: str | Path, max_bytes: int | None = None, _shared: tuple | None = None
    ):
        self.inner = inner
        self.url = inner.url
        self.folder = Path(folder)
        self.max_bytes = DEFAULT_CACHE_BYTES if max_bytes is None else int(max_bytes)
        if _shared is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            lru: OrderedDict[str, int] = OrderedDict()
            for path in sorted(self.folder.iterdir(), key=lambda p: p.stat().st_mtime):
                if path.name.endswith(".tmp"):
                    path.unlink(missing_ok=True)
                else:
                    lru[path.name] = path.stat().st_size
            _shared = (lru, threading.Lock())
        self._lru, self._lock = _shared
        self.hits = self.misses = 0

    def _name(self, key: str) -> str:
        return hashlib.sha1(f"{self.inner.url}/{key}".encode()).hexdigest()

    def _keep(self, name: str, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        path = self.folder / name
        tmp = path.with_name(name + ".tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError:  # a cache that cannot write is only slower
            tmp.unlink(missing_ok=True)
            return
        with self._lock:
            self._lru[name] = len(data)
            self._lru.move_to_end(name)
            total = sum(self._lru.values())
            while total > self.max_bytes and self._lru:
                old, size = self._lru.popitem(last=False)
                (self.folder / old).unlink(missing_ok=True)
                total -= size

    def put(self, key: str, data: bytes) -> None:
        self.inner.put(key, data)

    def get(self, key: str, cache: bool = False) -> bytes:
        if not cache:
            return self.inner.get(key)
        name = self._name(key)
        with self._lock:
            known = name in self._lru
            if known:
                self._lru.move_to_end(name)
        if known:
            with contextlib.suppress(OSError):
                data = (self.folder / name).read_bytes()
                self.hits += 1
                return data
        self.misses += 1
        data = self.inner.get(key)
        self._keep(name, data)
        return data

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def list(self, prefix: str = "") -> list[str]:
        return self.inner.list(prefix)

    def children(self, prefix: str = "") -> list[str]:
        return self.inner.children(prefix)

    def delete(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        self.inner.delete(keys)
        for key in keys:
            name = self._name(key)
            with self._lock:
                self._lru.pop(name, None)
            (self.folder / name).unlink(missing_ok=True)

    def child(self, prefix: str) -> CachedBackend:
        return CachedBackend(self.inner.child(prefix), self.folder, self.max_bytes, (self._lru, self._lock))
