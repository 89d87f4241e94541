"""The storage contract on both backends (a folder and a real S3 store, SeaweedFS), the checksummed records,
and the bounded local cache."""

from __future__ import annotations

import pytest
import torch

from videokv.errors import CorruptData, StorageError, StorageUnavailable
from videokv.storage import LocalBackend, Missing, open_backend, pack, unpack
from videokv.storage.cache import CachedBackend
from videokv.storage.records import seal, unseal


@pytest.fixture(params=["folder", "s3"])
def backend(request, tmp_path):
    if request.param == "folder":
        return LocalBackend(tmp_path / "store")
    return open_backend(request.getfixturevalue("s3_url"))


def test_put_get_list_children_delete(backend):
    assert backend.list() == [] and backend.children() == []
    backend.put("a/b/one", b"1")
    backend.put("a/two", b"22")
    backend.put("a/two", b"222")  # replaced whole
    backend.put("c", b"")
    assert backend.get("a/two") == b"222" and backend.get("c") == b""
    assert sorted(backend.list()) == ["a/b/one", "a/two", "c"]
    assert sorted(backend.list("a")) == ["a/b/one", "a/two"]
    assert sorted(backend.children()) == ["a", "c"] and sorted(backend.children("a")) == ["b", "two"]
    assert backend.exists("a/b/one") and not backend.exists("a/b")
    with pytest.raises(Missing):
        backend.get("nope")
    child = backend.child("a")
    assert child.get("b/one") == b"1" and sorted(child.list()) == ["b/one", "two"]
    child.delete_prefix()
    assert backend.list() == ["c"]
    backend.delete(["c", "never-there"])
    assert backend.list() == []


def test_records_catch_every_flipped_byte_and_truncation():
    data = pack({"k": torch.arange(64, dtype=torch.float16).reshape(4, 16)}, {"row": 3, "text": "ß"})
    meta, tensors = unpack(data, "x")
    assert meta == {"row": 3, "text": "ß"} and torch.equal(
        tensors["k"], torch.arange(64).half().reshape(4, 16)
    )
    for i in range(0, len(data), max(1, len(data) // 97)):  # the envelope, the JSON header, the tensor bytes
        bad = bytearray(data)
        bad[i] ^= 0x01
        with pytest.raises(CorruptData):
            unpack(bytes(bad), "x")
    with pytest.raises(CorruptData, match="truncated"):
        unseal(data[:-1], "x")
    with pytest.raises(CorruptData):
        unpack(seal(b"not safetensors"), "x")


def test_a_failed_local_put_leaves_the_old_object_and_no_temporary(tmp_path, monkeypatch):
    store = LocalBackend(tmp_path / "s")
    store.put("k", b"old")

    def fail(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.fsync", fail)
    from videokv.errors import StorageFull

    with pytest.raises(StorageFull, match="no space"):
        store.put("k", b"new")
    monkeypatch.undo()
    assert store.get("k") == b"old"
    assert [p.name for p in (tmp_path / "s").iterdir()] == ["k"]


def test_the_cache_keeps_immutable_objects_within_its_bound(tmp_path, s3_url):
    inner = open_backend(s3_url)
    cache = CachedBackend(inner, tmp_path / "cache", max_bytes=2500)
    for i in range(4):
        cache.put(f"blocks/{i}", bytes([i]) * 1000)
    assert cache.get("blocks/0", cache=True) == bytes([0]) * 1000 and cache.misses == 1
    assert cache.get("blocks/0", cache=True) == bytes([0]) * 1000 and cache.hits == 1
    for i in range(1, 4):
        cache.get(f"blocks/{i}", cache=True)
    files = list((tmp_path / "cache").iterdir())
    assert len(files) == 2 and sum(f.stat().st_size for f in files) <= 2500  # least recently used evicted
    inner.delete(["blocks/3"])  # cached objects are immutable: a cached copy is still served...
    assert cache.get("blocks/3", cache=True) == bytes([3]) * 1000
    cache.put("state", b"a")
    cache.put("state", b"b")  # ...but mutable ones never come from the cache
    assert cache.get("state") == b"b"


def test_an_unreachable_store_is_a_retryable_error(monkeypatch):
    monkeypatch.setenv("VIDEOKV_S3_CONNECT_TIMEOUT", "0.5")
    monkeypatch.setenv("VIDEOKV_S3_ATTEMPTS", "1")
    from tests.server.conftest import free_port

    store = open_backend("s3://bucket/prefix", endpoint=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(StorageUnavailable, match="cannot be reached"):
        store.put("k", b"x")
    with pytest.raises(StorageUnavailable):
        store.get("k")


def test_bad_urls_and_keys_are_clear_errors(tmp_path):
    with pytest.raises(StorageError, match="s3://BUCKET"):
        open_backend("gs://bucket/x")
    with pytest.raises(StorageError, match="no bucket"):
        open_backend("s3:///x")
    with pytest.raises(StorageError, match="bad object key"):
        LocalBackend(tmp_path).put("../escape", b"x")
