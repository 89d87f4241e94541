"""MemoryConfig: how a session's memory behaves, as a combination of small policies.

Presets (presets.py) are named MemoryConfigs. Overrides use `key=value` strings (the CLI's --memory-set):
`positions=compact`, `retrieve=topk` (swap a policy by its registry name), `retrieve.k=32` (a policy's
parameter, nested ones too: `compress.low.keep=0.5`), `window=4096` (shorthand for `ingest=window` with that
many tokens), `text_k=4` (shorthand for wrapping the retriever in `WithText` with that many text blocks).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from videokv.errors import ConfigError
from videokv.policies.compress import NoCompression
from videokv.policies.ingest import Window
from videokv.policies.segment import Uniform

POLICY_FIELDS = ("ingest", "segment", "compress", "retrieve")


@dataclass(frozen=True)
class MemoryConfig:
    """The memory of one stream.

    Parameters
    ----------
    name: the preset's name (informational; shown in answers' statistics and evidence).
    ingest: what a new unit attends to while prefilled (policies/ingest.py); Window(None) is full attention.
    segment: where a memory unit ends (policies/segment).
    compress: what is kept of a unit's frame tokens (policies/compress).
    retrieve: which blocks a question sees (policies/retrieve); None answers from the ingest context itself
        (the `full` and `window` presets), without a block store.
    positions: "keep" (keys keep the positions they were computed at; the question at the stream cursor),
        "compact" (re-rotate the assembled context to contiguous positions) or "length" (keys as computed,
        the question at the context's length: Video-XL-2).
    summary: a pseudo-block policy run on every unit with frames (`SegmentSummary`: StreamKV's
        segment-summary pseudo-frame, a block kept whole and retrieved like the others); None: none.
        ``summary=true`` / ``false`` in overrides stand for SegmentSummary() / None.
    sinks: how many header tokens stay as attention sinks; None keeps the whole header.
    device_bytes / host_bytes: byte budgets of the accelerator and host tiers of the block store (None: no
        limit); older blocks spill to the next tier, finally to disk (spill_dir, default a temp folder).
    index: the retrieval index backend: "torch" (one matrix product per layer) or "faiss" (a FAISS
        inner-product index per layer that top-k retrieval searches; needs faiss-cpu).
    """

    name: str = "full"
    ingest: Any = field(default_factory=Window)
    segment: Any = field(default_factory=Uniform)
    compress: Any = field(default_factory=NoCompression)
    retrieve: Any = None
    positions: str = "keep"
    summary: Any = None
    sinks: int | None = None
    device_bytes: int | None = None
    host_bytes: int | None = None
    spill_dir: str | None = None
    index: str = "torch"

    def __post_init__(self) -> None:
        from videokv.policies.summary import SegmentSummary

        if isinstance(self.summary, bool):  # the shorthand of configs and overrides
            object.__setattr__(self, "summary", SegmentSummary() if self.summary else None)
        if self.summary is not None and not callable(getattr(self.summary, "piece", None)):
            raise ConfigError(
                f"summary must be a pseudo-block policy (SegmentSummary) or None; got {self.summary!r}"
            )
        if self.index not in ("torch", "faiss"):
            raise ConfigError(f"index must be 'torch' or 'faiss'; got {self.index!r}")
        if self.positions not in ("keep", "compact", "length"):
            raise ConfigError(f"positions must be 'keep', 'compact' or 'length'; got {self.positions!r}")
        if self.positions == "length" and self.retrieve is not None and self.retrieve.layerwise_query():
            raise ConfigError(
                "positions=length places the question after the whole assembled context, which a layerwise "
                "retriever's forward does not know beforehand; use positions=keep or compact with it"
            )
        if getattr(self.ingest, "restart", False) and self.positions != "compact":
            raise ConfigError(
                "ingest.restart places every unit at the same positions; it needs positions=compact "
                "(the retrieved blocks re-placed one after another)"
            )
        if self.sinks is not None and self.sinks < 0:
            raise ConfigError(f"sinks must be >= 0 or None; got {self.sinks}")
        for name in ("device_bytes", "host_bytes"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be a positive number of bytes or None; got {value!r}")

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
        """Apply `key=value` strings (see the module docstring), left to right."""
        from videokv.policies import make_policy

        config = self
        touched: list[tuple[str, str]] = []  # (policy field, key) of the policy overrides
        for pair in pairs:
            key, sep, raw = pair.partition("=")
            key, raw = key.strip(), raw.strip()
            if not sep or not key:
                raise ConfigError(f"--memory-set expects key=value; got {pair!r}")
            value = _parse_value(raw)
            if key == "window":
                config = config.replace(ingest=Window(value))
            elif key == "text_k":
                config = config.replace(retrieve=_with_text(config, value))
            elif "." in key:
                kind, _, path = key.partition(".")
                policy = getattr(config, kind, None) if kind in POLICY_FIELDS else None
                if policy is None or not dataclasses.is_dataclass(policy):
                    raise ConfigError(f"{key!r}: {kind!r} is not a policy set in this config")
                touched.append((kind, key))
                config = config.replace(**{kind: _set_nested(policy, path.split("."), value, key, raw)})
            elif key in POLICY_FIELDS:
                touched.append((key, key))
                config = config.replace(**{key: make_policy(key, raw)})
            else:
                config = config.replace(**{key: value})
        for kind, key in touched:
            config._check_applies(kind, key)
        return config

    def _check_applies(self, kind: str, key: str) -> None:
        """An override of a memory-mode policy (segment, compress) under a context preset (no retriever:
        `full`, `window`) would silently do nothing: refuse it and say what applies."""
        if self.retrieve is None and kind in ("segment", "compress"):
            raise ConfigError(
                f"{key!r} does not apply to memory {self.name!r}: it answers from its context, without "
                f"memory units, so segment and compress are unused; what applies: ingest (window=N), sinks, "
                f"and retrieve=<name> to turn it into a memory preset"
            )

    def describe(self) -> dict:
        """A JSON-friendly description (policies by class name and parameters)."""
        out: dict[str, object] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                value = {"policy": getattr(value, "name", type(value).__name__), **dataclasses.asdict(value)}
            out[f.name] = value
        return out


def _with_text(config: MemoryConfig, k: object) -> Any:
    """`config`'s retriever extended with the `k` best-matching text blocks (`text_k=k`); 0 unwraps it. A
    retriever already wrapped keeps its other matching parameters (`ratio`, `bridges`, `neighbours`)."""
    from videokv.policies.retrieve import WithText

    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ConfigError(f"text_k must be an int >= 0; got {k!r}")
    base = config.retrieve.base if isinstance(config.retrieve, WithText) else config.retrieve
    if base is None:
        raise ConfigError(
            f"text_k needs a memory preset (a retriever); {config.name!r} answers from its context: "
            f"set retrieve=<name> first"
        )
    if not k:
        return base
    if isinstance(config.retrieve, WithText):
        return dataclasses.replace(config.retrieve, k=k)
    return WithText(base=base, k=k)


def _set_nested(policy: Any, path: list[str], value: object, key: str, raw: str) -> Any:
    """`policy` with the parameter at `path` (e.g. ["low", "keep"] for ``compress.low.keep``) set; a nested
    policy is swapped by its registry name (``compress.low=knorm``)."""
    from videokv.policies import make_policy

    param, rest = path[0], path[1:]
    params = {f.name for f in dataclasses.fields(policy)}
    if param not in params:
        raise ConfigError(
            f"{key!r}: unknown parameter {param!r} of {type(policy).__name__}; "
            f"valid: {', '.join(sorted(params)) or 'none'}"
        )
    if rest:
        inner = getattr(policy, param)
        if not dataclasses.is_dataclass(inner):
            raise ConfigError(f"{key!r}: {param!r} of {type(policy).__name__} is not a policy")
        value = _set_nested(inner, rest, value, key, raw)
    elif dataclasses.is_dataclass(getattr(policy, param)) and isinstance(value, str):
        value = make_policy(key.partition(".")[0], value)
    try:
        return dataclasses.replace(policy, **{param: value})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{key}={raw}: {e}") from e


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
