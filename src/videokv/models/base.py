"""The adapter protocol: what the engine needs from a video-LLM family.

An adapter turns frames and text into input embeddings with explicit position ids, and runs the model's own
language model (transformers' decoder, unmodified) over them against a cache. Everything family-specific
(frame preprocessing, the vision tower call, special tokens around a frame, the position rule) lives in the
adapter; the engine sees only `Piece`s: embeddings, positions, and where they came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import Cache


@dataclass
class Piece:
    """A contiguous run of stream tokens, ready for the language model.

    embeds: [n, hidden]; positions: [P, n] (P = 3 for M-RoPE, 1 for 1-D RoPE); kind: "frame", "text" or
    "prompt"; t0/t1: the stream time span it covers (seconds); token_ids: the ids a full forward would use
    for the same tokens (placeholders for visual tokens), so tests can compare against one HF forward.
    """

    embeds: torch.Tensor
    positions: torch.Tensor
    kind: str
    t0: float = 0.0
    t1: float = 0.0
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    grid: tuple[int, int, int] | None = None

    @property
    def n_tokens(self) -> int:
        return int(self.embeds.shape[0])


class Adapter:
    """Base class of the model adapters. Subclasses implement frame preprocessing and embedding."""

    family: str = "base"
    rope_rows: int = 1  # rows of position ids: 3 for M-RoPE, 1 for 1-D RoPE

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase):
        self.model = model
        self.tokenizer = tokenizer
        self.text_config = model.config.get_text_config()
        self.device = next(model.parameters()).device
        self.dtype = next(self.language_model.parameters()).dtype

    # ---- the model's parts -------------------------------------------------------------------------
    @property
    def language_model(self) -> torch.nn.Module:
        return self.model.model.language_model

    @property
    def rotary_emb(self) -> torch.nn.Module:
        return self.language_model.rotary_emb

    @property
    def num_layers(self) -> int:
        return int(self.text_config.num_hidden_layers)

    @property
    def num_kv_heads(self) -> int:
        return int(self.text_config.num_key_value_heads)

    @property
    def head_dim(self) -> int:
        cfg = self.text_config
        return int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)

    @property
    def max_context(self) -> int:
        return int(getattr(self.text_config, "max_position_embeddings", 32768))

    @property
    def eos_token_ids(self) -> set[int]:
        ids = set()
        for tok in ("<|im_end|>", "<|endoftext|>"):
            i = self.tokenizer.convert_tokens_to_ids(tok)
            if isinstance(i, int) and i != self.tokenizer.unk_token_id:
                ids.add(i)
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        eos = self.model.generation_config.eos_token_id if self.model.generation_config else None
        if eos is not None:
            ids.update([eos] if isinstance(eos, int) else eos)
        return ids

    # ---- text --------------------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def embed_ids(self, ids: list[int]) -> torch.Tensor:
        t = torch.tensor(ids, dtype=torch.long, device=self.device)
        return self.model.get_input_embeddings()(t)

    def text_positions(self, cursor: int, n: int) -> torch.Tensor:
        pos = torch.arange(cursor, cursor + n, device=self.device)
        return pos.unsqueeze(0).expand(self.rope_rows, n).clone()

    def text_piece(
        self, text: str, cursor: int, kind: str = "text", t0: float = 0.0, t1: float = 0.0
    ) -> Piece:
        ids = self.tokenize(text)
        return self.ids_piece(ids, cursor, kind=kind, t0=t0, t1=t1, text=text)

    def ids_piece(
        self,
        ids: list[int],
        cursor: int,
        kind: str = "text",
        t0: float = 0.0,
        t1: float = 0.0,
        text: str = "",
    ) -> Piece:
        return Piece(
            self.embed_ids(ids), self.text_positions(cursor, len(ids)), kind, t0, t1, list(ids), text
        )

    @staticmethod
    def next_cursor(piece: Piece) -> int:
        """The position of the token after `piece` (for M-RoPE: 1 + the largest position used)."""
        return int(piece.positions.max().item()) + 1

    # ---- frames (family-specific) -----------------------------------------------------------------------
    def frame_pieces(
        self, frames: np.ndarray, timestamps: np.ndarray, cursor: int, frame_interval: float = 1.0
    ) -> list[Piece]:
        """Embed uint8 RGB frames [T, H, W, 3] (one vision-tower call) into one Piece per frame."""
        raise NotImplementedError

    def reference_inputs(self, pieces: list[Piece], frames: list[np.ndarray]) -> dict:
        """The kwargs of one ordinary HF forward over the same tokens as `pieces` (for exactness tests)."""
        raise NotImplementedError

    # ---- the language model ----------------------------------------------------------------------------
    def forward(
        self, embeds: torch.Tensor, positions: torch.Tensor, cache: Cache, logits: str = "last"
    ) -> torch.Tensor | None:
        """Run the decoder over `embeds` [n, hidden] at `positions` [P, n] against `cache`.

        logits: "none" (ingest: only the cache matters), "last" or "all". Returns [n or 1, vocab] or None.
        """
        pos = positions.unsqueeze(1) if self.rope_rows == 3 else positions
        out = self.language_model(
            inputs_embeds=embeds.unsqueeze(0).to(self.dtype),
            position_ids=pos,
            past_key_values=cache,
            use_cache=True,
        )
        if logits == "none":
            return None
        hidden = out.last_hidden_state[0]
        if logits == "last":
            hidden = hidden[-1:]
        return self.model.lm_head(hidden).float()
