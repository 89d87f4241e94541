"""Compressors: what of a prefilled unit goes into memory (kept tokens or pooled K/V, per layer).

| name          | class           | what it keeps                                       | source           |
| ------------- | --------------- | --------------------------------------------------- | ---------------- |
| `none`        | `NoCompression` | every token                                         | ReKV, StreamKV   |
| `pool`        | `Pool`          | K/V averaged over `stride`-token windows per frame  | Video-XL-2 / X²L |
| `knorm`       | `KeyNorm`       | lowest key norms                                    | KnormPress       |
| `value_norm`  | `ValueNorm`     | highest value norms (VaN)                           | InfiniPot-V      |
| `redundancy`  | `Redundancy`    | newest frames + older tokens least like them (TaR)  | InfiniPot-V      |
| `infinipot`   | `InfiniPot`     | a TaR share of the budget, the rest by value norm   | InfiniPot-V      |
| `dual_signal` | `DualSignal`    | attention received + high-frequency key content     | MuKV             |
| `bilevel`     | `Bilevel`       | a low ("L") and a high ("H") copy of every unit     | Video-X²L        |
"""

from videokv.policies.compress.base import Compressor, ScorerCompressor
from videokv.policies.compress.bilevel import Bilevel
from videokv.policies.compress.dual_signal import DualSignal
from videokv.policies.compress.infinipot import InfiniPot
from videokv.policies.compress.knorm import KeyNorm
from videokv.policies.compress.multigrain import MultiGrain
from videokv.policies.compress.none import NoCompression
from videokv.policies.compress.pool import Pool
from videokv.policies.compress.redundancy import Redundancy
from videokv.policies.compress.value_norm import ValueNorm

COMPRESSORS: dict[str, type[Compressor]] = {
    c.name: c
    for c in (
        NoCompression,
        Pool,
        KeyNorm,
        ValueNorm,
        Redundancy,
        InfiniPot,
        DualSignal,
        Bilevel,
        MultiGrain,
    )
}

__all__ = [
    "COMPRESSORS",
    "Bilevel",
    "Compressor",
    "DualSignal",
    "InfiniPot",
    "KeyNorm",
    "MultiGrain",
    "NoCompression",
    "Pool",
    "Redundancy",
    "ScorerCompressor",
    "ValueNorm",
]
