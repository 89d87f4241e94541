"""Settings of the real checkpoints videokv targets, and tiny random models configured like them.

No model hub is reachable where videokv is built and tested, so the settings that decide what the official
processor and chat template feed a model are recorded here, each with where it was read:

- Qwen/Qwen2-VL-7B-Instruct, Qwen/Qwen2.5-VL-7B-Instruct, llava-hf/llava-onevision-qwen2-7b-ov-hf: chat
  templates (exact Jinja), video processor settings, and the model-config values that change the token layout.

`tiny_checkpoint(family)` builds a tiny random model of the real transformers class with those settings (real
processor size, real chat template, real special-token strings, Qwen2.5-VL tokens_per_second, LLaVA vision
image_size 384 / patch 14) and a tiny byte-level BPE tokenizer with the Qwen2 tokenizer's pre-tokenizer, so a
test can run the real processing path end to end in milliseconds. Token ids are small (vocabulary 512), not
the
real ones; the strings are the real ones.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from videokv.errors import ConfigError
from videokv.models.tiny import _CORPUS, VOCAB_SIZE, build_tiny_model, wrap_tokenizer

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "llava_onevision", "internvl")

CHECKPOINT_IDS = {
    "qwen2_vl": "Qwen/Qwen2-VL-7B-Instruct",
    "qwen2_5_vl": "Qwen/Qwen2.5-VL-7B-Instruct",
    "qwen3_vl": "Qwen/Qwen3-VL-8B-Instruct",
    "qwen3_vl_moe": "Qwen/Qwen3-VL-30B-A3B-Instruct",
    "llava_onevision": "llava-hf/llava-onevision-qwen2-7b-ov-hf",
    "internvl": "OpenGVLab/InternVL3_5-8B-HF",
}

# ------------------------------------------------------------------------------------------------------------
# Chat templates
#
# Qwen2-VL-7B-Instruct chat_template.json (1.05 kB, "Initial commit", listed at
# https://huggingface.co/Qwen/Qwen2-VL-7B-Instruct/tree/a7a06a1cc11b4514ce9edcde0e3ca1d16e5ff2fc); the text
# is the
# "qwen2-vl-instruct" entry of a template table in a public repository (found by find_string on
# "{% set video_count = namespace(value=0) %}", the same string in many copies). Qwen2.5-VL-7B-Instruct
# ships the
# same 1.05 kB chat_template.json (e.g.
# https://huggingface.co/mlx-community/Qwen2.5-VL-7B-Instruct-bf16/tree/main
# lists a 1.05 kB copy). A system message "You are a helpful assistant." is inserted when the first message
# is not
# a system message; videos and text are rendered in content order.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value "
    "}}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: "
    "{% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endf"
    "or %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN2_5_VL_CHAT_TEMPLATE = QWEN2_VL_CHAT_TEMPLATE

# LLaVA-OneVision: `chat_template` of transformers' converter that produced the llava-hf checkpoints,
# huggingface/transformers src/transformers/models/llava_onevision/convert_llava_onevision_weights_to_hf.py,
# identical to the uploaded
# https://huggingface.co/llava-hf/llava-onevision-qwen2-7b-si-hf/blob/974bbb6c4e42c98d04bad1798434ed685d0cad4f/chat_template.json
# (824 bytes, "Upload processor"). The 7b-ov-hf file itself was not in the searchable corpora; it was
# written by
# the same converter. The template renders ALL images of a message first, then ALL videos, then all texts,
# whatever their order in the content list, and adds no default system message.
LLAVA_ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'ima"
    "ge') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{# Render all video then #}{% for content in message['content'] | selectattr('type', 'equalto', 'video"
    "') %}"
    "{{ '<video>\n' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] }}{% endgeneration %}{% endfor %}{% endif %}{{'<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Qwen3-VL-8B-Instruct / Qwen3-VL-30B-A3B-Instruct chat_template.json: the text is quoted whole as
# `chat_template_qwen3vl` in a public GUI-agent repository's constants (found by find_string on
# "{{ video_count.value }}: {% endif -%}"). No default system message; videos and text in content order; the
# processor collapses the video part's `<|vision_start|><|video_pad|><|vision_end|>` and writes one
# timestamped vision block per temporal patch instead.
QWEN3_VL_CHAT_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}
        {%- if messages[0].content is string %}
            {{- messages[0].content }}
        {%- else %}
            {%- for content in messages[0].content %}
                {%- if 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '\\n\\n' }}
    {%- endif %}
    {{- "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n\
You are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments \
within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": \
<args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\\n' }}
        {%- if messages[0].content is string %}
            {{- messages[0].content }}
        {%- else %}
            {%- for content in messages[0].content %}
                {%- if 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- set image_count = namespace(value=0) %}
{%- set video_count = namespace(value=0) %}
{%- for message in messages %}
    {%- if message.role == "user" %}
        {{- '<|im_start|>' + message.role + '\\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content in message.content %}
                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}
                    {%- set image_count.value = image_count.value + 1 %}
                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}
                    <|vision_start|><|image_pad|><|vision_end|>
                {%- elif content.type == 'video' or 'video' in content %}
                    {%- set video_count.value = video_count.value + 1 %}
                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}
                    <|vision_start|><|video_pad|><|vision_end|>
                {%- elif 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role + '\\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content_item in message.content %}
                {%- if 'text' in content_item %}
                    {{- content_item.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and message.content) or (not loop.first) %}
                    {{- '\\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content in message.content %}
                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}
                    {%- set image_count.value = image_count.value + 1 %}
                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}
                    <|vision_start|><|image_pad|><|vision_end|>
                {%- elif content.type == 'video' or 'video' in content %}
                    {%- set video_count.value = video_count.value + 1 %}
                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}
                    <|vision_start|><|video_pad|><|vision_end|>
                {%- elif 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# InternVL3 / InternVL3.5 -hf: `chat_template` of transformers' converter that wrote them,
# src/transformers/models/internvl/convert_internvl_weights_to_hf.py: content in order, a video part as
# `<video>\n`, an image as `<IMG_CONTEXT>\n`, no default system message.
INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{'<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)

CHAT_TEMPLATES = {
    "qwen2_vl": QWEN2_VL_CHAT_TEMPLATE,
    "qwen2_5_vl": QWEN2_5_VL_CHAT_TEMPLATE,
    "qwen3_vl": QWEN3_VL_CHAT_TEMPLATE,
    "qwen3_vl_moe": QWEN3_VL_CHAT_TEMPLATE,
    "llava_onevision": LLAVA_ONEVISION_CHAT_TEMPLATE,
    "internvl": INTERNVL_CHAT_TEMPLATE,
}

# ------------------------------------------------------------------------------------------------------------
# Processor settings
#
# Qwen2-VL-7B-Instruct has no video_preprocessor_config.json: transformers' AutoVideoProcessor falls back
# to its
# preprocessor_config.json (347 bytes), so its videos use min_pixels 3136 / max_pixels 12845056 (not the video
# class defaults 100352 / 602112). Text from
# https://huggingface.co/morthens/qwen2-vl-7b-infer/blob/main/preprocessor_config.json
# ("Duplicate from Qwen/Qwen2-VL-7B-Instruct") and
# https://huggingface.co/Alibaba-NLP/gme-Qwen2-VL-7B-Instruct/blob/main/preprocessor_config.json.
_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
QWEN2_VL_PREPROCESSOR_CONFIG = {
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": _CLIP_MEAN,
    "image_std": _CLIP_STD,
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2VLProcessor",
}
# Qwen2.5-VL-7B-Instruct preprocessor_config.json (350 bytes): same values, processor_class
# Qwen2_5_VLProcessor;
# e.g. https://huggingface.co/coder3101/Qwen2.5-VL-72B-Instruct-heretic/blob/main/preprocessor_config.json and
# https://huggingface.co/ig1/Qwen2.5-VL-32B-Instruct-FP8-Dynamic/blob/main/preprocessor_config.json (the
# family's
# files are identical; "image_processor_type" was "Qwen2_5_VLImageProcessor" in the first uploads, fixed
# later).
QWEN2_5_VL_PREPROCESSOR_CONFIG = dict(QWEN2_VL_PREPROCESSOR_CONFIG, processor_class="Qwen2_5_VLProcessor")

# LLaVA-OneVision: the converter builds LlavaOnevisionVideoProcessor / ImageProcessor from
# google/siglip-so400m-patch14-384 (size 384x384, mean = std = 0.5, bicubic, 1/255); the uploaded image
# processor
# file has these values plus anyres settings (quoted in a public re-conversion script "verbatim from the
# official
# HF conversion": do_convert_rgb, do_normalize, do_pad, do_rescale, do_resize true, image_mean/std 0.5,
# resample 3,
# rescale_factor 0.00392156862745098, size {height 384, width 384}).
LLAVA_ONEVISION_GRID_PINPOINTS = [[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)]
LLAVA_ONEVISION_PREPROCESSOR_CONFIG = {
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_pad": True,
    "do_rescale": True,
    "do_resize": True,
    "image_grid_pinpoints": LLAVA_ONEVISION_GRID_PINPOINTS,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "image_processor_type": "LlavaOnevisionImageProcessor",
    "processor_class": "LlavaOnevisionProcessor",
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"height": 384, "width": 384},
}
LLAVA_ONEVISION_VIDEO_PROCESSOR_CONFIG = {
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"height": 384, "width": 384},
}
# processor-level settings of LlavaOnevisionProcessor in the converter: num_image_tokens=729,
# vision_feature_select_strategy="full" (vision_aspect_ratio keeps its default "anyres_max_9")
LLAVA_ONEVISION_PROCESSOR_KWARGS = {"num_image_tokens": 729, "vision_feature_select_strategy": "full"}

# Qwen3-VL-8B-Instruct / 30B-A3B video_preprocessor_config.json: the whole-video budget size {longest_edge
# 25165824, shortest_edge 4096}, patch 16, ImageNet-standard mean / std 0.5, fps 2, frames 4..768 (values
# quoted by public conversion code, e.g. a GGUF-to-processor converter's `_qwen_video_processor_config`, and a
# vLLM serving script naming "video_preprocessor_config.json size.longest_edge" 25165824).
# preprocessor_config.json
# (images): size {longest_edge 16777216, shortest_edge 65536}, patch 16, mean / std 0.5.
QWEN3_VL_VIDEO_PROCESSOR_CONFIG = {
    "size": {"longest_edge": 25165824, "shortest_edge": 4096},
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "do_sample_frames": True,
    "fps": 2,
    "min_frames": 4,
    "max_frames": 768,
    "processor_class": "Qwen3VLProcessor",
}
QWEN3_VL_IMAGE_PROCESSOR_CONFIG = {
    "size": {"longest_edge": 16777216, "shortest_edge": 65536},
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen3VLProcessor",
}
# InternVL3.5-8B-HF: the converter saves the image processor (448x448, rescale 1/255, ImageNet mean
# [0.485, 0.456, 0.406] / std [0.229, 0.224, 0.225]) and builds `InternVLVideoProcessor.from_pretrained` from
# that folder, so the video processor has the same size and normalisation (its class default is CLIP's, which
# a converted checkpoint never uses); resample bicubic (3). image_seq_length 256 = (448 / 14)^2 * 0.5^2.
_IMAGENET_MEAN = [0.485, 0.456, 0.406]
_IMAGENET_STD = [0.229, 0.224, 0.225]
INTERNVL_VIDEO_PROCESSOR_CONFIG = {
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": _IMAGENET_MEAN,
    "image_std": _IMAGENET_STD,
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"height": 448, "width": 448},
}
INTERNVL_IMAGE_PROCESSOR_CONFIG = dict(
    INTERNVL_VIDEO_PROCESSOR_CONFIG,
    image_processor_type="GotOcr2ImageProcessor",
    processor_class="InternVLProcessor",
)
INTERNVL_PROCESSOR_KWARGS = {"image_seq_length": 256}

# the video processor settings each checkpoint's AutoVideoProcessor ends up with
VIDEO_PROCESSOR_CONFIGS = {
    "qwen3_vl": QWEN3_VL_VIDEO_PROCESSOR_CONFIG,
    "qwen3_vl_moe": QWEN3_VL_VIDEO_PROCESSOR_CONFIG,
    "internvl": INTERNVL_VIDEO_PROCESSOR_CONFIG,
    "qwen2_vl": {k: v for k, v in QWEN2_VL_PREPROCESSOR_CONFIG.items() if k not in ("image_processor_type",)},
    "qwen2_5_vl": {
        k: v for k, v in QWEN2_5_VL_PREPROCESSOR_CONFIG.items() if k not in ("image_processor_type",)
    },
    "llava_onevision": LLAVA_ONEVISION_VIDEO_PROCESSOR_CONFIG,
}
IMAGE_PROCESSOR_CONFIGS = {
    "qwen3_vl": QWEN3_VL_IMAGE_PROCESSOR_CONFIG,
    "qwen3_vl_moe": QWEN3_VL_IMAGE_PROCESSOR_CONFIG,
    "internvl": INTERNVL_IMAGE_PROCESSOR_CONFIG,
    "qwen2_vl": QWEN2_VL_PREPROCESSOR_CONFIG,
    "qwen2_5_vl": QWEN2_5_VL_PREPROCESSOR_CONFIG,
    "llava_onevision": LLAVA_ONEVISION_PREPROCESSOR_CONFIG,
}

# ------------------------------------------------------------------------------------------------------------
# Model-config values that change the layout of the token stream
#
# Qwen2.5-VL-7B-Instruct config.json: vision_config.tokens_per_second = 2 (temporal M-RoPE positions
# advance by
# second_per_grid_t * tokens_per_second per temporal patch), window_size 112, spatial_merge_size 2,
# temporal_patch_size 2, patch_size 14
# (https://huggingface.co/Qwen/Qwen2.5-VL-7B-Instruct/blob/main/config.json;
# the same values are transformers' Qwen2_5_VLVisionConfig defaults).
QWEN2_5_VL_TOKENS_PER_SECOND = 2
QWEN2_5_VL_WINDOW_SIZE = 112
# LLaVA-OneVision-7b-ov-hf config.json: vision_feature_select_strategy "full", vision_feature_layer -1 (the
# converter passes neither, so LlavaOnevisionConfig's defaults apply), SigLIP vision image_size 384, patch 14
# (27 x 27 = 729 patches per frame, pooled 2x2 with ceil to 14 x 14 = 196 tokens per video frame, plus ONE
# image_newline token after the whole video), use_image_newline_parameter True.
LLAVA_ONEVISION_LAYOUT = {
    "vision_feature_select_strategy": "full",
    "vision_feature_layer": -1,
    "image_size": 384,
    "patch_size": 14,
}

# ------------------------------------------------------------------------------------------------------------
# Special tokens (strings of the real tokenizers, in their id order)
# Qwen2-VL tokenizer_config.json added_tokens_decoder 151643..151656 (e.g.
# https://huggingface.qichangzheng.net/Qwen/Qwen2-VL-2B-Instruct-AWQ/blame/main/tokenizer_config.json)
_QWEN2_VL_SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Qwen2.5-VL adds the Qwen2.5 tool / FIM tokens (151657..151664, not special)
_QWEN2_5_VL_EXTRA = [
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
]
# LLaVA-OneVision: the Qwen2 tokenizer's three specials plus <image> and <video> (the converter's add_tokens)
_LLAVA_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]

# Qwen3-VL adds the Qwen3 tool-response and thinking tokens (151665..151668, not special)
_QWEN3_VL_EXTRA = _QWEN2_5_VL_EXTRA + ["<tool_response>", "</tool_response>", "<think>", "</think>"]
# InternVL -hf: the Qwen2.5-VL tokenizer plus <img>, </img>, <IMG_CONTEXT>, <quad>, </quad>, <ref>, </ref>,
# <box>, </box> as additional special tokens (the converter's write_tokenizer); <img>, </img>, <IMG_CONTEXT>
# are added by `wrap_tokenizer(internvl=True)` with the names InternVLProcessor reads
_INTERNVL_EXTRA_SPECIAL = ["<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]

SPECIAL_TOKENS = {
    "qwen3_vl": (_QWEN2_VL_SPECIAL, _QWEN3_VL_EXTRA),
    "qwen3_vl_moe": (_QWEN2_VL_SPECIAL, _QWEN3_VL_EXTRA),
    "internvl": (_QWEN2_VL_SPECIAL + _INTERNVL_EXTRA_SPECIAL, _QWEN2_5_VL_EXTRA),
    "qwen2_vl": (_QWEN2_VL_SPECIAL, []),
    "qwen2_5_vl": (_QWEN2_VL_SPECIAL, _QWEN2_5_VL_EXTRA),
    "llava_onevision": (_LLAVA_SPECIAL, []),
}

# the Qwen2 tokenizer's pre-tokenizer (tokenizer.json of every Qwen2 / Qwen2-VL / Qwen2.5-VL / LLaVA-OV-qwen2
# checkpoint): NFC, then this Split regex (Isolated), then ByteLevel without prefix space or regex
QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)


PROCESSOR_KWARGS = {
    "llava_onevision": LLAVA_ONEVISION_PROCESSOR_KWARGS,
    "internvl": INTERNVL_PROCESSOR_KWARGS,
}


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ConfigError(f"unknown checkpoint family {family!r}; choose one of {', '.join(FAMILIES)}")


def qwen2_style_tokenizer(family: str) -> PreTrainedTokenizerFast:
    """A tiny byte-level BPE (vocabulary <= 512) with the Qwen2 pre-tokenizer, the family's special-token
    strings and its real chat template."""
    _check_family(family)
    special, extra = SPECIAL_TOKENS[family]
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(extra) - 3 * (family == "internvl"),
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    if extra:
        tok.add_tokens(extra)
    fast = wrap_tokenizer(tok, special[1:], internvl=family == "internvl")
    fast.chat_template = CHAT_TEMPLATES[family]
    return fast


def _build_model(family: str, tokenizer: PreTrainedTokenizerFast) -> PreTrainedModel:
    """The tiny model with the layout-relevant settings of the real checkpoint."""
    if family in ("qwen2_vl", "qwen3_vl", "qwen3_vl_moe"):
        return build_tiny_model(family, tokenizer)
    if family == "internvl":  # the real 448x448 tower input (1024 patches, 256 tokens a frame)
        return build_tiny_model(family, tokenizer, {"image_size": 448})
    if family == "qwen2_5_vl":
        vision = {"window_size": QWEN2_5_VL_WINDOW_SIZE, "tokens_per_second": QWEN2_5_VL_TOKENS_PER_SECOND}
        return build_tiny_model(family, tokenizer, vision)
    vision = {
        "image_size": LLAVA_ONEVISION_LAYOUT["image_size"],
        "patch_size": LLAVA_ONEVISION_LAYOUT["patch_size"],
        "vision_use_head": False,
    }
    return build_tiny_model(
        family,
        tokenizer,
        vision,
        vision_feature_select_strategy=LLAVA_ONEVISION_LAYOUT["vision_feature_select_strategy"],
        vision_feature_layer=LLAVA_ONEVISION_LAYOUT["vision_feature_layer"],
        image_grid_pinpoints=LLAVA_ONEVISION_GRID_PINPOINTS,
        use_image_newline_parameter=True,
    )


def tiny_checkpoint(family: str, seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerFast, dict]:
    """(model, tokenizer, video processor settings) of a tiny random model configured like `family`'s real
    checkpoint. The model is fp32, in eval mode, seeded by `seed`."""
    _check_family(family)
    tokenizer = qwen2_style_tokenizer(family)
    torch.manual_seed(seed)
    model = _build_model(family, tokenizer)
    model.eval()
    return model, tokenizer, copy.deepcopy(VIDEO_PROCESSOR_CONFIGS[family])


def save_tiny_checkpoint(family: str, folder: str | Path, seed: int = 0) -> Path:
    """Write a loadable tiny checkpoint: config.json, model.safetensors, tokenizer files, chat_template.jinja
    and the processor settings in the layout transformers 5 writes (processor_config.json with a
    'video_processor' entry), without torchvision. tools/parity_fixtures.py saves the same with the official
    processor."""
    import json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model, tokenizer, video = tiny_checkpoint(family, seed)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "chat_template.jinja").write_text(CHAT_TEMPLATES[family])
    processor = {
        "image_processor": dict(IMAGE_PROCESSOR_CONFIGS[family]),
        "video_processor": dict(video),
        "processor_class": IMAGE_PROCESSOR_CONFIGS[family]["processor_class"],
    }
    processor.update(PROCESSOR_KWARGS.get(family, {}))
    (folder / "processor_config.json").write_text(json.dumps(processor, indent=2) + "\n")
    return folder
