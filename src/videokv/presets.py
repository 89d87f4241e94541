"""Named memory configurations. `videokv presets` lists them with their sources."""

from __future__ import annotations

from dataclasses import dataclass

from videokv.config import MemoryConfig
from videokv.errors import ConfigError


@dataclass(frozen=True)
class Preset:
    config: MemoryConfig
    summary: str
    source: str


PRESETS: dict[str, Preset] = {
    "full": Preset(
        MemoryConfig(name="full"),
        "attend to the whole stream (exact; memory grows with the stream)",
        "baseline",
    ),
    "window": Preset(
        MemoryConfig(name="window", window=2048),
        "attention sinks (the header prompt) + the most recent 2048 stream tokens",
        "StreamingLLM (Xiao et al., ICLR 2024), as used for ingest by ReKV",
    ),
}


def get_preset(name: str) -> MemoryConfig:
    """The MemoryConfig of preset `name`; an unknown name raises ConfigError listing the known ones."""
    try:
        return PRESETS[name].config
    except KeyError:
        raise ConfigError(f"unknown memory preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


def resolve_memory(memory: str | MemoryConfig, overrides: list[str] | None = None) -> MemoryConfig:
    """A MemoryConfig from a preset name or a config, with optional `key=value` overrides."""
    config = get_preset(memory) if isinstance(memory, str) else memory
    return config.with_overrides(overrides) if overrides else config
