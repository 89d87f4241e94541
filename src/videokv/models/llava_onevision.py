"""Adapter for LLaVA-OneVision (1-D RoPE).

A frame is resized to the vision tower's square input (bicubic, CLIP normalisation, as transformers'
LLaVA-OneVision video processor does), encoded by SigLIP, projected, 2x2 bilinear-pooled, and followed by
the model's `image_newline` token, exactly as `LlavaOnevisionModel.get_video_features` does for a one-frame
video. Positions are consecutive integers.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from videokv.models.base import Adapter, Piece

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class LlavaOneVisionAdapter(Adapter):
    """LLaVA-OneVision. Tokens per frame are fixed by the vision tower: ceil(side/2)^2 + 1 newline."""

    family = "llava_onevision"
    rope_rows = 1

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        mean: tuple[float, ...] = CLIP_MEAN,
        std: tuple[float, ...] = CLIP_STD,
    ):
        super().__init__(model, tokenizer)
        self.image_size = int(model.config.vision_config.image_size)
        self.video_token_id = int(model.config.video_token_index)
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 frames [T, H, W, 3] -> normalised pixels [T, 1, 3, S, S] (T one-frame videos)."""
        size = (self.image_size, self.image_size)
        resized = np.stack(
            [np.asarray(Image.fromarray(f).resize(size, Image.Resampling.BICUBIC)) for f in frames]
        )
        x = torch.from_numpy(resized).permute(0, 3, 1, 2).float() / 255.0
        x = (x - self.mean) / self.std
        return x.unsqueeze(1)

    def _features(self, pixels: torch.Tensor) -> torch.Tensor:
        cfg = self.model.config
        return self.model.model.get_video_features(
            pixel_values_videos=pixels.to(self.device, self.model.dtype),
            vision_feature_layer=cfg.vision_feature_layer,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy,
        ).pooler_output

    def frame_pieces(
        self, frames: np.ndarray, timestamps: np.ndarray, cursor: int, frame_interval: float = 1.0
    ) -> list[Piece]:
        feats = self._features(self.preprocess(frames))
        pieces = []
        for i, f in enumerate(feats):
            n = f.shape[0]
            t0 = float(timestamps[i])
            piece = Piece(
                f.to(self.dtype),
                self.text_positions(cursor, n),
                "frame",
                t0,
                t0 + frame_interval,
                [self.video_token_id] * n,
            )
            pieces.append(piece)
            cursor += n
        return pieces

    def reference_inputs(self, pieces: list[Piece], frames: list[np.ndarray]) -> dict:
        ids = [i for p in pieces for i in p.token_ids]
        kw: dict = {"input_ids": torch.tensor([ids], device=self.device)}
        if frames:
            kw["pixel_values_videos"] = self.preprocess(np.stack(frames)).to(self.device)
        return kw
