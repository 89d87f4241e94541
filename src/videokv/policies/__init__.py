"""Memory policies, by kind. Each policy is a small frozen dataclass in its own file; `make_policy` builds
one from its registry name (as `--memory-set retrieve=topk` does)."""

from __future__ import annotations

from videokv.errors import ConfigError


def registry() -> dict[str, dict[str, type]]:
    """{kind: {name: class}} for every policy kind a MemoryConfig holds."""
    from videokv.policies import compress, ingest, retrieve, segment
    from videokv.policies.compress.guidance import Guidance
    from videokv.policies.retrieve.uniform import UniformSample

    retrievers = (
        retrieve.AllBlocks,
        retrieve.TopK,
        retrieve.Recent,
        retrieve.LayerAdaptive,
        retrieve.Hierarchical,
        retrieve.BilevelReload,
        retrieve.WithText,
        UniformSample,
    )
    return {
        "ingest": dict(ingest.INGEST_POLICIES),
        "segment": {c.name: c for c in (segment.Uniform, segment.Semantic)},
        "compress": {**compress.COMPRESSORS, Guidance.name: Guidance},
        "retrieve": {c.name: c for c in retrievers},
    }


def make_policy(kind: str, name: str) -> object:
    """A policy of `kind` by registry name, with its default parameters ("none" for no retriever)."""
    if kind == "retrieve" and name.lower() == "none":
        return None
    known = registry()[kind]
    if name not in known:
        raise ConfigError(f"unknown {kind} policy {name!r}; choose one of: {', '.join(sorted(known))}")
    return known[name]()
