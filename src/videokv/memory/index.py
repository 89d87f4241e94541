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


def _grow(buf: torch.Tensor | None, need: int, dim: int, like: torch.Tensor) -> torch.Tensor:
    """`buf` with room for `need` rows along `dim` (capacity doubled, the rows kept); a new buffer shaped
    like `like` when there is none."""
    if buf is not None and buf.shape[dim] >= need:
        return buf
    cap = max(16, need, 2 * (buf.shape[dim] if buf is not None else 0))
    shape = list(like.shape)
    shape.insert(dim, cap)
    out = torch.zeros(shape, dtype=like.dtype, device=like.device)
    if buf is not None:
        out.narrow(dim, 0, buf.shape[dim]).copy_(buf)
    return out


class Index:
    """Rows in the order blocks were stored (which is stream order: the engine stores units in order).

    backend "torch" scores every block with one matrix product per layer; "faiss" also keeps a FAISS index
    (memory/faiss_index.py) that top-k retrieval searches instead.

    The per-block tensors live in buffers that grow by doubling, so that adding a block costs O(1) amortised
    and the catalog of N blocks is a set of views (plus copies of the three lists of names): a question
    after a new block does not pay a rebuild that grows with N.
    """

    def __init__(self, backend: str = "torch") -> None:
        if backend not in ("torch", "faiss"):
            raise ConfigError(f"index must be 'torch' or 'faiss'; got {backend!r}")
        self.backend = backend
        self.faiss: FaissIndex | None = None
        self.n = 0
        self._rkeys: torch.Tensor | None = None  # [L, cap, D] float32: layer-major retrieval keys
        self._rotated: torch.Tensor | None = (
            None  # [cap, D]: per block its mean stored (rotated) last-layer key
        )
        self._units: torch.Tensor | None = None  # [cap] long
        self._t0: torch.Tensor | None = None  # [cap] float64
        self._t1: torch.Tensor | None = None
        self._pinned: torch.Tensor | None = None  # [cap] bool
        self._present: torch.Tensor | None = None  # [cap, L] bool: does the block hold tokens at the layer
        self._partial = 0  # blocks absent from some layer (the catalog's `present` is None while 0)
        self.kinds: list[str] = []
        self.levels: list[str] = []
        self.texts: list[str | None] = []  # a text block's text, None for the others
        self._catalog: Catalog | None = None

    def add(self, block: KVBlock) -> None:
        if self.backend == "faiss":
            if self.faiss is None:
                self.faiss = FaissIndex(*block.rkey.shape)
            self.faiss.add(block.rkey)
        rkey = block.rkey.float()  # [L, D]
        if "fetch" not in block.meta:
            kv, n, d = block.keys[-1].shape  # rotated at its positions; n = 0: absent at the last layer
            rotated = block.keys[-1].float().mean(1).reshape(-1) if n else torch.zeros(kv * d)
            present = torch.tensor([int(k.shape[-2]) > 0 for k in block.keys], dtype=torch.bool)
        else:  # a block restored without its K/V (fetched when retrieved): its index entry says these
            rotated = block.meta["rotated"].float()
            present = torch.tensor(block.meta["present"], dtype=torch.bool)
        i, need = self.n, self.n + 1
        one = torch.zeros((), dtype=torch.long)
        self._rkeys = _grow(self._rkeys, need, 1, rkey)  # [L, cap, D]
        self._rotated = _grow(self._rotated, need, 0, rotated.to(rkey.device))
        self._units = _grow(self._units, need, 0, one)
        self._t0 = _grow(self._t0, need, 0, one.double())
        self._t1 = _grow(self._t1, need, 0, one.double())
        self._pinned = _grow(self._pinned, need, 0, one.bool())
        self._present = _grow(self._present, need, 0, present)
        self._rkeys[:, i] = rkey
        self._rotated[i] = rotated.to(rkey.device)
        self._units[i] = block.unit
        self._t0[i] = block.t0
        self._t1[i] = block.t1
        self._pinned[i] = block.pinned
        self._present[i] = present
        self._partial += int(not bool(present.all()))
        self.kinds.append(block.kind)
        self.levels.append(block.level)
        self.texts.append(block.text if block.kind == "text" else None)
        self.n = need
        self._catalog = None

    def __len__(self) -> int:
        return self.n

    def rotated_key(self, i: int) -> torch.Tensor:
        """Block `i`'s mean key at the last layer, rotated (as `add` computed it)."""
        return self._rotated[i].clone()

    def present_layers(self, i: int) -> list[bool]:
        """Whether block `i` holds tokens at each layer."""
        return [bool(x) for x in self._present[i]]

    def truncate(self, n: int) -> None:
        n = max(0, min(n, self.n))
        if self._present is not None:
            self._partial -= int((~self._present[n : self.n].all(dim=1)).sum())
        self.n = n
        for field in (self.kinds, self.levels, self.texts):
            del field[n:]
        if self.faiss is not None:
            self.faiss.truncate(n)
        self._catalog = None

    def catalog(self) -> Catalog:
        if self._catalog is None:
            n = self.n
            if self._rkeys is None:
                raise ConfigError("the index is empty: there is no catalog to retrieve from")
            self._catalog = Catalog(
                rkeys=self._rkeys[:, :n].permute(1, 0, 2),  # [N, L, D] view of layer-major storage
                kinds=list(self.kinds),
                units=self._units[:n],
                levels=list(self.levels),
                t0=self._t0[:n],
                t1=self._t1[:n],
                pinned=self._pinned[:n],
                search=self.faiss.search if self.faiss is not None else None,
                texts=list(self.texts),
                present=self._present[:n] if self._partial else None,
                rotated_keys=self._rotated[:n],
            )
        return self._catalog
