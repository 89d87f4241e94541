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
