"""The adapter protocol: what the engine needs from a video-LLM family.

An adapter turns frames and text into input embeddings with explicit position ids, and runs the model's own
language model (transformers' decoder, unmodified) over them against a cache. Everything family-specific
(frame preprocessing, the vision tower call, special tokens around a frame, the position rule) lives in the
adapter; the engine sees only `Piece`s: embeddings, positions, and where they came from.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import Cache

from videokv.errors import VideoKVError
from videokv.memory.attention import ATTN_NAME, register


@dataclass
class Piece:
    """A contiguous run of stream tokens, ready for the language model.

    embeds: [n, hidden]; positions: [P, n] (P = 3 for M-RoPE, 1 for 1-D RoPE); kind: "frame", "text" or
    "prompt"; t0/t1: the stream time span it covers (seconds); token_ids: the ids the official processor
    gives the same tokens (placeholders for visual tokens), so tests can compare against it; n_frames: the
    real frames a frame piece holds (a Qwen2-VL temporal patch holds two); hw: for a frame piece, the (rows,
    cols) of its visual tokens, which are its last rows * cols tokens in raster order (a video's opening
    token may precede them), None where unknown.
    """

    embeds: torch.Tensor
    positions: torch.Tensor
    kind: str
    t0: float = 0.0
    t1: float = 0.0
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    grid: tuple[int, int, int] | None = None
    n_frames: int = 0
    hw: tuple[int, int] | None = None

    @property
    def n_tokens(self) -> int:
        return int(self.embeds.shape[0])

    def prepend(self, other: Piece) -> Piece:
        """`other`'s tokens (a video's closing token, say) followed by this piece's, as one piece."""
        return Piece(
            torch.cat([other.embeds, self.embeds]),
            torch.cat([other.positions, self.positions], dim=1),
            self.kind,
            self.t0,
            self.t1,
            other.token_ids + self.token_ids,
            self.text,
            self.grid,
            self.n_frames,
            self.hw,
        )

    def shifted(self, delta: int) -> Piece:
        """The same tokens placed `delta` positions later (every RoPE row moves alike)."""
        return Piece(
            self.embeds,
            self.positions + delta,
            self.kind,
            self.t0,
            self.t1,
            self.token_ids,
            self.text,
            self.grid,
            self.n_frames,
            self.hw,
        )


def square_hw(n: int) -> tuple[int, int] | None:
    """The (rows, cols) of a frame's n visual tokens laid out as a square grid in raster order
    (LLaVA-OneVision's pooled grid, InternVL's pixel-shuffled one); None if n is not a square."""
    side = math.isqrt(n)
    return (side, side) if side * side == n else None


def piece_spans(pieces: list[Piece]) -> list[tuple[int, int]]:
    """(start, end) token range of each piece when the pieces are laid end to end."""
    spans, start = [], 0
    for p in pieces:
        spans.append((start, start + p.n_tokens))
        start += p.n_tokens
    return spans


class CacheNotUpdated(VideoKVError):
    """The language model did not add the fed tokens to videokv's cache (a transformers API change)."""


@contextlib.contextmanager
def attention_of(model: PreTrainedModel, name: str) -> Iterator[None]:
    """Within the block the language model attends with `name`; the caller's setting is restored after, so
    any forward outside videokv runs as the caller configured it."""
    config = model.config.get_text_config()
    saved = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = saved


class Adapter:
    """Base class of the model adapters. Subclasses implement frame preprocessing and embedding."""

    family: str = "base"
    rope_rows: int = 1  # rows of position ids: 3 for M-RoPE, 1 for 1-D RoPE
    frames_per_piece: int = 1  # frames that share visual tokens (Qwen2-VL's temporal patch: 2)
    placeholder: str = ""  # what the chat template writes for a video content part
    preprocessor_class: type | None = None  # the official video processor's torchvision-free twin
    verified: str = ""  # what is checked for this family, for `videokv models` (docs/ADAPTERS.md)

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase):
        self.model = model
        self.tokenizer = tokenizer
        self.text_config = model.config.get_text_config()
        self.device = next(model.parameters()).device
        self.dtype = next(self.language_model.parameters()).dtype
        self.cache_argument = cache_argument(self.language_model)
        register()

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

    # ---- video (family-specific) ------------------------------------------------------------------------
    def video_pieces(
        self,
        frames: np.ndarray,
        timestamps: np.ndarray,
        interval: float,
        video: dict | None,
        cursor: int,
    ) -> tuple[list[Piece], dict, int]:
        """Embed uint8 RGB frames [T, H, W, 3] (T a multiple of `frames_per_piece`; one vision-tower call)
        as the next frames of the open `video` (None: open a new one at `cursor`). Returns one Piece per
        `frames_per_piece` frames, the video's new state (JSON-able) and the position a token after the
        video would take if it closed now."""
        raise NotImplementedError

    def close_video(self, video: dict, cursor: int) -> Piece:
        """The token(s) that end the open `video`, at `cursor` (Qwen2-VL: `<|vision_end|>`; LLaVA-OneVision:
        the image_newline HF appends after a video's frames)."""
        raise NotImplementedError

    # ---- the language model ----------------------------------------------------------------------------
    def decoder_inputs(self, embeds: torch.Tensor) -> dict:
        """The language model's keyword arguments (besides positions and cache) for the tokens `embeds`
        [n, width] of one sequence. Here: the embeddings themselves. A family whose tokens carry more than
        their input embedding (Qwen3-VL's DeepStack features) packs it into trailing channels of its pieces'
        `embeds` (the engine only concatenates, slices and averages pieces along tokens) and unpacks it
        here into the model's own public arguments."""
        return {"inputs_embeds": embeds.unsqueeze(0).to(self.dtype)}

    def forward(
        self, embeds: torch.Tensor, positions: torch.Tensor, cache: Cache, logits: str = "last"
    ) -> torch.Tensor | None:
        """Run the decoder over `embeds` [n, hidden] at `positions` [P, n] against `cache`.

        logits: "none" (ingest: only the cache matters), "last" or "all". Returns [n or 1, vocab] or None.
        """
        pos = positions.unsqueeze(1) if self.rope_rows == 3 else positions
        before = [layer.get_seq_length() for layer in cache.layers]
        # inference only, whatever grad mode the caller (or a suspended ask generator) left the thread in
        with attention_of(self.model, ATTN_NAME), torch.no_grad():
            out = self.language_model(
                **self.decoder_inputs(embeds),
                position_ids=pos,
                use_cache=True,
                **{self.cache_argument: cache},
            )
        after = [layer.get_seq_length() for layer in cache.layers]
        n = int(embeds.shape[0])
        if any(a < b + n for b, a in zip(before, after)):  # (a layer may also take its context lazily)
            raise CacheNotUpdated(
                f"the language model ({type(self.language_model).__name__}) did not add the {n} tokens "
                f"fed to videokv's cache (lengths {before} -> {after}): this transformers release "
                f"passes the cache under another argument than {self.cache_argument!r}; please report it "
                f"with your transformers version"
            )
        if logits == "none":
            return None
        hidden = out.last_hidden_state[0]
        if logits == "last":
            hidden = hidden[-1:]
        return self.model.lm_head(hidden).float()


def cache_argument(module: torch.nn.Module) -> str:
    """The name under which `module.forward` takes its KV cache: `cache` (transformers >= 5.24) or
    `past_key_values` (older releases; deprecated in 5.24). Read from the signature, because an unknown
    keyword is swallowed silently and would mean "no cache"."""
    params = inspect.signature(module.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    raise CacheNotUpdated(
        f"{type(module).__name__}.forward takes neither `cache` nor `past_key_values`; videokv cannot pass "
        f"it a cache"
    )
