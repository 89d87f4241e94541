"""Find the adapter for a model, and load models by path, hub id, or the built-in names."""

from __future__ import annotations

import difflib
import os
import socket
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from videokv.errors import ConfigError, ModelNotAvailable
from videokv.models.base import Adapter
from videokv.models.internvl import InternVLAdapter
from videokv.models.llava_onevision import LlavaOneVisionAdapter
from videokv.models.qwen2_vl import Qwen2VLAdapter
from videokv.models.qwen3_vl import Qwen3VLAdapter
from videokv.models.tiny import TINY_FAMILIES

# model_type -> (adapter, the transformers class a checkpoint folder of that type is loaded with). Adding a
# family is one adapter file and one line here (docs/ADAPTERS.md).
FAMILIES: dict[str, tuple[type[Adapter], str]] = {
    "qwen2_vl": (Qwen2VLAdapter, "Qwen2VLForConditionalGeneration"),
    "qwen2_5_vl": (Qwen2VLAdapter, "Qwen2_5_VLForConditionalGeneration"),
    "qwen3_vl": (Qwen3VLAdapter, "Qwen3VLForConditionalGeneration"),
    "qwen3_vl_moe": (Qwen3VLAdapter, "Qwen3VLMoeForConditionalGeneration"),
    "llava_onevision": (LlavaOneVisionAdapter, "LlavaOnevisionForConditionalGeneration"),
    "internvl": (InternVLAdapter, "InternVLForConditionalGeneration"),
}
ADAPTERS: dict[str, type[Adapter]] = {k: v[0] for k, v in FAMILIES.items()}
ADAPTERS_DOC = "docs/ADAPTERS.md"


def unsupported(model_type: object, where: str = "") -> ConfigError:
    """The error for a model_type videokv has no adapter for: the supported list and where to read more."""
    return ConfigError(
        f"{where}model_type {model_type!r} is not supported; supported: {', '.join(sorted(FAMILIES))}. "
        f"`videokv models` lists what is verified for each; {ADAPTERS_DOC} says how a family is added"
    )


def supported_models() -> list[dict]:
    """One row per supported model_type: its adapter family, transformers class and what is verified."""
    return [
        {
            "model_type": k,
            "family": a.family,
            "class": c,
            "positions": "M-RoPE" if a.rope_rows == 3 else "1-D",
            "verified": a.verified,
        }
        for k, (a, c) in FAMILIES.items()
    ]


OFFLINE_NAME = "offline"
TINY_PREFIX = "tiny-"

#: The built-in model names: the offline real-weights model and the tiny random models (one per family).
TINY_MODELS = tuple(TINY_PREFIX + f for f in TINY_FAMILIES)
BUILTIN_MODELS = (OFFLINE_NAME, *TINY_MODELS)
_VALID_MODELS = (
    "a checkpoint folder (config.json, weights, tokenizer, processor), a hub id already in the local cache "
    f"or with the hub reachable, {OFFLINE_NAME!r}, or a tiny random model: {', '.join(TINY_MODELS)}"
)
_HUB_TIMEOUT_S = 3.0


def check_model_name(name_or_path: str) -> None:
    """Fail fast, before any weights are read, on a model name `VideoQA.from_pretrained` cannot load: an
    unknown built-in name (ConfigError, naming the valid ones and the closest), a folder that does not exist
    or has no config.json, or a hub id that is neither in the local cache nor reachable (ModelNotAvailable:
    HF_HUB_OFFLINE is set, or the hub does not answer within a few seconds; no network retries)."""
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ConfigError(f"the model name is empty; give {_VALID_MODELS}")
    name = name_or_path
    if name == OFFLINE_NAME:
        return
    if name.startswith(TINY_PREFIX) and not os.path.exists(name):
        if name[len(TINY_PREFIX) :].replace("-", "_") in TINY_FAMILIES:
            return
        raise ConfigError(
            f"unknown model {name!r}{_did_you_mean(name)}; the tiny models are {', '.join(TINY_MODELS)}"
        )
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotAvailable(
                f"{name!r} is a folder without config.json: give the folder a checkpoint was saved to "
                "(model.save_pretrained + processor.save_pretrained)"
            )
        return
    if not _is_hub_id(name):
        raise ModelNotAvailable(f"no checkpoint folder {name!r}{_did_you_mean(name)}; give {_VALID_MODELS}")
    _check_hub(name)


def _did_you_mean(name: str) -> str:
    close = difflib.get_close_matches(name, BUILTIN_MODELS, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _is_hub_id(name: str) -> bool:
    """`name` is shaped like a hub id (`org/name` or `name`), not a path."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if name.count("/") > 1 or name.startswith((".", "~")) or os.sep in name.replace("/", ""):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _check_hub(repo: str) -> None:
    """A hub id loads if its config is in the local cache, or the hub answers; otherwise fail at once."""
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo, "config.json"), str):
        return
    where = f"{repo!r} is not a local folder and not in the Hugging Face cache"
    local = (
        f"{_did_you_mean(repo)}; download it where the hub is reachable (hf download {repo} --local-dir DIR) "
        f"and pass --model DIR, or use {OFFLINE_NAME!r} or a tiny model ({', '.join(TINY_MODELS)})"
    )
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise ModelNotAvailable(f"{where}, and HF_HUB_OFFLINE is set{local}")
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return  # the hub is reached through a proxy: the loader's own error says what went wrong
    from urllib.parse import urlsplit

    endpoint = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=_HUB_TIMEOUT_S).close()
    except OSError:
        raise ModelNotAvailable(f"{where}, and the hub ({host}:{port}) cannot be reached{local}") from None


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
        raise unsupported(model_type)
    if hasattr(tokenizer, "tokenizer") and hasattr(tokenizer, "video_processor"):  # a transformers processor
        processor = tokenizer
        tokenizer = processor.tokenizer
        if getattr(processor, "chat_template", None) and not getattr(tokenizer, "chat_template", None):
            tokenizer.chat_template = processor.chat_template
        if video_processor is None:
            video_processor = processor.video_processor
    preprocessor = resolve_preprocessor(cls.preprocessor_class, tokenizer, video_processor)
    return cls(model, tokenizer, preprocessor, frame_tokens=frame_tokens)


def resolve_preprocessor(kind: type, tokenizer: PreTrainedTokenizerBase, video_processor: object = None):
    """The video preprocessing settings of a checkpoint, as a `kind` (an adapter's preprocessor class; see
    `adapter_for`)."""
    from videokv.models.preprocess import load_video_preprocessor

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
        return load_video_preprocessor(source, kind)
    if hasattr(source, "to_dict") and not isinstance(source, dict):
        source = source.to_dict()
    if isinstance(source, dict):
        return kind.from_dict(source)
    return source  # already a videokv preprocessor


def load_model(
    name_or_path: str, dtype: torch.dtype | None = None, device: str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a model and tokenizer.

    name_or_path: "offline" (the real-weights offline model, see videokv.models.offline), "tiny-<family>"
    (a tiny random model, for smoke runs), a local checkpoint folder, or a hub id (where a hub is reachable).
    A name that cannot load fails at once (`check_model_name`), before any weights are read.
    """
    check_model_name(name_or_path)
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
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ModelNotAvailable(
            f"cannot load a model from {path!r}: {e}\nGive a local checkpoint folder (config.json, weights, "
            f"tokenizer), a hub id where the hub is reachable, 'offline', or 'tiny-qwen2_vl'."
        ) from e
    if config.model_type not in FAMILIES:
        raise unsupported(config.model_type, f"{path}: ")
    cls = getattr(transformers, FAMILIES[config.model_type][1])
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
