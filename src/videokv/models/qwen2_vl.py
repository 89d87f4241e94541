"""Adapter for Qwen2-VL and Qwen2.5-VL (M-RoPE: 3-D position ids computed here, chunk by chunk).

The stream is laid out as the official processor and chat template lay out one video, so a checkpoint sees
what it was trained on:

- Frames are preprocessed as transformers' `Qwen2VLVideoProcessor` does (its settings read from the
  checkpoint: `videokv.models.preprocess`) and grouped in temporal patches of `temporal_patch_size` (2)
  consecutive frames, as the processor groups a video's frames: a second of video at 2 fps is one patch.
- A video opens with `<|vision_start|>`, holds `<|video_pad|>` tokens patch after patch, and closes with
  `<|vision_end|>` when timed text arrives (the engine reopens a new video at the next frame) or, only
  transiently, when a question is asked. A stream [frames, text, frames, question] is exactly what the
  official processor gives for one user turn whose content is [video, text, video, text].
- Positions follow the model's own rule (`get_rope_index`): text advances by one; a video whose first
  visual token is at `s` puts temporal patch j at t = s + floor(j * interval), row r at h = s + r, column c
  at w = s + c on the merged grid, with interval = 1 (Qwen2-VL) or tokens_per_second * temporal_patch_size /
  fps (Qwen2.5-VL, from the checkpoint's vision config and the stream's frame rate). Where the text after
  a video starts is read off the installed transformers' `get_rope_index` once (it changed across
  releases: 1 + the largest position used, or s + the grid's larger side).
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from videokv.errors import ConfigError
from videokv.models.base import Adapter, Piece
from videokv.models.preprocess import QwenVideoPreprocessor


class Qwen2VLAdapter(Adapter):
    """Qwen2-VL / Qwen2.5-VL. `frame_tokens` (optional) caps the visual tokens per temporal patch (after the
    2x2 merge) below the checkpoint's own `max_pixels`."""

    family = "qwen2_vl"
    rope_rows = 3
    placeholder = "<|vision_start|><|video_pad|><|vision_end|>"
    preprocessor_class = QwenVideoPreprocessor
    verified = (
        "official layout, M-RoPE positions (Qwen2.5-VL: tokens_per_second time steps): ids, positions, "
        "first-token logits vs the official processor and HF forward (fixtures)"
    )

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        preprocessor: QwenVideoPreprocessor,
        frame_tokens: int | None = None,
    ):
        super().__init__(model, tokenizer)
        vcfg = model.config.vision_config
        if frame_tokens is not None:
            preprocessor = preprocessor.with_max_tokens(int(frame_tokens))
        self.merge = int(vcfg.spatial_merge_size)
        for name, want in (
            ("patch_size", int(vcfg.patch_size)),
            ("temporal_patch_size", int(vcfg.temporal_patch_size)),
            ("merge_size", self.merge),
        ):
            if getattr(preprocessor, name) != want:
                raise ConfigError(
                    f"the video processor's {name} is {getattr(preprocessor, name)} but the model's vision "
                    f"config says {want}: the processor config does not belong to this checkpoint"
                )
        self.preprocessor = preprocessor
        self.frames_per_piece = int(vcfg.temporal_patch_size)
        cfg = model.config
        self.video_token_id = int(cfg.video_token_id)
        self.vision_start_id = int(cfg.vision_start_token_id)
        self.vision_end_id = int(cfg.vision_end_token_id)
        self.tokens_per_second = getattr(vcfg, "tokens_per_second", None)  # Qwen2.5-VL only
        self.is_qwen2_5 = self.tokens_per_second is not None
        self.text_after_video = self._probe_text_rule(model)

    def _probe_text_rule(self, model: PreTrainedModel) -> str:
        """Where the installed transformers puts the text after a video ("grid" or "extent")."""
        return _text_after_video_rule(model, self)

    @property
    def frame_tokens(self) -> int:
        """The most visual tokens a temporal patch can have under the processor's max_pixels."""
        return self.preprocessor.max_pixels // (self.preprocessor.patch_size * self.merge) ** 2

    def time_interval(self, interval: float) -> torch.Tensor | float:
        """Temporal position step per patch: 1 (Qwen2-VL) or tokens_per_second * second_per_grid_t
        (Qwen2.5-VL), computed in float32 as the processor's tensor and `get_rope_index` compute it."""
        if not self.is_qwen2_5:
            return 1
        second_per_grid = torch.tensor(self.frames_per_piece / (1.0 / interval), dtype=torch.float32)
        return self.tokens_per_second * second_per_grid

    def _encode(self, frames: np.ndarray) -> tuple[object, tuple[int, int, int], tuple[int, int]]:
        """One vision-tower call on whole temporal patches: (the tower's output, the patch grid (gt, gh, gw),
        the merged token grid (rows, cols) of each temporal patch)."""
        pixels, (gt, gh, gw) = self.preprocessor(frames)
        grid = torch.tensor([[gt, gh, gw]], device=self.device)
        out = self.model.model.get_video_features(
            pixel_values_videos=pixels.to(self.device), video_grid_thw=grid
        )
        return out, (gt, gh, gw), (gh // self.merge, gw // self.merge)

    def _raster(self, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Row and column of each of a patch's h x w merged tokens, in raster order."""
        rows = torch.arange(h, device=self.device).repeat_interleave(w)
        return rows, torch.arange(w, device=self.device).repeat(h)

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
        opening = video is None
        if opening:
            video = {"start": cursor + 1, "patches": 0, "h": h, "w": w, "interval": interval}
        elif (video["h"], video["w"]) != (h, w):
            raise ValueError("a video's frames must keep one size; close the video first")
        s, j0 = video["start"], video["patches"]
        step = self.time_interval(video["interval"])
        rows, cols = self._raster(h, w)
        t_rows = (torch.arange(j0, j0 + gt) * step).long().tolist()
        pieces = []
        n = h * w
        for i in range(gt):
            pos = torch.stack([torch.full_like(rows, s + t_rows[i]), s + rows, s + cols])
            emb = feats[i * n : (i + 1) * n].to(self.dtype)
            ids = [self.video_token_id] * n
            a, b = i * self.frames_per_piece, (i + 1) * self.frames_per_piece
            real = timestamps[a:b]
            piece = Piece(
                emb,
                pos,
                "frame",
                float(real[0]),
                float(real[-1]) + interval,
                ids,
                grid=(1, gh, gw),
                hw=(h, w),
            )
            piece.n_frames = len(real)
            pieces.append(piece)
        if opening:
            pieces[0] = pieces[0].prepend(self.ids_piece([self.vision_start_id], cursor))
        video = dict(video, patches=j0 + gt, last_t=s + t_rows[-1])
        return pieces, video, self._after(video)

    def _after(self, video: dict) -> int:
        """The position of the token after the open video, by the installed transformers' rule."""
        s, h, w = video["start"], video["h"], video["w"]
        if self.text_after_video == "grid":
            return s + max(h, w)
        return max(video["last_t"], s + h - 1, s + w - 1) + 1

    def close_video(self, video: dict, cursor: int) -> Piece:
        return self.ids_piece([self.vision_end_id], cursor, kind="prompt")

    def reference_inputs(self, input_ids: list[int]) -> dict:
        """input_ids and mm_token_type_ids of an ordinary HF forward over `input_ids` (for tests)."""
        ids = torch.tensor([input_ids], device=self.device)
        return {"input_ids": ids, "mm_token_type_ids": (ids == self.video_token_id).int() * 2}


def _text_after_video_rule(model: PreTrainedModel, adapter: Qwen2VLAdapter) -> str:
    """Where `get_rope_index` of the installed transformers puts the text after a video: "grid" (the
    video's start + the larger merged grid side) or "extent" (1 + the largest position the video used).
    Probed on a 4-patch, 2x2 video, where the two rules differ."""
    m = adapter.merge
    grid = torch.tensor([[4, 2 * m, 2 * m]])
    ids = [0, adapter.vision_start_id] + [adapter.video_token_id] * 16 + [adapter.vision_end_id, 0]
    input_ids = torch.tensor([ids])
    kwargs = {
        "input_ids": input_ids,
        "video_grid_thw": grid,
        "mm_token_type_ids": (input_ids == adapter.video_token_id).int() * 2,
        "attention_mask": torch.ones_like(input_ids),
    }
    if adapter.is_qwen2_5:
        kwargs["second_per_grid_ts"] = torch.tensor([1.0 / adapter.tokens_per_second])
    fn = model.model.get_rope_index
    params = inspect.signature(fn).parameters
    positions, _ = fn(**{k: v for k, v in kwargs.items() if k in params})
    start = int(positions[0, 0, 2])
    after = int(positions[0, 0, 18])
    if after == start + 2:
        return "grid"
    if after == int(positions[0, 0, 2:18].max()) + 1:
        return "extent"
    raise ConfigError(
        f"{type(model).__name__}.get_rope_index places text after a video in a way videokv does not know "
        f"(start {start}, text at {after}); please report your transformers version"
    )
