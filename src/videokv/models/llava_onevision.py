"""Adapter for LLaVA-OneVision (1-D RoPE).

Frames are preprocessed as transformers' `LlavaOnevisionVideoProcessor` does, with the resize, rescale and
normalisation of the checkpoint's own processor config (`videokv.models.preprocess`; the llava-hf
checkpoints normalise with SigLIP's 0.5/0.5), encoded by the vision tower, projected and 2x2 pooled, as
`LlavaOnevisionModel.get_video_features` does. As there, a video's frames are followed by one
`image_newline` token: the engine appends it when the video closes (timed text arrives, or, transiently,
a question is asked). All of a video's tokens carry the `<video>` id, as the processor expands them.
Positions are consecutive integers.

The checkpoint's chat template writes every video of a turn before its text, so timed text interleaved with
frames has no official layout here; videokv's is [frames, newline, text, frames, newline, text, ...].
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from videokv.models.base import Adapter, Piece, square_hw
from videokv.models.preprocess import LlavaVideoPreprocessor


class LlavaOneVisionAdapter(Adapter):
    """LLaVA-OneVision. Tokens per frame are fixed by the vision tower: ceil(side/2)^2."""

    family = "llava_onevision"
    rope_rows = 1
    placeholder = "<video>"
    preprocessor_class = LlavaVideoPreprocessor
    verified = (
        "official layout, 1-D positions: ids and first-token logits vs the official processor and HF forward"
    )

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        preprocessor: LlavaVideoPreprocessor,
        frame_tokens: int | None = None,  # fixed by the vision tower here; accepted for a uniform signature
    ):
        super().__init__(model, tokenizer)
        size = int(model.config.vision_config.image_size)
        preprocessor.check_tower(size, size)
        self.preprocessor = preprocessor
        self.video_token_id = int(model.config.video_token_index)

    def video_pieces(
        self,
        frames: np.ndarray,
        timestamps: np.ndarray,
        interval: float,
        video: dict | None,
        cursor: int,
    ) -> tuple[list[Piece], dict, int]:
        cfg = self.model.config
        pixels = self.preprocessor(frames)[None]  # one video: [1, T, 3, S, S]
        feats = self.model.model.get_video_features(
            pixel_values_videos=pixels.to(self.device, self.model.dtype),
            vision_feature_layer=cfg.vision_feature_layer,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy,
        ).pooler_output[0, :-1]  # the trailing image_newline is added when the video closes
        n = feats.shape[0] // len(frames)
        hw = square_hw(n)  # the frame's square token grid, raster order
        pieces = []
        for i in range(len(frames)):
            t0 = float(timestamps[i])
            piece = Piece(
                feats[i * n : (i + 1) * n].to(self.dtype),
                self.text_positions(cursor, n),
                "frame",
                t0,
                t0 + interval,
                [self.video_token_id] * n,
                n_frames=1,
                hw=hw,
            )
            pieces.append(piece)
            cursor += n
        video = {"frames": (video or {}).get("frames", 0) + len(frames)}
        return pieces, video, cursor

    def close_video(self, video: dict, cursor: int) -> Piece:
        newline = self.model.model.image_newline[None].to(self.dtype)
        return Piece(newline, self.text_positions(cursor, 1), "prompt", token_ids=[self.video_token_id])

    def reference_inputs(self, input_ids: list[int]) -> dict:
        return {"input_ids": torch.tensor([input_ids], device=self.device)}
