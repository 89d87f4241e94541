"""Where a session's memory is kept: a local folder or an S3-compatible object store, behind one small
interface (`Backend`), with checksummed records (`records`) and a bounded local cache for object stores
(`cache`). The journal (videokv.journal) and session saves (videokv.persist) write through it."""

from videokv.storage.backend import Backend, LocalBackend, Missing, open_backend
from videokv.storage.records import pack, unpack

__all__ = ["Backend", "LocalBackend", "Missing", "open_backend", "pack", "unpack"]
