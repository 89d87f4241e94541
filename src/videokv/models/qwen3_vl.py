"""Adapter for Qwen3-VL (dense and MoE): timestamped temporal patches, interleaved M-RoPE, DeepStack.

The stream is laid out as `Qwen3VLProcessor` and the checkpoint's chat template lay out a user turn:

- Frames are preprocessed as `Qwen3VLVideoProcessor` does (`videokv.models.preprocess.Qwen3VideoPreprocessor`:
  patch 16, temporal patches of 2 frames, ImageNet-standard normalisation by default) and each temporal patch
  becomes its own vision block with its time as text before it: `<t seconds><|vision_start|><|video_pad|>
  ...<|vision_end|>`, with t the mean of the patch's first and last frame times (an odd last frame is
  repeated, so its patch's t is its own time), written with one decimal as the processor writes it. Stream
  times are the frames' own times: the official processor gives the same text for a video whose
  `video_metadata.frames_indices` are the frames' indices in the stream.
- A patch's `<|vision_end|>` is written when the next patch, timed text or the question follows (it leads
  that piece; `close_video` gives it), so a piece's visual tokens are its last rows x cols tokens.
- Positions follow `Qwen3VLModel.get_rope_index`: each patch is an image-like grid of one temporal step, so a
  patch whose first visual token is at s has t = s, h = s + row, w = s + col, and the text after it starts at
  s + max(rows, cols). The model's rotary module interleaves the (t, h, w) frequencies itself
  (`mrope_section`), so videokv's re-rotation (`videokv.models.rope`, which asks that module for its angles)
  follows the interleaving with no rule of its own.
- DeepStack: the vision tower returns, beside each visual token's embedding, one feature per DeepStack
  layer, which the text model adds to that token's hidden state after its first decoder layers. A piece
  carries them in trailing channels of its `embeds` ([embedding | DeepStack 1..D | visual flag]), so they
  travel with their tokens through every chunking, segment and summary; `decoder_inputs` unpacks them into
  the text model's public `visual_pos_masks` and `deepstack_visual_embeds` arguments.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from videokv.errors import ConfigError, InputError
from videokv.models.base import Piece
from videokv.models.preprocess import QwenVideoPreprocessor
from videokv.models.qwen2_vl import Qwen2VLAdapter

# transformers.image_utils.IMAGENET_STANDARD_MEAN / _STD (Qwen3VLVideoProcessor's class defaults)
STANDARD_MEAN = (0.5, 0.5, 0.5)
STANDARD_STD = (0.5, 0.5, 0.5)


def smart_resize_video(
    num_frames: int,
    height: int,
    width: int,
    temporal_factor: int,
    factor: int,
    min_pixels: int,
    max_pixels: int,
) -> tuple[int, int]:
    """transformers' Qwen3-VL video `smart_resize`: like Qwen2-VL's, but the pixel budget is over the video's
    temporal extent (frames rounded to the temporal patch) times the frame size, and frames smaller than
    `factor` are first scaled up."""
    if min(height, width) <= 0:
        raise InputError(f"frame size must be positive, got {height}x{width}")
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    if max(height, width) / min(height, width) > 200:
        raise InputError(
            f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    t_bar = round(num_frames / temporal_factor) * temporal_factor
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt((num_frames * height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (num_frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@dataclass(frozen=True)
class Qwen3VideoPreprocessor(QwenVideoPreprocessor):
    """transformers' `Qwen3VLVideoProcessor` (patch 16, ImageNet-standard 0.5 normalisation by default).

    Its pixel budget `size["longest_edge"]` is for the whole video (frames x height x width), so the official
    frame size of a long video depends on how many frames the video has, which a stream does not know while
    it arrives. videokv sizes every temporal patch as the processor sizes a video of one temporal patch:
    the official size for any video whose frames fit the budget (with Qwen3-VL-8B's 25,165,824 pixels, up to
    153 frames of 256x640), and `--frame-tokens` caps it below. Top-level min_pixels / max_pixels are image
    processor settings, ignored by the video processor (as here)."""

    patch_size: int = 16
    min_pixels: int = 128 * 32 * 32  # size["shortest_edge"], for the whole video
    max_pixels: int = 32 * 32 * 768  # size["longest_edge"], for the whole video
    image_mean: tuple[float, float, float] = STANDARD_MEAN
    image_std: tuple[float, float, float] = STANDARD_STD

    @classmethod
    def from_dict(cls, d: dict) -> Qwen3VideoPreprocessor:
        d = {k: v for k, v in d.items() if k not in ("min_pixels", "max_pixels")}
        d.setdefault("size", {"shortest_edge": cls.min_pixels, "longest_edge": cls.max_pixels})
        for key in ("image_mean", "image_std"):
            d.setdefault(key, getattr(cls, key))
        d.setdefault("patch_size", cls.patch_size)
        return super().from_dict(d)

    def with_max_tokens(self, tokens: int) -> Qwen3VideoPreprocessor:
        if tokens <= 0:
            raise ConfigError(f"frame tokens must be positive, got {tokens}")
        return dataclasses.replace(self, max_pixels=int(tokens) * self.factor**2 * self.temporal_patch_size)

    @property
    def patch_pixels(self) -> int:
        """The pixel budget of one temporal patch (the budget counts every frame of it)."""
        return self.max_pixels // self.temporal_patch_size

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        if not self.do_resize:
            return height, width
        tp = self.temporal_patch_size
        return smart_resize_video(tp, height, width, tp, self.factor, self.min_pixels, self.max_pixels)


def timestamp_text(times: np.ndarray) -> str:
    """The processor's text before a temporal patch whose real frames are at `times` (seconds)."""
    return f"<{(float(times[0]) + float(times[-1])) / 2:.1f} seconds>"


class Qwen3VLAdapter(Qwen2VLAdapter):
    """Qwen3-VL / Qwen3-VL-MoE. `frame_tokens` (optional) caps the visual tokens per temporal patch."""

    family = "qwen3_vl"
    preprocessor_class = Qwen3VideoPreprocessor
    verified = (
        "official layout (timestamps, per-patch vision blocks), interleaved M-RoPE positions and DeepStack: "
        "ids, positions, first-token logits vs the official processor and HF forward (fixtures)"
    )

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        preprocessor: Qwen3VideoPreprocessor,
        frame_tokens: int | None = None,
    ):
        super().__init__(model, tokenizer, preprocessor, frame_tokens)
        self.hidden = int(self.text_config.hidden_size)
        self.deepstack = len(getattr(model.config.vision_config, "deepstack_visual_indexes", ()) or ())

    def _probe_text_rule(self, model: PreTrainedModel) -> str:
        return "grid"  # every patch is an image-like block: the text after it starts at s + max(rows, cols)

    @property
    def frame_tokens(self) -> int:
        return self.preprocessor.patch_pixels // (self.preprocessor.patch_size * self.merge) ** 2

    # ---- embeddings: [embedding | DeepStack features | visual flag] ---------------------------------------
    def _pack(self, embeds: torch.Tensor, deepstack: list[torch.Tensor] | None) -> torch.Tensor:
        n = embeds.shape[0]
        if deepstack is None:
            extra = embeds.new_zeros(n, self.hidden * self.deepstack + 1)
        else:
            extra = torch.cat([*(d.to(embeds.dtype) for d in deepstack), embeds.new_ones(n, 1)], dim=-1)
        return torch.cat([embeds, extra], dim=-1)

    def embed_ids(self, ids: list[int]) -> torch.Tensor:
        return self._pack(super().embed_ids(ids), None)

    def decoder_inputs(self, embeds: torch.Tensor) -> dict:
        x = embeds.to(self.dtype)
        main, visual = x[:, : self.hidden], x[:, -1] > 0.5
        inputs = {"inputs_embeds": main.unsqueeze(0)}
        if self.deepstack and bool(visual.any()):
            features = x[visual, self.hidden : -1]
            inputs["visual_pos_masks"] = visual.unsqueeze(0)
            inputs["deepstack_visual_embeds"] = list(features.split(self.hidden, dim=-1))
        return inputs

    # ---- video --------------------------------------------------------------------------------------------
    def video_pieces(
        self,
        frames: np.ndarray,
        timestamps: np.ndarray,
        interval: float,
        video: dict | None,
        cursor: int,
    ) -> tuple[list[Piece], dict, int]:
        out, (gt, gh, gw), (h, w) = self._encode(frames)
        feats = out.pooler_output[0]
        stacks = [d[0] for d in out.deepstack_features]
        video = dict(video or {"patches": 0, "h": h, "w": w})
        if (video["h"], video["w"]) != (h, w):
            raise ValueError("a video's frames must keep one size; close the video first")
        rows, cols = self._raster(h, w)
        n, pieces = h * w, []
        for i in range(gt):
            a, b = i * self.frames_per_piece, (i + 1) * self.frames_per_piece
            real = timestamps[a:b]
            lead = [self.vision_end_id] if video["patches"] + i else []  # the previous patch's end
            text_ids = lead + self.tokenize(timestamp_text(real)) + [self.vision_start_id]
            text = self.ids_piece(text_ids, cursor)
            s = cursor + len(text_ids)
            pos = torch.stack([torch.full_like(rows, s), s + rows, s + cols])
            span = slice(i * n, (i + 1) * n)
            visual = Piece(
                self._pack(feats[span].to(self.dtype), [d[span] for d in stacks]),
                pos,
                "frame",
                float(real[0]),
                float(real[-1]) + interval,
                [self.video_token_id] * n,
                grid=(1, gh, gw),
                n_frames=len(real),
                hw=(h, w),
            )
            pieces.append(visual.prepend(text))
            cursor = s + max(h, w)
        video["patches"] += gt
        return pieces, video, cursor
