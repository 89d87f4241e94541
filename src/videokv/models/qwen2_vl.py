"""Adapter for Qwen2-VL and Qwen2.5-VL (M-RoPE: 3-D position ids computed here, chunk by chunk).

Each sampled frame is one visual unit: the frame is preprocessed as transformers' Qwen2-VL image processor
does it (smart resize to multiples of 28, CLIP normalisation, patchify with the frame repeated over the
temporal patch), wrapped as `<|vision_start|> <|video_pad|>*n <|vision_end|>`, and placed with the rule of
`Qwen2VLModel.get_rope_index`: text advances by one; a frame starting at `s` gets t = s, h = s + row,
w = s + col on the merged grid; the token after it is at s + max(rows, cols).
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from videokv.models.base import Adapter, Piece


class Qwen2VLAdapter(Adapter):
    """Qwen2-VL / Qwen2.5-VL. `frame_tokens` caps the visual tokens per frame (after the 2x2 merge)."""

    family = "qwen2_vl"
    rope_rows = 3

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, frame_tokens: int = 64):
        super().__init__(model, tokenizer)
        vcfg = model.config.vision_config
        self.patch_size = int(vcfg.patch_size)
        self.merge = int(vcfg.spatial_merge_size)
        self.temporal_patch = int(vcfg.temporal_patch_size)
        factor = self.patch_size * self.merge
        self.frame_tokens = int(frame_tokens)
        self.processor = Qwen2VLImageProcessorPil(
            size={"shortest_edge": factor * factor, "longest_edge": self.frame_tokens * factor * factor},
            patch_size=self.patch_size,
            merge_size=self.merge,
            temporal_patch_size=self.temporal_patch,
        )
        cfg = model.config
        self.video_token_id = int(cfg.video_token_id)
        self.vision_start_id = int(cfg.vision_start_token_id)
        self.vision_end_id = int(cfg.vision_end_token_id)
        self.is_qwen2_5 = "2_5" in type(model).__name__

    def preprocess(self, frames: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 frames [T, H, W, 3] -> (pixel patches [T*gh*gw, C*tp*p*p], grid_thw [T, 3])."""
        out = self.processor(images=list(frames), return_tensors="pt")
        return out["pixel_values"], out["image_grid_thw"]

    def frame_pieces(
        self, frames: np.ndarray, timestamps: np.ndarray, cursor: int, frame_interval: float = 1.0
    ) -> list[Piece]:
        pixels, grids = self.preprocess(frames)
        feats = self.model.model.get_video_features(
            pixel_values_videos=pixels.to(self.device), video_grid_thw=grids.to(self.device)
        ).pooler_output
        start_emb = self.embed_ids([self.vision_start_id])
        end_emb = self.embed_ids([self.vision_end_id])
        pieces = []
        for i, (f, grid) in enumerate(zip(feats, grids.tolist())):
            t, h, w = grid[0], grid[1] // self.merge, grid[2] // self.merge
            n = f.shape[0]
            rows = torch.arange(h, device=self.device).repeat_interleave(w)
            cols = torch.arange(w, device=self.device).repeat(h)
            s = cursor + 1
            vis = torch.stack([torch.full_like(rows, s), s + rows, s + cols])
            pos = torch.cat(
                [self.text_positions(cursor, 1), vis, self.text_positions(s + max(h, w), 1)], dim=1
            )
            emb = torch.cat([start_emb, f.to(start_emb.dtype), end_emb], dim=0)
            ids = [self.vision_start_id] + [self.video_token_id] * n + [self.vision_end_id]
            t0 = float(timestamps[i])
            piece = Piece(emb, pos, "frame", t0, t0 + frame_interval, ids, grid=(t, grid[1], grid[2]))
            pieces.append(piece)
            cursor = self.next_cursor(piece)
        return pieces

    def reference_inputs(self, pieces: list[Piece], frames: list[np.ndarray]) -> dict:
        ids = [i for p in pieces for i in p.token_ids]
        input_ids = torch.tensor([ids], device=self.device)
        kw: dict = {"input_ids": input_ids, "mm_token_type_ids": (input_ids == self.video_token_id).int() * 2}
        if frames:
            pixels, grids = self.preprocess(np.stack(frames))
            kw["pixel_values_videos"] = pixels.to(self.device)
            kw["video_grid_thw"] = grids.to(self.device)
            if self.is_qwen2_5:
                kw["second_per_grid_ts"] = torch.ones(len(frames), device=self.device)
        return kw
