"""What each layer of a hybrid model (Qwen3.5: Gated DeltaNet layers beside attention layers) keeps after a
prefix of n tokens: the attention layers' K/V grows with n, a linear-attention layer's state does not.

A tiny random `Qwen3_5ForConditionalGeneration` (4 text layers: three linear, one full attention,
transformers' default interval), no download. docs/ADAPTERS.md quotes its output.

    .venv/bin/python tools/hybrid_cache_sizes.py
"""

from __future__ import annotations

import torch
from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration


def layer_bytes(layer) -> int:
    """Bytes of the tensors a cache layer holds (K/V, or the conv and recurrent states)."""
    tensors = [v for v in vars(layer).values() if isinstance(v, torch.Tensor) and v.dim() > 0]
    for v in vars(layer).values():
        if isinstance(v, dict):
            tensors += [x for x in v.values() if isinstance(x, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors)


def main() -> None:
    torch.manual_seed(0)
    text = dict(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4,
        linear_key_head_dim=16, linear_value_head_dim=16, max_position_embeddings=4096,
    )  # fmt: skip
    vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64)
    model = Qwen3_5ForConditionalGeneration(Qwen3_5Config(text_config=text, vision_config=vision)).eval()
    types = model.config.text_config.layer_types
    print("| prefix tokens | " + " | ".join(f"layer {i} ({t})" for i, t in enumerate(types)) + " |")
    print("|---" * (len(types) + 1) + "|")
    for n in (64, 512, 2048):
        with torch.no_grad():
            out = model(input_ids=torch.randint(0, 500, (1, n)), use_cache=True)
        cache = getattr(out, "cache", None) or out.past_key_values
        print(f"| {n} | " + " | ".join(f"{layer_bytes(la)} B" for la in cache.layers) + " |")


if __name__ == "__main__":
    main()
