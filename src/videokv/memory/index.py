"""The retrieval index: every stored block's retrieval keys and metadata, as tensors a retriever scores.

Scoring all blocks is one matrix product per layer over `rkeys` [N, L, D] (see `Catalog.scores`), stored
layer-major so that each layer's keys are contiguous.
"""

from __future__ import annotations

import torch

from videokv.errors import ConfigError
from videokv.memory.block import KVBlock
from videokv.memory.catalog import Catalog
from videokv.memory.faiss_index import FaissIndex


class Index:
    """Rows in the order blocks were stored (which is stream order: the engine stores units in order).

    backend "torch" scores every block with one matrix product per layer; "faiss" also keeps a FAISS index
    (memory/faiss_index.py) that top-k retrieval searches instead.
    """

    def __init__(self, backend: str = "torch") -> None:
        if backend not in ("torch", "faiss"):
            raise ConfigError(f"index must be 'torch' or 'faiss'; got {backend!r}")
        self.backend = backend
        self.faiss: FaissIndex | None = None
        self.rkeys: list[torch.Tensor] = []
        self.rotated_keys: list[torch.Tensor] = []  # per block [D]: its mean stored (rotated) last-layer key
        self.kinds: list[str] = []
        self.units: list[int] = []
        self.levels: list[str] = []
        self.t0: list[float] = []
        self.t1: list[float] = []
        self.pinned: list[bool] = []
        self.texts: list[str | None] = []  # a text block's text, None for the others
        self.present: list[list[bool]] = []  # per block, per layer: does it hold tokens there
        self._catalog: Catalog | None = None

    def add(self, block: KVBlock) -> None:
        if self.backend == "faiss":
            if self.faiss is None:
                self.faiss = FaissIndex(*block.rkey.shape)
            self.faiss.add(block.rkey)
        self.rkeys.append(block.rkey.float())
        kv, n, d = block.keys[-1].shape  # rotated at the block's positions; n = 0: absent at the last layer
        mean = block.keys[-1].float().mean(1).reshape(-1) if n else torch.zeros(kv * d)
        self.rotated_keys.append(mean.to(block.rkey.device))
        self.kinds.append(block.kind)
        self.units.append(block.unit)
        self.levels.append(block.level)
        self.t0.append(block.t0)
        self.t1.append(block.t1)
        self.pinned.append(block.pinned)
        self.texts.append(block.text if block.kind == "text" else None)
        self.present.append([int(k.shape[-2]) > 0 for k in block.keys])
        self._catalog = None

    def __len__(self) -> int:
        return len(self.rkeys)

    def truncate(self, n: int) -> None:
        for field in (
            self.rkeys,
            self.rotated_keys,
            self.kinds,
            self.units,
            self.levels,
            self.t0,
            self.t1,
            self.pinned,
            self.texts,
            self.present,
        ):
            del field[n:]
        if self.faiss is not None:
            self.faiss.truncate(n)
        self._catalog = None

    def catalog(self) -> Catalog:
        if self._catalog is None:
            self._catalog = Catalog(
                rkeys=torch.stack(self.rkeys, dim=1).permute(1, 0, 2),  # [N, L, D] view, layer-major storage
                kinds=list(self.kinds),
                units=torch.tensor(self.units, dtype=torch.long),
                levels=list(self.levels),
                t0=torch.tensor(self.t0, dtype=torch.float64),
                t1=torch.tensor(self.t1, dtype=torch.float64),
                pinned=torch.tensor(self.pinned, dtype=torch.bool),
                search=self.faiss.search if self.faiss is not None else None,
                texts=list(self.texts),
                present=None if all(all(p) for p in self.present) else torch.tensor(self.present),
                rotated_keys=torch.stack(self.rotated_keys),
            )
        return self._catalog
