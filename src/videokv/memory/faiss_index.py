"""An optional FAISS index over the blocks' retrieval keys, for very large memories.

One exact inner-product index (`IndexFlatIP`) per layer, fed incrementally as blocks are stored. A top-k
search returns the same rows as the torch matrix product (up to ties) without materialising the [L, N]
score matrix in Python; FAISS's multithreaded BLAS kernels make it faster at 1e5-1e6 blocks. Requires the
`faiss-cpu` package (`pip install 'videokv[faiss]'`).
"""

from __future__ import annotations

import numpy as np
import torch

from videokv.errors import ConfigError


def _faiss():
    try:
        import faiss
    except ImportError as e:
        raise ConfigError("index='faiss' needs the faiss-cpu package: pip install 'videokv[faiss]'") from e
    return faiss


class FaissIndex:
    """Per-layer exact inner-product indexes over retrieval keys [L, D]."""

    def __init__(self, layers: int, dim: int):
        faiss = _faiss()
        self.layers, self.dim = layers, dim
        self.indexes = [faiss.IndexFlatIP(dim) for _ in range(layers)]
        self.rows: list[np.ndarray] = []

    def add(self, rkey: torch.Tensor) -> None:
        """Add one block's retrieval keys [L, D]."""
        vec = rkey.detach().float().cpu().numpy()
        self.rows.append(vec)
        for layer, index in enumerate(self.indexes):
            index.add(vec[layer : layer + 1])

    def __len__(self) -> int:
        return len(self.rows)

    def truncate(self, n: int) -> None:
        """Keep the first `n` blocks (rollback); rebuilds the indexes from the kept keys."""
        if n >= len(self.rows):
            return
        kept = self.rows[:n]
        self.__init__(self.layers, self.dim)
        for vec in kept:
            self.add(torch.from_numpy(vec))

    def search(self, q: torch.Tensor, k: int) -> list[list[int]]:
        """Per layer, the rows of the `k` highest q[l] . rkey[l], best first."""
        k = min(k, len(self.rows))
        if k <= 0:
            return [[] for _ in range(self.layers)]
        qs = q.detach().float().cpu().numpy()
        return [
            index.search(qs[layer : layer + 1], k)[1][0].tolist() for layer, index in enumerate(self.indexes)
        ]
