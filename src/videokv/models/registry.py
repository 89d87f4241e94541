"""Find the adapter for a model, and load models by path, hub id, or the built-in names."""

from __future__ import annotations

import os
from pathlib import Path

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


def adapter_for(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    video_processor: object = None,
    frame_tokens: int | None = None,
) -> Adapter:
    """The adapter of `model`'s family (by its config's model_type).

    tokenizer: the checkpoint's tokenizer, or its transformers processor (its tokenizer, chat template and
    video processor are used). video_processor: the video-processor settings (a config dict, a checkpoint
    folder, or a transformers video processor); by default they come from the processor, from settings the
    tokenizer carries (videokv's own tiny and offline models), or from the folder the tokenizer was loaded
    from. frame_tokens: Qwen2-VL family only, a cap on visual tokens per temporal patch.
    """
    model_type = getattr(model.config, "model_type", None)
    cls = ADAPTERS.get(model_type)
    if cls is None:
        raise ConfigError(
            f"videokv has no adapter for model_type {model_type!r}; supported: {', '.join(sorted(ADAPTERS))}"
        )
    if hasattr(tokenizer, "tokenizer") and hasattr(tokenizer, "video_processor"):  # a transformers processor
        processor = tokenizer
        tokenizer = processor.tokenizer
        if getattr(processor, "chat_template", None) and not getattr(tokenizer, "chat_template", None):
            tokenizer.chat_template = processor.chat_template
        if video_processor is None:
            video_processor = processor.video_processor
    preprocessor = resolve_preprocessor(cls.family, tokenizer, video_processor)
    if cls is LlavaOneVisionAdapter:
        return cls(model, tokenizer, preprocessor)
    return cls(model, tokenizer, preprocessor, frame_tokens=frame_tokens)


def resolve_preprocessor(family: str, tokenizer: PreTrainedTokenizerBase, video_processor: object = None):
    """The video preprocessing settings of a checkpoint (see `adapter_for`)."""
    from videokv.models.preprocess import (
        LlavaVideoPreprocessor,
        QwenVideoPreprocessor,
        load_video_preprocessor,
    )

    source = video_processor
    if source is None:
        source = getattr(tokenizer, "videokv_video_processor", None)
    if source is None:
        folder = getattr(tokenizer, "name_or_path", "") or ""
        if folder and os.path.isdir(folder):
            source = folder
    if source is None:
        raise ConfigError(
            "videokv needs the checkpoint's video-processor settings (resize, normalisation, patching) and "
            "found none: load with VideoQA.from_pretrained(folder), pass the transformers processor instead "
            "of the tokenizer, or pass video_processor=<checkpoint folder or config dict>"
        )
    if isinstance(source, str | Path):
        return load_video_preprocessor(source, family)
    if hasattr(source, "to_dict") and not isinstance(source, dict):
        source = source.to_dict()
    if isinstance(source, dict):
        cls = LlavaVideoPreprocessor if family == "llava_onevision" else QwenVideoPreprocessor
        return cls.from_dict(source)
    return source  # already a videokv preprocessor


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
    tokenizer = AutoTokenizer.from_pretrained(path)
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = _chat_template_file(path)
    return model, tokenizer


def _chat_template_file(path: str) -> str | None:
    """The chat template a processor saved beside the checkpoint (chat_template.jinja / .json)."""
    import json

    folder = Path(path)
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text()
    if (folder / "chat_template.json").is_file():
        return json.loads((folder / "chat_template.json").read_text()).get("chat_template")
    return None
