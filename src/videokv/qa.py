"""Prompting, generation (greedy by default; videokv.generation) and multiple-choice scoring over an
assembled context.

The checkpoint's own chat template is rendered once for one user turn whose content is [video, text], the
text being a sentinel (`prompt_layout`): what precedes the video is the header (the attention sinks), the
stream goes where the video was, and a question goes where the sentinel was, between the template's text
before it and its tail (`<|im_end|>\n<|im_start|>assistant\n` for ChatML). So with the whole video in
memory the model sees token for token what the official processor gives for [video, question]. A question
never enters the stream's memory: it is prefilled into a fork of the context, dropped after the answer.
"""

from __future__ import annotations

import re
import string
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

import torch

from videokv.errors import ConfigError, InputError
from videokv.generation import GREEDY, GenerationOptions, Picker, StopText
from videokv.memory.cache import ContextCache
from videokv.models.base import Adapter, Piece

SENTINEL = "<<VIDEOKV_QUESTION>>"
# A system prompt for streams with subtitles (the demo and the benchmarks use it); by default a session uses
# the checkpoint's own (whatever its chat template renders when no system message is given).
STREAM_SYSTEM = (
    "You are a helpful assistant. You are watching a video stream: its frames and its subtitles (timed "
    "text, each line prefixed by its time in seconds). Answer questions about it briefly and precisely."
)
DEFAULT_SYSTEM: str | None = None  # None: the checkpoint's own default system prompt


def drain(steps: Generator):
    """Run a step generator (`generate_steps`, `ask_steps`, ...) to its end and return its value."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


def kv_memory(stats: dict) -> dict:
    """The one definition of a stream's KV memory, from `memory_stats()` (an answer's or a session's stats):

    - resident_bytes: KV held in accelerator or host memory: the ingest context plus the memory blocks
      resident on those tiers;
    - context_bytes: the ingest context (attention sinks + the recent window new tokens attend to; for the
      presets without a block store, `full` and `window`, the whole memory);
    - blocks_bytes: the memory blocks resident by tier, {"device", "host"};
    - offloaded_bytes: memory blocks on disk (the cold lane), read only when a question retrieves them.
    """
    tiers = stats.get("bytes_by_tier")
    if tiers is None:  # a context-mode preset: the context is the memory
        context = int(stats.get("memory_bytes", 0))
        blocks = {"device": 0, "host": 0}
        offloaded = 0
    else:
        context = int(stats.get("ingest_context_bytes", 0))
        blocks = {"device": int(tiers.get("device", 0)), "host": int(tiers.get("host", 0))}
        offloaded = int(tiers.get("disk", 0))
    return {
        "resident_bytes": context + sum(blocks.values()),
        "context_bytes": context,
        "blocks_bytes": blocks,
        "offloaded_bytes": offloaded,
    }


def kv_text(kv: dict) -> str:
    """`kv_memory` on one line, as `ask`, `stream` and the web page show it:
    `KV 0.21 MiB resident (context 0.21, blocks 0.00) | 0.20 MiB offloaded to disk`; blocks name their
    tiers when any is resident (`blocks: host 1.50`)."""

    def mib(n: int) -> str:
        return f"{n / 2**20:.2f}"

    tiers = {k: v for k, v in kv["blocks_bytes"].items() if v}
    blocks = ", ".join(f"{k} {mib(v)}" for k, v in tiers.items()) if tiers else "0.00"
    resident = f"KV {mib(kv['resident_bytes'])} MiB resident"
    parts = f"(context {mib(kv['context_bytes'])}, blocks: {blocks})"
    return f"{resident} {parts} | {mib(kv['offloaded_bytes'])} MiB offloaded to disk"


@dataclass(frozen=True)
class Evidence:
    """A span of the stream the answer attended to: seconds [t0, t1], what it was, and at which level."""

    t0: float
    t1: float
    kind: str
    level: str = "full"
    text: str | None = None  # a text span's lines, as written into the stream (`[12.0s] ...`); else None

    def to_dict(self) -> dict:
        return {
            "t0": round(self.t0, 3),
            "t1": round(self.t1, 3),
            "kind": self.kind,
            "level": self.level,
            "text": self.text,
        }


@dataclass
class Answer:
    """An answer: its text, the chosen option for multiple choice, evidence spans, and statistics."""

    question: str
    text: str
    evidence: list[Evidence] = field(default_factory=list)
    choice: int | None = None
    choice_scores: list[float] | None = None
    stats: dict = field(default_factory=dict)
    logprobs: list[dict] | None = None

    def to_dict(self) -> dict:
        d = {
            "question": self.question,
            "answer": self.text,
            "evidence": [e.to_dict() for e in self.evidence],
            "stats": self.stats,
        }
        if "memory_bytes" in self.stats:
            d["kv"] = kv_memory(self.stats)
        if self.choice is not None:
            d["choice"] = self.choice
            d["choice_scores"] = self.choice_scores
        if self.logprobs is not None:
            d["logprobs"] = self.logprobs
        return d


@dataclass(frozen=True)
class PromptLayout:
    """The chat template around the stream: header + stream + before_question + question + tail."""

    header: str
    before_question: str
    tail: str


def prompt_layout(tokenizer, placeholder: str, system: str | None = None) -> PromptLayout:
    """Render the tokenizer's chat template for [system?] + one user turn [video, text=sentinel] and cut it
    around the video's placeholder (what the template writes for a video part, e.g.
    `<|vision_start|><|video_pad|><|vision_end|>`) and the sentinel. A template that has no chat template,
    drops the video part or the text, or puts the text first is an error: never a silent wrong prompt."""
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            f"the tokenizer of {name!r} has no chat template; save the checkpoint's processor with it "
            f"(chat_template.jinja or chat_template.json beside tokenizer_config.json) or set "
            f"tokenizer.chat_template"
        )
    messages = []
    if system:
        messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
    messages.append({"role": "user", "content": [{"type": "video"}, {"type": "text", "text": SENTINEL}]})
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    at_video, at_text = rendered.find(placeholder), rendered.find(SENTINEL)
    if at_video < 0 or at_text < 0 or at_text < at_video or rendered.count(placeholder) != 1:
        raise ConfigError(
            f"the chat template of {name!r} does not render a user turn [video, text] as expected "
            f"(looked for {placeholder!r} once, then the text): it would drop or misplace the stream. "
            f"Rendered: {rendered[:300]!r}"
        )
    return PromptLayout(
        rendered[:at_video],
        rendered[at_video + len(placeholder) : at_text],
        rendered[at_text + len(SENTINEL) :],
    )


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
    """The user's text part: the question, then its options (A), (B), ... one per line."""
    text = question.strip()
    if choices:
        text += "\nOptions:\n" + "\n".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(choices))
    return text


def check_question(
    question: object,
    choices: object = None,
    max_new_tokens: object = 64,
    logprobs: object = 0,
    generation: object = None,
) -> None:
    """Every check of a question that does not need the stream: raise InputError on a question `ask` would
    refuse. Callers that ingest before they ask (the CLI, the service's chat route) run it first, so that a
    bad question never costs an ingest. The arguments are `Session.ask`'s."""
    if not isinstance(question, str) or not question.strip():
        raise InputError("the question is empty; ask something about the stream")
    if choices is not None:
        if isinstance(choices, str) or not isinstance(choices, list | tuple):
            raise InputError(f"choices must be a list of at least two options; got {choices!r}")
        if len(choices) < 2:
            raise InputError(
                f"choices must be at least two non-empty strings; got {len(choices)} ({list(choices)!r}): "
                "give every option, or ask without choices"
            )
        if any(not isinstance(c, str) or not c.strip() for c in choices):
            raise InputError("choices must be at least two non-empty strings; one is empty")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be an int >= 1; got {max_new_tokens!r}")
    if isinstance(logprobs, bool) or not isinstance(logprobs, int) or not 0 <= logprobs <= 20:
        raise InputError(f"logprobs must be an int from 0 to 20; got {logprobs!r}")
    if generation is not None and not isinstance(generation, GenerationOptions):
        raise InputError(f"generation must be a GenerationOptions; got {type(generation).__name__}")
    if choices and generation is not None and generation.replace(seed=None) != GREEDY:
        raise InputError(
            "choices are picked by likelihood, so sampling, repetition_penalty and stop do not apply; "
            "drop those options, or ask without choices"
        )


class Decoder:
    """Runs a question against a context: prefill, then greedy decoding or choice scoring.

    `lead`: pieces that precede the question but are not in memory (a video's closing token, an odd frame
    padded into a temporal patch), placed at the cursor the question is given; the question follows them.
    """

    def __init__(self, adapter: Adapter, layout: PromptLayout, prefill_chunk: int | None = None):
        self.adapter = adapter
        self.layout = layout
        # None: a prompt is prefilled in one forward. N: in forwards of at most N consecutive tokens over the
        # same cache (their positions as given), and the step generators yield between them, so a long
        # question holds the model for a chunk at a time (the server sets it; the logits agree with one
        # forward to float rounding: tests/test_prefill_chunks.py)
        self.prefill_chunk = prefill_chunk

    def question_piece(self, text: str, cursor: int) -> Piece:
        return self.adapter.text_piece(
            self.layout.before_question + text + self.layout.tail, cursor, "prompt"
        )

    def prefill(
        self, cache: ContextCache, cursor: int, text: str, lead: list[Piece] = (), ids: list | None = None
    ) -> tuple[torch.Tensor, int]:
        """Prefill `lead` + the question `text` + the template tail into `cache` at `cursor`; return (last
        logits, next cursor). `ids`, if given, is extended with the token ids prefilled."""
        return drain(self.prefill_steps(cache, cursor, text, lead, ids))

    def prefill_steps(
        self, cache: ContextCache, cursor: int, text: str, lead: list[Piece] = (), ids: list | None = None
    ) -> Generator[None, None, tuple[torch.Tensor, int]]:
        """`prefill` as a generator: with `prefill_chunk` set, the prompt goes in forwards of at most that
        many tokens, and it yields between them."""
        pieces = list(lead)
        pieces.append(self.question_piece(text, self.adapter.next_cursor(pieces[-1]) if pieces else cursor))
        if ids is not None:
            ids.extend(i for p in pieces for i in p.token_ids)
        embeds = torch.cat([p.embeds for p in pieces])
        positions = torch.cat([p.positions for p in pieces], dim=1)
        logits = yield from self.forward_steps(embeds, positions, cache, "last")
        return logits[-1], self.adapter.next_cursor(pieces[-1])

    def forward_steps(
        self, embeds: torch.Tensor, positions: torch.Tensor, cache: ContextCache, logits: str
    ) -> Generator[None, None, torch.Tensor | None]:
        """`adapter.forward`, in chunks of `prefill_chunk` tokens with a yield between them (one forward
        when unset or shorter). With logits="all" the chunks' logits are concatenated."""
        n, step = int(embeds.shape[0]), self.prefill_chunk
        if not step or n <= step:
            return self.adapter.forward(embeds, positions, cache, logits=logits)
        outs = []
        for i in range(0, n, step):
            last = i + step >= n
            want = logits if last or logits == "all" else "none"
            out = self.adapter.forward(embeds[i : i + step], positions[:, i : i + step], cache, logits=want)
            if out is not None:
                outs.append(out)
            if not last:
                yield
        if logits == "none":
            return None
        return outs[-1] if logits == "last" else torch.cat(outs)

    def token_logprobs(self, logits: torch.Tensor, chosen: int, top: int) -> dict:
        """The chosen token's log-probability and the `top` most likely tokens (id, text, log-probability)."""
        logp = logits.float().log_softmax(-1)
        values, ids = logp.topk(top) if top > 0 else (logp[:0], logp[:0].long())
        decode = self.adapter.tokenizer.decode
        return {
            "token_id": chosen,
            "token": decode([chosen]),
            "logprob": float(logp[chosen]),
            "top": [
                {"token_id": int(i), "token": decode([int(i)]), "logprob": float(v)}
                for v, i in zip(values.tolist(), ids.tolist())
            ],
        }

    def generate(
        self,
        cache: ContextCache,
        cursor: int,
        question: str,
        max_new_tokens: int = 64,
        on_token: Callable[[str], None] | None = None,
        lead: list[Piece] = (),
        logprobs: int = 0,
        generation: GenerationOptions | None = None,
    ) -> tuple[str, dict]:
        """Decode an answer (greedy unless `generation` says otherwise; videokv.generation). With `logprobs`
        > 0, stats["logprobs"] lists, per generated token (the end of sequence included), its
        log-probability under the model and the `logprobs` most likely alternatives."""
        return drain(
            self.generate_steps(cache, cursor, question, max_new_tokens, on_token, lead, logprobs, generation)
        )

    @torch.no_grad()
    def generate_steps(
        self,
        cache: ContextCache,
        cursor: int,
        question: str,
        max_new_tokens: int = 64,
        on_token: Callable[[str], None] | None = None,
        lead: list[Piece] = (),
        logprobs: int = 0,
        generation: GenerationOptions | None = None,
    ) -> Generator[None, None, tuple[str, dict]]:
        """`generate` as a generator: it yields between decoding steps (a scheduler may run other work
        there) and returns (text, stats). stats["finish_reason"] is "stop" (end of sequence or a stop
        string) or "length" (max_new_tokens reached)."""
        options = generation or GREEDY
        t_start = time.perf_counter()
        prompt_ids: list[int] = []
        logits, cursor = yield from self.prefill_steps(cache, cursor, question, lead, prompt_ids)
        t_prefill = time.perf_counter() - t_start
        pick = Picker(options, prompt_ids if not options.greedy_raw else [], logits.device)
        stops = StopText(options.stop)
        decode = self.adapter.tokenizer.decode
        eos = self.adapter.eos_token_ids
        ids: list[int] = []
        steps: list[dict] = []
        emitted = ""
        t_first = None
        finish = "length"
        cut = -1
        for _ in range(max_new_tokens):
            nxt = pick(logits)
            if logprobs:
                steps.append(self.token_logprobs(logits, nxt, logprobs))
            if nxt in eos:
                finish = "stop"
                break
            ids.append(nxt)
            pick.accept(nxt)
            if t_first is None:
                t_first = time.perf_counter() - t_start
            if on_token is not None or stops.stops:
                text = decode(ids, skip_special_tokens=True)
                cut = stops.find(text) if stops.stops else -1
                if on_token is not None:
                    shown = text[:cut] if cut >= 0 else text[: stops.safe(text)]
                    if len(shown) > len(emitted) and not shown.endswith("\ufffd"):
                        on_token(shown[len(emitted) :])
                        emitted = shown
                if cut >= 0:
                    finish = "stop"
                    break
            if len(ids) == max_new_tokens:
                break
            piece = self.adapter.ids_piece([nxt], cursor)
            logits = self.adapter.forward(piece.embeds, piece.positions, cache, logits="last")[-1]
            cursor += 1
            yield
        text = decode(ids, skip_special_tokens=True)
        if cut >= 0:  # keep the tokens up to the one that reaches the stop string
            text = text[:cut]
            kept = next(
                n for n in range(len(ids) + 1) if len(decode(ids[:n], skip_special_tokens=True)) >= cut
            )
            ids, steps = ids[:kept], steps[:kept]
        elif on_token is not None and stops.stops and len(text) > len(emitted):
            on_token(text[len(emitted) :])  # the held-back tail that never became a stop string
        text = text.strip()
        total = time.perf_counter() - t_start
        stats = {
            "prefill_s": round(t_prefill, 4),
            "decode_s": round(total - t_prefill, 4),
            "ttft_s": round(t_first if t_first is not None else total, 4),
            "answer_tokens": len(ids),
            "prompt_tokens": len(prompt_ids),
            "finish_reason": finish,
        }
        if pick.seed is not None:
            stats["seed"] = pick.seed
        if logprobs:
            stats["logprobs"] = steps
        return text, stats

    @torch.no_grad()
    def pick_choice(
        self,
        cache: ContextCache,
        cursor: int,
        question: str,
        choices: list[str],
        max_new_tokens: int = 32,
        lead: list[Piece] = (),
    ) -> tuple[int, list[float], str, dict]:
        """Multiple choice in two steps: answer the bare question freely; if that answer names exactly one
        option (whole words, normalised), pick it; otherwise the option most likely after the question with
        its options listed (`score_choices`). Small models answer far better than they rank letters or
        listed options. Returns (choice, option scores, the free answer, stats)."""
        return drain(self.pick_choice_steps(cache, cursor, question, choices, max_new_tokens, lead))

    def pick_choice_steps(
        self,
        cache: ContextCache,
        cursor: int,
        question: str,
        choices: list[str],
        max_new_tokens: int = 32,
        lead: list[Piece] = (),
    ) -> Generator[None, None, tuple[int, list[float], str, dict]]:
        """`pick_choice` as a generator that yields between decoding steps."""
        free, gen_stats = yield from self.generate_steps(
            cache.fork(), cursor, question_text(question), max_new_tokens, lead=lead
        )
        best, scores, stats = yield from self.score_choices_steps(
            cache, cursor, question_text(question, choices), choices, lead
        )
        named = [i for i, c in enumerate(choices) if matches(free, c)]
        if len(named) == 1:
            best = named[0]
        stats["choice_by"] = "answer text" if len(named) == 1 else "likelihood"
        stats["prefill_s"] = round(stats["prefill_s"] + gen_stats["prefill_s"], 4)
        stats["decode_s"] = round(stats["decode_s"] + gen_stats["decode_s"], 4)
        stats["ttft_s"] = round(stats["ttft_s"] + gen_stats["prefill_s"] + gen_stats["decode_s"], 4)
        return best, scores, free, stats

    @torch.no_grad()
    def continuation_logprob(
        self, cache: ContextCache, cursor: int, question: str, ids: list[int], lead: list[Piece] = ()
    ) -> tuple[float, bool]:
        """(sum of the log-probabilities of the token `ids` after the question, whether each is the argmax
        of the logits before it, i.e. greedy decoding would produce them)."""
        logits, cursor = self.prefill(cache, cursor, question, lead)
        piece = self.adapter.ids_piece(ids, cursor)
        out = self.adapter.forward(piece.embeds, piece.positions, cache, logits="all")
        before = torch.cat([logits[None], out[:-1]]).float()
        target = torch.tensor(ids, device=before.device)
        logp = before.log_softmax(-1)[torch.arange(len(ids), device=before.device), target]
        return float(logp.sum()), bool((before.argmax(-1) == target).all())

    @torch.no_grad()
    def score_choices(
        self, cache: ContextCache, cursor: int, question: str, choices: list[str], lead: list[Piece] = ()
    ) -> tuple[int, list[float], dict]:
        """Pick the option whose text is most likely after the question (mean log-probability per token)."""
        return drain(self.score_choices_steps(cache, cursor, question, choices, lead))

    @torch.no_grad()
    def score_choices_steps(
        self, cache: ContextCache, cursor: int, question: str, choices: list[str], lead: list[Piece] = ()
    ) -> Generator[None, None, tuple[int, list[float], dict]]:
        """`score_choices` as a generator that yields between prefill chunks and between options."""
        t_start = time.perf_counter()
        logits, cursor = yield from self.prefill_steps(cache, cursor, question, lead)
        t_prefill = time.perf_counter() - t_start
        scores = []
        for choice in choices:
            yield
            ids = self.adapter.tokenize(choice.strip())
            fork = cache.fork()
            piece = self.adapter.ids_piece(ids, cursor)
            out = yield from self.forward_steps(piece.embeds, piece.positions, fork, "all")
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
