"""Adapter for InternVL (transformers `internvl`: the InternVL3 / InternVL3.5 `-hf` checkpoints; 1-D RoPE).

The stream is laid out as `InternVLProcessor` and the checkpoint's chat template lay out a user turn:

- Frames are preprocessed as `InternVLVideoProcessor` does with the checkpoint's settings (resize to the
  vision tower's square, 448x448, bicubic; rescale; normalise with the mean/std the checkpoint's processor
  config names: the `-hf` converters save ImageNet's, the class default is CLIP's), encoded by the vision
  tower and pixel-shuffled (downsample ratio 0.5: (448/14)^2 / 4 = 256 tokens a frame), then projected, as
  `InternVLModel.get_image_features` does.
- The template writes a video part as `<video>\\n`; the processor expands `<video>` to one line per frame,
  `Frame{k}: <img><IMG_CONTEXT>...</img>`, joined by newlines, k counting from 1 within the video. Here frame
  k's piece is `[</img>\\n for k > 1] Frame{k}: <img>` then its visual tokens, so a piece's visual tokens
  are its last tokens; the video's last `</img>\\n` is written when timed text or the question follows
  (`close_video`). Timed text between videos thus sits where the template puts a text part.
- Positions are consecutive integers (1-D RoPE of the Qwen2 / Qwen3 text model).
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from videokv.errors import ConfigError
from videokv.models.base import Adapter, Piece, square_hw
from videokv.models.preprocess import LlavaVideoPreprocessor

START, END = "<img>", "</img>"


class InternVLAdapter(Adapter):
    """InternVL. Tokens per frame are fixed by the vision tower: (image_size / patch)^2 * ratio^2."""

    family = "internvl"
    rope_rows = 1
    placeholder = "<video>\n"
    preprocessor_class = LlavaVideoPreprocessor
    verified = "official layout (FrameN lines), 1-D positions: ids and first-token logits vs the official "
    verified += "processor and HF forward (fixtures)"

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        preprocessor: LlavaVideoPreprocessor,
        frame_tokens: int | None = None,  # fixed by the vision tower here; accepted for a uniform signature
    ):
        super().__init__(model, tokenizer)
        preprocessor.check_tower(*(int(v) for v in model.config.vision_config.image_size))
        self.preprocessor = preprocessor
        self.video_token_id = int(model.config.image_token_id)  # frames carry the image context token
        ids = [tokenizer.convert_tokens_to_ids(t) for t in (START, END)]
        if any(not isinstance(i, int) or i == tokenizer.unk_token_id for i in ids):
            raise ConfigError(f"the tokenizer has no {START} / {END} tokens: it is not an InternVL tokenizer")

    def video_pieces(
        self,
        frames: np.ndarray,
        timestamps: np.ndarray,
        interval: float,
        video: dict | None,
        cursor: int,
    ) -> tuple[list[Piece], dict, int]:
        cfg = self.model.config
        pixels = self.preprocessor(frames)  # [T, 3, S, S]
        feats = self.model.model.get_image_features(
            pixel_values=pixels.to(self.device, self.model.dtype),
            vision_feature_layer=cfg.vision_feature_layer,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy,
        ).pooler_output  # [T, n, hidden]
        n = feats.shape[1]
        hw = square_hw(n)  # the frame's square token grid, raster order
        done = (video or {}).get("frames", 0)
        pieces = []
        for i in range(len(frames)):
            k = done + i + 1
            lead = self.tokenize(f"{END}\nFrame{k}: {START}" if k > 1 else f"Frame{k}: {START}")
            text = self.ids_piece(lead, cursor)
            t0 = float(timestamps[i])
            visual = Piece(
                feats[i].to(self.dtype),
                self.text_positions(cursor + len(lead), n),
                "frame",
                t0,
                t0 + interval,
                [self.video_token_id] * n,
                n_frames=1,
                hw=hw,
            )
            pieces.append(visual.prepend(text))
            cursor += len(lead) + n
        return pieces, {"frames": done + len(frames)}, cursor

    def close_video(self, video: dict, cursor: int) -> Piece:
        return self.ids_piece(self.tokenize(f"{END}\n"), cursor, kind="prompt")

    def reference_inputs(self, input_ids: list[int]) -> dict:
        return {"input_ids": torch.tensor([input_ids], device=self.device)}
