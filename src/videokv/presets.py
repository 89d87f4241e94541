"""Named memory configurations. `videokv presets` lists them with their sources.

Each preset takes its paper's defaults, scaled to the model: windows the papers give in tokens for
LLaVA-OV's 196-token frames are given here in frames (converted with the tokens per frame of the model at
hand); block counts (top-k) are counts of frames or units; per-layer policies (per-layer top-k,
layer-adaptive budgets) use the model's own number of layers.
"""

from __future__ import annotations

from dataclasses import dataclass

from videokv.config import MemoryConfig
from videokv.errors import ConfigError
from videokv.policies.compress import Bilevel, MultiGrain, NoCompression, Pool
from videokv.policies.compress.guidance import Guidance
from videokv.policies.ingest import Independent, PrevBlocks, Window
from videokv.policies.retrieve import BilevelReload, Hierarchical, LayerAdaptive, TopK, WithText
from videokv.policies.retrieve.uniform import UniformSample
from videokv.policies.segment import Semantic, Uniform
from videokv.policies.summary import SegmentSummary

# ReKV's local window holds 15000 tokens = about 77 frames of LLaVA-OV's 196 tokens; here it is given in
# frames, so it follows the model's frame size. Units of one chunk are prefilled 8 per forward (Window.batch):
INGEST_WINDOW = Window(frames=77, batch=8)


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
        MemoryConfig(name="window", ingest=Window(2048)),
        "attention sinks (the header prompt) + the most recent 2048 stream tokens",
        "StreamingLLM (Xiao et al., ICLR 2024), as ReKV uses it for ingest",
    ),
    "uniform": Preset(
        MemoryConfig(
            name="uniform",
            ingest=INGEST_WINDOW,
            segment=Uniform(1),
            retrieve=UniformSample(k=64),
            positions="compact",
        ),
        "64 frames evenly spaced over the stream (+ all timed text): the same budget as rekv, query-agnostic",
        "the uniform-sampling baseline of the ReKV / StreamKV / MuKV papers",
    ),
    "rekv": Preset(
        MemoryConfig(
            name="rekv",
            ingest=INGEST_WINDOW,
            segment=Uniform(1),
            compress=NoCompression(),
            retrieve=TopK(k=64, per_layer=True),
            positions="compact",
        ),
        "one block per frame; per-layer top-64 blocks by the bare question's layer-wise query . mean block "
        "key; compact positions",
        "ReKV (Di et al., ICLR 2025), Becomebright/ReKV",
    ),
    "streamkv": Preset(
        MemoryConfig(
            name="streamkv",
            ingest=INGEST_WINDOW,
            segment=Semantic(0.99, 4, 64),
            compress=Guidance(keep=0.6, temp=1.0),
            summary=SegmentSummary(),
            retrieve=LayerAdaptive(k=64, temp=0.5, recent=8, max_k=128),
            positions="compact",
        ),
        "semantic segments + summary pseudo-frames; guidance-prompt frame selection (60%, per layer), one "
        "block per frame; layer-adaptive retrieval of 64 frame blocks per layer (at most 128), the newest 8 "
        "inside, from layer-wise queries of the bare question",
        "StreamKV (arXiv 2511.07278), sou1p0wer/StreamKV",
    ),
    "mukv": Preset(
        MemoryConfig(
            name="mukv",
            ingest=Independent(restart=True),
            segment=Uniform(4),
            compress=MultiGrain(alone=True),
            retrieve=Hierarchical(rotated=True),
            positions="compact",
        ),
        "4-frame units prefilled independently, each right after the sinks, and each of their frames and "
        "quarter-frames too; kept as patch/frame/segment blocks by dual-signal (attention + key frequency) "
        "selection on their own prefill; semi-hierarchical retrieval (the "
        "question's last cached key . each block's mean cached key, both after the sinks) with "
        "context re-ranking; the retrieved blocks placed one after another, the question after them",
        "MuKV (CVPR 2026, arXiv 2605.22269), IMBALDY/MuKV",
    ),
    "x2l": Preset(
        MemoryConfig(
            name="x2l",
            ingest=PrevBlocks(3),
            segment=Uniform(4),
            compress=Bilevel(low=NoCompression(), high=Pool(stride=8), offload_low=True),
            retrieve=BilevelReload(k_low=4, keep_ends=True),
            positions="keep",
        ),
        "4-frame chunks seeing the previous 3; each kept at low (L, full; waits in slower memory) and high "
        "(H, 8x pooled; kept at hand) "
        "compression; L reloaded for the first and last chunks and the 4 most relevant to the question, H "
        "for the rest",
        "Video-X²L (arXiv 2506.21184); Video-XL-2 chunked prefill + bi-level KV (VectorSpaceLab/Video-XL)",
    ),
    "videokv": Preset(
        MemoryConfig(
            name="videokv",
            ingest=INGEST_WINDOW,
            segment=Uniform(1),
            compress=NoCompression(offload=True),
            retrieve=WithText(
                TopK(k=32, per_layer=True, layerwise=True), k=12, ratio=0.25, bridges=2, neighbours=1
            ),
            positions="compact",
        ),
        "videokv's own: rekv's faithful layer-wise per-layer retrieval of the top-32 frame blocks (half of "
        "rekv's 64: the text matching finds the timed facts), plus up to 12 subtitle or "
        "transcript blocks matching the question's words (each adding new words or repeating a kept line; "
        "two-hop bridges; a line's neighbours for before/after questions); every block waits off the fastest "
        "tier (host RAM beside an accelerator, disk on a CPU) and only the retrieved ones are loaded",
        "ReKV (retrieval, ingest window, compact positions) + Video-RAG-style lexical text retrieval "
        "(WithText) + ReKV's / Video-X²L's offloaded KV (the store's cold lane)",
    ),
}

# the memory of `ask`, `stream` and `serve` when none is given (the Python API's default is `full`, exact)
DEFAULT_PRESET = "videokv"


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
