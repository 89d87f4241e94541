"""MemoryConfig: how a session's memory behaves. Presets (presets.py) are named MemoryConfigs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from videokv.errors import ConfigError


@dataclass(frozen=True)
class MemoryConfig:
    """The memory of one stream.

    Parameters
    ----------
    name: the preset's name (informational).
    window: tokens of the stream the ingest context keeps besides the sinks (the header prompt); None keeps
        everything (`full`). With a window, a question sees only the sinks and the window.
    sinks: how many tokens of the header prompt stay as attention sinks; None keeps the whole header.
    """

    name: str = "full"
    window: int | None = None
    sinks: int | None = None

    def __post_init__(self) -> None:
        if self.window is not None and self.window < 1:
            raise ConfigError(f"window must be a positive number of tokens or None; got {self.window}")
        if self.sinks is not None and self.sinks < 0:
            raise ConfigError(f"sinks must be >= 0 or None; got {self.sinks}")

    def replace(self, **overrides: object) -> MemoryConfig:
        """A copy with `overrides`; unknown keys raise ConfigError listing the valid ones."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ConfigError(
                f"unknown memory parameter(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}"
            )
        return dataclasses.replace(self, **overrides)

    def with_overrides(self, pairs: list[str]) -> MemoryConfig:
        """Apply `key=value` strings (as given to --memory-set); values parse as int, float, None or str."""
        overrides: dict[str, object] = {}
        for pair in pairs:
            key, sep, raw = pair.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"--memory-set expects key=value; got {pair!r}")
            overrides[key.strip()] = _parse_value(raw.strip())
        return self.replace(**overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _parse_value(raw: str) -> object:
    if raw.lower() in ("none", "null", ""):
        return None
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw
