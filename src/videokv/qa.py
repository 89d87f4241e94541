"""Prompting, greedy generation and multiple-choice scoring over an assembled context.

The chat template is rendered once around a sentinel: what precedes it is the header (the attention sinks),
the stream goes where the sentinel was, and a question is spliced in before the template's tail
(`<|im_end|>\n<|im_start|>assistant\n` for ChatML). A question never enters the stream's memory: it is
prefilled into a fork of the context and the fork is dropped after the answer.
"""

from __future__ import annotations

import re
import string
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from videokv.memory.cache import ContextCache
from videokv.models.base import Adapter

SENTINEL = "<<VIDEOKV_STREAM>>"
DEFAULT_SYSTEM = (
    "You are a helpful assistant. You are watching a video stream: its frames and its subtitles (timed "
    "text, each line prefixed by its time in seconds). Answer questions about it briefly and precisely."
)


@dataclass(frozen=True)
class Evidence:
    """A span of the stream the answer attended to: seconds [t0, t1], what it was, and at which level."""

    t0: float
    t1: float
    kind: str
    level: str = "full"

    def to_dict(self) -> dict:
        return {"t0": round(self.t0, 3), "t1": round(self.t1, 3), "kind": self.kind, "level": self.level}


@dataclass
class Answer:
    """An answer: its text, the chosen option for multiple choice, evidence spans, and statistics."""

    question: str
    text: str
    evidence: list[Evidence] = field(default_factory=list)
    choice: int | None = None
    choice_scores: list[float] | None = None
    stats: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {
            "question": self.question,
            "answer": self.text,
            "evidence": [e.to_dict() for e in self.evidence],
            "stats": self.stats,
        }
        if self.choice is not None:
            d["choice"] = self.choice
            d["choice_scores"] = self.choice_scores
        return d


def split_template(tokenizer, system: str = DEFAULT_SYSTEM) -> tuple[str, str]:
    """(header, tail) of the chat template around the stream: header + stream + question + tail."""
    messages = [{"role": "system", "content": system}, {"role": "user", "content": SENTINEL}]
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        rendered = f"{system}\n\n{SENTINEL}\nAnswer: "
    header, _, tail = rendered.partition(SENTINEL)
    return header, tail


_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (SQuAD-style answer normalisation)."""
    text = "".join(" " if ch in string.punctuation else ch for ch in text.lower())
    return " ".join(_ARTICLES.sub(" ", text).split())


def matches(prediction: str, answer: str) -> bool:
    """The normalised `answer` equals, or appears as whole words in, the normalised `prediction`."""
    gold, pred = normalize(answer), normalize(prediction)
    if not gold:
        return False
    return pred == gold or re.search(rf"(?<!\S){re.escape(gold)}(?!\S)", pred) is not None


def question_text(question: str, choices: list[str] | None = None) -> str:
    text = f"\nQuestion: {question.strip()}"
    if choices:
        text += "\nOptions:\n" + "\n".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(choices))
    return text


class Decoder:
    """Runs a question against a context: prefill, then greedy decoding or choice scoring."""

    def __init__(self, adapter: Adapter, tail: str):
        self.adapter = adapter
        self.tail = tail

    def prefill(self, cache: ContextCache, cursor: int, text: str) -> tuple[torch.Tensor, int]:
        """Prefill `text` + the template tail into `cache` at `cursor`; return (last logits, next cursor)."""
        piece = self.adapter.text_piece(text + self.tail, cursor, kind="prompt")
        logits = self.adapter.forward(piece.embeds, piece.positions, cache, logits="last")
        return logits[-1], self.adapter.next_cursor(piece)

    @torch.no_grad()
    def generate(
        self,
        cache: ContextCache,
        cursor: int,
        question: str,
        max_new_tokens: int = 64,
        on_token: Callable[[str], None] | None = None,
    ) -> tuple[str, dict]:
        t_start = time.perf_counter()
        logits, cursor = self.prefill(cache, cursor, question)
        t_prefill = time.perf_counter() - t_start
        eos = self.adapter.eos_token_ids
        ids: list[int] = []
        emitted = ""
        t_first = None
        for _ in range(max_new_tokens):
            nxt = int(logits.argmax())
            if nxt in eos:
                break
            ids.append(nxt)
            if t_first is None:
                t_first = time.perf_counter() - t_start
            if on_token is not None:
                text = self.adapter.tokenizer.decode(ids, skip_special_tokens=True)
                if len(text) > len(emitted) and not text.endswith("\ufffd"):
                    on_token(text[len(emitted) :])
                    emitted = text
            if len(ids) == max_new_tokens:
                break
            piece = self.adapter.ids_piece([nxt], cursor)
            logits = self.adapter.forward(piece.embeds, piece.positions, cache, logits="last")[-1]
            cursor += 1
        text = self.adapter.tokenizer.decode(ids, skip_special_tokens=True).strip()
        total = time.perf_counter() - t_start
        stats = {
            "prefill_s": round(t_prefill, 4),
            "decode_s": round(total - t_prefill, 4),
            "ttft_s": round(t_first if t_first is not None else total, 4),
            "answer_tokens": len(ids),
        }
        return text, stats

    @torch.no_grad()
    def pick_choice(
        self,
        cache: ContextCache,
        cursor: int,
        question: str,
        choices: list[str],
        max_new_tokens: int = 32,
    ) -> tuple[int, list[float], str, dict]:
        """Multiple choice in two steps: answer the bare question freely; if that answer names exactly one
        option (whole words, normalised), pick it; otherwise the option most likely after the question with
        its options listed (`score_choices`). Small models answer far better than they rank letters or
        listed options. Returns (choice, option scores, the free answer, stats)."""
        free, gen_stats = self.generate(cache.fork(), cursor, question_text(question), max_new_tokens)
        best, scores, stats = self.score_choices(cache, cursor, question_text(question, choices), choices)
        named = [i for i, c in enumerate(choices) if matches(free, c)]
        if len(named) == 1:
            best = named[0]
        stats["choice_by"] = "answer text" if len(named) == 1 else "likelihood"
        stats["prefill_s"] = round(stats["prefill_s"] + gen_stats["prefill_s"], 4)
        stats["decode_s"] = round(stats["decode_s"] + gen_stats["decode_s"], 4)
        stats["ttft_s"] = round(stats["ttft_s"] + gen_stats["prefill_s"] + gen_stats["decode_s"], 4)
        return best, scores, free, stats

    @torch.no_grad()
    def score_choices(
        self, cache: ContextCache, cursor: int, question: str, choices: list[str]
    ) -> tuple[int, list[float], dict]:
        """Pick the option whose text is most likely after the question (mean log-probability per token)."""
        t_start = time.perf_counter()
        logits, cursor = self.prefill(cache, cursor, question)
        t_prefill = time.perf_counter() - t_start
        scores = []
        for choice in choices:
            ids = self.adapter.tokenize(choice.strip())
            fork = cache.fork()
            piece = self.adapter.ids_piece(ids, cursor)
            out = self.adapter.forward(piece.embeds, piece.positions, fork, logits="all")
            logp = torch.cat([logits[None], out[:-1]]).log_softmax(-1)
            scores.append(float(logp[torch.arange(len(ids)), torch.tensor(ids)].mean()))
        best = max(range(len(choices)), key=lambda i: scores[i])
        total = time.perf_counter() - t_start
        stats = {
            "prefill_s": round(t_prefill, 4),
            "decode_s": round(total - t_prefill, 4),
            "ttft_s": round(total, 4),
            "answer_tokens": 0,
        }
        return best, scores, stats
