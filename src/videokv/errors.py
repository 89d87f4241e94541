"""Errors raised by videokv. Every error says what was wrong and what to do about it."""

from __future__ import annotations


class VideoKVError(Exception):
    """Base class of every error videokv raises on purpose."""


class InputError(VideoKVError, ValueError):
    """Bad input from the user: a file, a frame array, a question, a parameter."""


class VideoError(InputError):
    """A video file is missing, is not a video, or cannot be decoded."""


class SubtitleError(InputError):
    """A subtitle file is missing or malformed."""


class ConfigError(InputError):
    """An unknown preset or parameter, or a value out of range."""


class ModelNotAvailable(VideoKVError, RuntimeError):
    """A model (or the offline weights) cannot be found; the message says how to install it."""


class StorageError(VideoKVError, OSError):
    """Memory could not be written to or read from its storage (a folder or an object store)."""


class StorageFull(StorageError):
    """The storage has no room left (a full disk, a quota): free space, then retry; nothing acknowledged was
    lost."""


class StorageUnavailable(StorageError):
    """The storage cannot be reached (an object store down, a timeout): retry later; nothing acknowledged
    was lost."""


class CorruptData(StorageError):
    """Stored memory failed verification (a checksum, a missing object, a malformed record): it is never
    served; the session is quarantined."""
