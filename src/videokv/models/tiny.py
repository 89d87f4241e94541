"""Tiny random video-LLMs and a tokenizer built in code: for tests, smoke runs and timing without weights.

Every model here is a real transformers class (Qwen2-VL, Qwen2.5-VL, LLaVA-OneVision) built from a config
alone in milliseconds; the weights are random, seeded, so logits are reproducible. Nothing is downloaded.
The tokenizer carries the real checkpoint's chat template and, as `videokv_video_processor`, the real
checkpoint's video-processor settings scaled to the tiny vision tower (Qwen: at most 64 visual tokens per
temporal patch; LLaVA-OneVision: 56x56 frames). `videokv.models.checkpoints` has tiny models configured
exactly like the real checkpoints, for the parity tests.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    InternVLConfig,
    InternVLForConditionalGeneration,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMoeConfig,
    Qwen3VLMoeForConditionalGeneration,
)

from videokv.errors import ConfigError

TINY_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava_onevision", "internvl")
# InternVL's image tokens (the -hf converter's additional special tokens)
INTERNVL_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
}

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<image>",
    "<video>",
]

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a person rides a bike down the street while a car waits at the light",
    "what colour is the umbrella? the umbrella is red. answer with one word.",
    "system user assistant question answer video frame subtitle seconds minute",
    "0 1 2 3 4 5 6 7 8 9 10 20 30 40 50 60 100",
]

VOCAB_SIZE = 512


def tiny_tokenizer(internvl: bool = False) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (vocabulary 512) with the Qwen special tokens and a ChatML template
    (`internvl`: plus InternVL's `<img>`, `</img>`, `<IMG_CONTEXT>`, named as its processor reads them)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return wrap_tokenizer(tok, SPECIAL_TOKENS[1:], internvl)


def wrap_tokenizer(tok: Tokenizer, specials: list[str], internvl: bool = False) -> PreTrainedTokenizerFast:
    """`tok` as a transformers tokenizer with the Qwen eos / pad and a ChatML template; with `internvl`, also
    InternVL's image tokens (added as special tokens and named as `InternVLProcessor` reads them)."""
    extra = {}
    if internvl:
        tok.add_special_tokens(list(INTERNVL_TOKENS.values()))
        extra = {"extra_special_tokens": dict(INTERNVL_TOKENS, video_token="<video>")}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=specials,
        **extra,
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def _text_config(tokenizer: PreTrainedTokenizerFast, mrope: bool | list[int]) -> dict:
    cfg = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        tie_word_embeddings=False,
    )
    # head_dim 16 -> 8 rotary frequencies, split over (t, h, w) for M-RoPE
    rope = {"rope_type": "default", "rope_theta": 10000.0}
    if mrope:
        rope["mrope_section"] = [2, 3, 3] if mrope is True else list(mrope)
    cfg["rope_parameters"] = rope
    return cfg


TINY_QWEN_FRAME_TOKENS = 64
TINY_LLAVA_SIZE = 56


def tiny_video_processor(family: str) -> dict:
    """The video-processor settings of a tiny model: the real checkpoint's, scaled to the tiny tower."""
    from videokv.models.checkpoints import VIDEO_PROCESSOR_CONFIGS

    config = dict(VIDEO_PROCESSOR_CONFIGS[family])
    if family in ("llava_onevision", "internvl"):
        config["size"] = {"height": TINY_LLAVA_SIZE, "width": TINY_LLAVA_SIZE}
    elif family == "qwen3_vl":  # the budget counts both frames of a temporal patch
        config["size"] = dict(config["size"], longest_edge=TINY_QWEN_FRAME_TOKENS * 32 * 32 * 2)
    else:
        config["max_pixels"] = TINY_QWEN_FRAME_TOKENS * 28 * 28
    return config


def build_tiny_model(
    family: str, tokenizer: PreTrainedTokenizerFast, vision: dict | None = None, **config: object
) -> PreTrainedModel:
    """A tiny random model of `family` (the real transformers class) around `tokenizer`'s special tokens:
    text hidden 64, 2 layers, 4 heads / 2 KV heads; vision depth 2, width 32, patch 14. `vision` and
    `config` override vision-config and model-config fields (image size, window, tokens per second, ...).
    Seed torch before calling for reproducible weights."""
    ids = tokenizer.convert_tokens_to_ids
    vision = vision or {}
    if family in ("qwen2_vl", "qwen2_5_vl"):
        base = dict(
            depth=2,
            embed_dim=32,
            hidden_size=64,
            num_heads=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            in_channels=3,
        )
        common = dict(
            text_config=_text_config(tokenizer, mrope=True),
            image_token_id=ids("<|image_pad|>"),
            video_token_id=ids("<|video_pad|>"),
            vision_start_token_id=ids("<|vision_start|>"),
            vision_end_token_id=ids("<|vision_end|>"),
            **config,
        )
        if family == "qwen2_vl":
            return Qwen2VLForConditionalGeneration(
                Qwen2VLConfig(vision_config=dict(base, mlp_ratio=2), **common)
            )
        base.update(out_hidden_size=64, hidden_size=32, intermediate_size=64, fullatt_block_indexes=[1])
        return Qwen2_5_VLForConditionalGeneration(
            Qwen2_5_VLConfig(vision_config={**base, **vision}, **common)
        )
    if family == "llava_onevision":
        base = dict(
            model_type="siglip_vision_model",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            patch_size=14,
        )
        return LlavaOnevisionForConditionalGeneration(
            LlavaOnevisionConfig(
                text_config=dict(_text_config(tokenizer, mrope=False), model_type="qwen2"),
                vision_config={**base, **vision},
                image_token_index=ids("<image>"),
                video_token_index=ids("<video>"),
                **{"vision_feature_select_strategy": "full", "vision_feature_layer": -1, **config},
            )
        )
    if family in ("qwen3_vl", "qwen3_vl_moe"):
        return _tiny_qwen3_vl(family, tokenizer, vision, **config)
    if family == "internvl":
        return _tiny_internvl(tokenizer, vision, **config)
    raise ConfigError(f"unknown tiny model family {family!r}; choose one of {', '.join(TINY_FAMILIES)}")


# Qwen3-VL's text rotary: head_dim 16 -> 8 frequencies, interleaved (t, h, w) as the real [24, 20, 20] of 64
QWEN3_VL_MROPE_SECTION = [4, 2, 2]


def _tiny_qwen3_vl(family: str, tokenizer: PreTrainedTokenizerFast, vision: dict, **config: object):
    """Qwen3-VL (dense, or MoE with 4 experts, 2 per token): vision depth 2 with DeepStack after both vision
    layers, patch 16; text 2 layers with interleaved M-RoPE."""
    ids = tokenizer.convert_tokens_to_ids
    text = _text_config(tokenizer, mrope=QWEN3_VL_MROPE_SECTION)
    text["head_dim"] = 16
    text["rope_parameters"].update(rope_theta=5_000_000.0, mrope_interleaved=True)
    if family == "qwen3_vl_moe":
        text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1)
    base = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        patch_size=16,
        spatial_merge_size=2,
        temporal_patch_size=2,
        out_hidden_size=64,
        num_position_embeddings=2304,
        deepstack_visual_indexes=[0, 1],
    )
    cls, cfg = (
        (Qwen3VLMoeForConditionalGeneration, Qwen3VLMoeConfig)
        if family == "qwen3_vl_moe"
        else (Qwen3VLForConditionalGeneration, Qwen3VLConfig)
    )
    return cls(
        cfg(
            text_config=text,
            vision_config={**base, **vision},
            image_token_id=ids("<|image_pad|>"),
            video_token_id=ids("<|video_pad|>"),
            vision_start_token_id=ids("<|vision_start|>"),
            vision_end_token_id=ids("<|vision_end|>"),
            **config,
        )
    )


def _tiny_internvl(tokenizer: PreTrainedTokenizerFast, vision: dict, **config: object):
    """InternVL with a Qwen3 text model (as InternVL3.5): InternViT depth 2, width 32, patch 14; pixel shuffle
    0.5; the `<IMG_CONTEXT>` token as the image token."""
    text = dict(_text_config(tokenizer, mrope=False), model_type="qwen3", head_dim=16)
    base = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        patch_size=14,
        image_size=448,
        use_absolute_position_embeddings=True,
    )
    return InternVLForConditionalGeneration(
        InternVLConfig(
            text_config=text,
            vision_config={**base, **vision},
            image_token_id=tokenizer.convert_tokens_to_ids(INTERNVL_TOKENS["context_image_token"]),
            **config,
        )
    )


def tiny_model(family: str, seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Build a tiny random model of `family` (one of TINY_FAMILIES) and its tokenizer, in fp32, eval mode."""
    from videokv.models.checkpoints import CHAT_TEMPLATES

    if family not in TINY_FAMILIES:
        raise ConfigError(f"unknown tiny model family {family!r}; choose one of {', '.join(TINY_FAMILIES)}")
    tokenizer = tiny_tokenizer(internvl=family == "internvl")
    tokenizer.chat_template = CHAT_TEMPLATES[family]
    tokenizer.videokv_video_processor = tiny_video_processor(family)
    torch.manual_seed(seed)
    if family in ("llava_onevision", "internvl"):
        model = build_tiny_model(family, tokenizer, vision={"image_size": TINY_LLAVA_SIZE})
    elif family == "qwen3_vl":
        model = build_tiny_model(family, tokenizer)
    else:
        model = build_tiny_model(family, tokenizer, vision={"window_size": 56, "tokens_per_second": 2})
    model.eval()
    return model, tokenizer
