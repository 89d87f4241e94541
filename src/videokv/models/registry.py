"""Find the adapter for a model, and load models by path, hub id, or the built-in names."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from videokv.errors import ConfigError, ModelNotAvailable
from videokv.models.base import Adapter
from videokv.models.llava_onevision import LlavaOneVisionAdapter
from videokv.models.qwen2_vl import Qwen2VLAdapter

ADAPTERS: dict[str, type[Adapter]] = {
    "qwen2_vl": Qwen2VLAdapter,
    "qwen2_5_vl": Qwen2VLAdapter,
    "llava_onevision": LlavaOneVisionAdapter,
}

OFFLINE_NAME = "offline"
TINY_PREFIX = "tiny-"


def adapter_for(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, **options) -> Adapter:
    """The adapter of `model`'s family (by its config's model_type)."""
    model_type = getattr(model.config, "model_type", None)
    cls = ADAPTERS.get(model_type)
    if cls is None:
        raise ConfigError(
            f"videokv has no adapter for model_type {model_type!r}; supported: {', '.join(sorted(ADAPTERS))}"
        )
    if cls is LlavaOneVisionAdapter:
        options.pop("frame_tokens", None)
    return cls(model, tokenizer, **options)


def load_model(
    name_or_path: str, dtype: torch.dtype | None = None, device: str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a model and tokenizer.

    name_or_path: "offline" (the real-weights offline model, see videokv.models.offline), "tiny-<family>"
    (a tiny random model, for smoke runs), a local checkpoint folder, or a hub id (where a hub is reachable).
    """
    if name_or_path == OFFLINE_NAME:
        from videokv.models.offline import load_offline_model

        model, tokenizer = load_offline_model(dtype=dtype or torch.float32)
    elif name_or_path.startswith(TINY_PREFIX):
        from videokv.models.tiny import tiny_model

        model, tokenizer = tiny_model(name_or_path[len(TINY_PREFIX) :].replace("-", "_"))
    else:
        model, tokenizer = _load_checkpoint(name_or_path, dtype)
    if device is not None:
        model.to(device)
    return model.eval(), tokenizer


def _load_checkpoint(path: str, dtype: torch.dtype | None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    from transformers import AutoConfig, AutoTokenizer
    from transformers import LlavaOnevisionForConditionalGeneration as Llava
    from transformers import Qwen2_5_VLForConditionalGeneration as Qwen25
    from transformers import Qwen2VLForConditionalGeneration as Qwen2

    classes = {"qwen2_vl": Qwen2, "qwen2_5_vl": Qwen25, "llava_onevision": Llava}
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ModelNotAvailable(
            f"cannot load a model from {path!r}: {e}\nGive a local checkpoint folder (config.json, weights, "
            f"tokenizer), a hub id where the hub is reachable, 'offline', or 'tiny-qwen2_vl'."
        ) from e
    cls = classes.get(config.model_type)
    if cls is None:
        raise ConfigError(
            f"{path}: model_type {config.model_type!r} is not supported; supported: "
            f"{', '.join(sorted(classes))}"
        )
    model = cls.from_pretrained(path, dtype=dtype or "auto")
    return model, AutoTokenizer.from_pretrained(path)
