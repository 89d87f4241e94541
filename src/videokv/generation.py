"""Decoding options like transformers' `GenerationConfig`, on transformers' own logits processors.

`GenerationOptions` holds sampling (`do_sample`, `temperature`, `top_k`, `top_p`, `seed`), a repetition
penalty and stop strings. `processors()` builds the `LogitsProcessorList` that `model.generate` builds for the
same settings, in the same order (`RepetitionPenaltyLogitsProcessor`, then `TemperatureLogitsWarper`,
`TopKLogitsWarper`, `TopPLogitsWarper`, the warpers only when sampling), and `Picker` chooses each token the
way generate's sampling loop does (softmax of the processed scores, then `torch.multinomial`), drawing from
a `torch.Generator` seeded with `seed`: the same seed gives the same answer, and on the CPU the same tokens
as `torch.manual_seed(seed); model.generate(do_sample=True, ...)` on the same logits. The default (greedy,
no penalty) picks `argmax` of the raw logits, exactly as videokv always has.

The repetition penalty applies to the ids of the question turn (the lead, the question and the template's
tail) and of the answer so far: the stream's memory is held as KV, not as token ids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from videokv.errors import InputError

MAX_STOPS = 8
MAX_STOP_CHARS = 200
#: The smallest temperature when sampling: float32 logits divided by less overflow to inf, and the softmax of
#: inf is NaN (torch.multinomial then fails). For the most likely token, decode greedily (do_sample=False,
#: or temperature 0 in the OpenAI route).
MIN_TEMPERATURE = 1e-5
#: The range of repetition_penalty: a penalty further from 1 divides or multiplies logits into overflow.
MIN_REPETITION_PENALTY = 1e-2
MAX_REPETITION_PENALTY = 100.0


class GenerationError(InputError):
    """A decoding option out of range or inconsistent with the others."""


@dataclass(frozen=True)
class GenerationOptions:
    """How an answer is decoded (the transformers `GenerationConfig` names).

    do_sample: sample from the processed distribution (default: greedy argmax). temperature (at least
    1e-5: MIN_TEMPERATURE), top_k (0: off) and top_p (in (0, 1]; 1: off) shape the distribution when
    sampling and are an error without it. repetition_penalty (in [0.01, 100]; 1: off): transformers'
    `RepetitionPenaltyLogitsProcessor` over the question turn's and the answer's ids (greedy or sampled).
    Every number must be finite. seed: the sampler's seed (None: a fresh one, reported
    in the answer's stats as `seed`). stop: strings that end the answer where they first appear (they are
    not part of it); at most 8, each 1-200 characters.
    """

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        elif self.stop is None:
            object.__setattr__(self, "stop", ())
        else:
            object.__setattr__(self, "stop", tuple(self.stop))
        self.validate()

    @classmethod
    def make(cls, base: GenerationOptions | None = None, **options: object) -> GenerationOptions:
        """`base` (default: greedy) with `options` replaced; an unknown name is an error naming the valid
        ones."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise GenerationError(
                f"unknown generation option(s) {', '.join(unknown)}; the options are: {', '.join(names)}"
            )
        values = {n: getattr(base, n) for n in names} if base is not None else {}
        values.update(options)
        return cls(**values)

    def replace(self, **options: object) -> GenerationOptions:
        """A copy with `options` changed (validated)."""
        return GenerationOptions.make(self, **options)

    def validate(self) -> None:
        """Raise `GenerationError` saying what to change for any value out of range or without effect."""
        if not isinstance(self.do_sample, bool):
            raise GenerationError(f"do_sample must be true or false; got {self.do_sample!r}")
        for name in ("temperature", "top_p", "repetition_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise GenerationError(f"{name} must be a finite number; got {value!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise GenerationError(f"top_k must be an integer >= 0 (0: off); got {self.top_k!r}")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**64
        ):
            raise GenerationError(f"seed must be an integer from 0 to 2**64 - 1 (or None); got {self.seed!r}")
        if not MIN_REPETITION_PENALTY <= self.repetition_penalty <= MAX_REPETITION_PENALTY:
            raise GenerationError(
                f"repetition_penalty must be > 0, from {MIN_REPETITION_PENALTY:g} to "
                f"{MAX_REPETITION_PENALTY:g} (1.0: off; > 1 discourages repeats); "
                f"got {self.repetition_penalty}"
            )
        if not 0 < self.top_p <= 1:
            raise GenerationError(f"top_p must be in (0, 1] (1.0: off); got {self.top_p}")
        if self.do_sample and not self.temperature >= MIN_TEMPERATURE:
            raise GenerationError(
                f"temperature must be > 0 when sampling, at least {MIN_TEMPERATURE:g}; got "
                f"{self.temperature} (for greedy decoding pass do_sample=False instead of a temperature "
                "near 0)"
            )
        if not self.do_sample:
            changed = [
                f"{n}={getattr(self, n)!r}"
                for n, off in (("temperature", 1.0), ("top_k", 0), ("top_p", 1.0))
                if getattr(self, n) != off
            ]
            if changed:
                raise GenerationError(
                    f"{', '.join(changed)} only apply when sampling; pass do_sample=True to sample, or leave "
                    "them at their defaults for greedy decoding"
                )
        if len(self.stop) > MAX_STOPS:
            raise GenerationError(f"at most {MAX_STOPS} stop strings; got {len(self.stop)}")
        for s in self.stop:
            if not isinstance(s, str) or not 1 <= len(s) <= MAX_STOP_CHARS:
                raise GenerationError(
                    f"each stop string must be a string of 1 to {MAX_STOP_CHARS} characters; got {s!r}"
                )

    @property
    def greedy_raw(self) -> bool:
        """True when the answer is the argmax of the raw logits (nothing to process)."""
        return not self.do_sample and self.repetition_penalty == 1.0

    def processors(self):
        """transformers' `LogitsProcessorList` for these options, as `generate` orders it."""
        from transformers.generation.logits_process import (
            LogitsProcessorList,
            RepetitionPenaltyLogitsProcessor,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        out = LogitsProcessorList()
        if self.repetition_penalty != 1.0:
            out.append(RepetitionPenaltyLogitsProcessor(self.repetition_penalty))
        if self.do_sample:
            if self.temperature != 1.0:
                out.append(TemperatureLogitsWarper(self.temperature))
            if self.top_k:
                out.append(TopKLogitsWarper(top_k=self.top_k, min_tokens_to_keep=1))
            if self.top_p < 1.0:
                out.append(TopPLogitsWarper(top_p=self.top_p, min_tokens_to_keep=1))
        return out

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["stop"] = list(self.stop)
        return out


GREEDY = GenerationOptions()


class Picker:
    """Chooses each next token under `options`: argmax of the raw logits (the default), or transformers'
    processors over (prompt ids + answer ids) and then argmax or `torch.multinomial` with its own seeded
    generator."""

    def __init__(self, options: GenerationOptions, prompt_ids: list[int], device: torch.device):
        self.options = options
        self.ids = list(prompt_ids)
        self.processors = options.processors()
        self.generator = None
        self.seed = None
        if options.do_sample:
            self.generator = torch.Generator(device=device)
            if options.seed is None:
                self.seed = int(self.generator.seed())  # a fresh seed, reported so the answer can be redrawn
            else:
                self.seed = options.seed
                self.generator.manual_seed(options.seed)

    def __call__(self, logits: torch.Tensor) -> int:
        if self.options.greedy_raw:
            return int(logits.argmax())
        scores = logits[None].to(copy=True, dtype=torch.float32)
        input_ids = torch.tensor([self.ids], dtype=torch.long, device=scores.device)
        scores = self.processors(input_ids, scores)
        if self.options.do_sample:
            probs = torch.nn.functional.softmax(scores, dim=-1)
            return int(torch.multinomial(probs, num_samples=1, generator=self.generator)[0, 0])
        return int(scores.argmax(dim=-1)[0])

    def accept(self, token: int) -> None:
        self.ids.append(token)


class StopText:
    """Stop strings over the decoded answer: where the first one appears, and how much text is safe to
    stream (none of it could still be the start of a stop string)."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops = stops

    def find(self, text: str) -> int:
        """The index where the earliest stop string starts in `text`, or -1."""
        hits = [i for s in self.stops if (i := text.find(s)) >= 0]
        return min(hits) if hits else -1

    def safe(self, text: str) -> int:
        """How many leading characters of `text` can be shown: all but a tail that may begin a stop."""
        held = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:n]):
                    held = max(held, n)
                    break
        return len(text) - held
