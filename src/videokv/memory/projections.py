"""Forward hooks that record each attention layer's pre-RoPE query / key projections during a forward.

The retrieval query (memory/query.py), the layer-wise retrieval forward (memory/layerwise.py) and the
guidance statistics of the ingest forward (engine.py) all read the q_proj / k_proj outputs of every layer:
a public PyTorch extension point, no forward is replaced.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from videokv.models.base import Adapter

# (projection "q" or "k", layer) -> that projection's outputs during the block, one [n, heads * d] per call
Projections = dict[tuple[str, int], list[torch.Tensor]]


@contextlib.contextmanager
def record_projections(adapter: Adapter, which: tuple[str, ...] = ("q", "k")) -> Iterator[Projections]:
    """Within the block, record every layer's `which` projections (batch row 0, detached) as they run."""
    store: Projections = {}
    handles = []
    for i, layer in enumerate(adapter.language_model.layers):
        for what in which:

            def hook(module, args, output, key=(what, i)):
                store.setdefault(key, []).append(output.detach()[0])

            handles.append(getattr(layer.self_attn, f"{what}_proj").register_forward_hook(hook))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()
