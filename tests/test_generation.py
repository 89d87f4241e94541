"""Decoding options (videokv.generation) against transformers itself: with the `full` memory, a video
streamed in chunks answers, greedy or sampled with a seed, with exactly the tokens `model.generate` gives on
the official processor's output for the same video and question (the parity fixtures of
tests/test_official_layout.py); the repetition penalty against a loop of transformers' own processor over
HF's forward; stop strings; bad options."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

from tests.models.test_preprocess import _case
from tests.test_official_layout import qa_for, stream_of
from videokv import GenerationOptions
from videokv.errors import InputError
from videokv.generation import GenerationError, StopText

N = 12
SAMPLING = {"do_sample": True, "temperature": 0.8, "top_k": 50, "top_p": 0.9}


def streamed_session(family: str):
    """A `full` session over the fixture case odd5 streamed in chunks of 2 frames: (session, question,
    the HF generate inputs of the official processor's output for the same turn)."""
    meta, tensors, videos, official = _case(family, "odd5")
    qa = qa_for(family)
    session = qa.session(fps=meta["fps"])
    items, question = stream_of(meta, videos)
    session.add_items(items, chunk_frames=2)
    ids = tensors["input_ids"]
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values_videos": official}
    if family in ("qwen2_vl", "qwen3_vl"):
        inputs["video_grid_thw"] = tensors["video_grid_thw"]
        inputs["mm_token_type_ids"] = tensors["mm_token_type_ids"]
    elif family == "internvl":  # the processor hands a video's frames over as images
        inputs["pixel_values"] = inputs.pop("pixel_values_videos")
    elif official.dim() == 4:
        inputs["pixel_values_videos"] = official[None]
    return session, question, inputs


def hf_generate(session, inputs: dict, seed: int | None = None, **options) -> list[int]:
    """transformers' own generate on the processor's output: the answer's ids (no end of sequence)."""
    model = session.engine.adapter.model
    eos = sorted(session.engine.adapter.eos_token_ids)
    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=N, eos_token_id=eos, pad_token_id=eos[0], **options)
    ids = out[0, inputs["input_ids"].shape[1] :].tolist()
    return [i for i in ids if i not in eos]


def answer_ids(answer) -> list[int]:
    return [step["token_id"] for step in answer.logprobs][: answer.stats["answer_tokens"]]


FAMILIES = ["llava_onevision", "qwen2_vl", "qwen3_vl", "internvl"]


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_equals_hf_generate(family):
    session, question, inputs = streamed_session(family)
    answer = session.ask(question, max_new_tokens=N, logprobs=1)
    assert answer_ids(answer) == hf_generate(session, inputs, do_sample=False)
    # the default and an explicit greedy GenerationOptions are the same path, token for token
    again = session.ask(question, max_new_tokens=N, logprobs=1, generation=GenerationOptions())
    assert again.text == answer.text and again.logprobs == answer.logprobs
    assert "seed" not in answer.stats


@pytest.mark.parametrize("family", FAMILIES)
def test_sampling_with_a_seed_equals_hf_generate(family):
    session, question, inputs = streamed_session(family)
    first = session.ask(question, max_new_tokens=N, logprobs=1, seed=7, **SAMPLING)
    expected = hf_generate(session, inputs, seed=7, **SAMPLING)
    assert answer_ids(first) == expected
    assert first.stats["seed"] == 7
    # reproducible, and the seed matters (the tiny random model's distribution is nearly flat)
    assert session.ask(question, max_new_tokens=N, seed=7, **SAMPLING).text == first.text
    other = session.ask(question, max_new_tokens=N, logprobs=1, seed=8, **SAMPLING)
    assert answer_ids(other) == hf_generate(session, inputs, seed=8, **SAMPLING)
    assert answer_ids(other) != answer_ids(first)
    # without a seed: a fresh one, reported, and redrawing with it gives the same answer
    fresh = session.ask(question, max_new_tokens=N, **SAMPLING)
    redrawn = session.ask(question, max_new_tokens=N, seed=fresh.stats["seed"], **SAMPLING)
    assert redrawn.text == fresh.text


def reference_penalty_loop(session, inputs: dict, question_ids: int, penalty: float) -> list[int]:
    """Greedy over HF's own forward (the whole sequence each step, no cache) on the processor's output,
    with transformers' repetition penalty over the question turn's ids (the last `question_ids` prompt
    ids) and the answer so far."""
    model = session.engine.adapter.model
    eos = session.engine.adapter.eos_token_ids
    processor = RepetitionPenaltyLogitsProcessor(penalty)
    prompt = inputs["input_ids"][0].tolist()
    out_ids: list[int] = []
    with torch.no_grad():
        for _ in range(N):
            ids = torch.tensor([prompt + out_ids])
            logits = model(**{**inputs, "input_ids": ids, "attention_mask": torch.ones_like(ids)}).logits
            history = torch.tensor([prompt[-question_ids:] + out_ids])
            nxt = int(processor(history, logits[:, -1].float()).argmax())
            if nxt in eos:
                break
            out_ids.append(nxt)
    return out_ids


def test_repetition_penalty_equals_transformers_processor_loop():
    session, question, inputs = streamed_session("llava_onevision")
    pieces = session.engine.question_pieces(question)
    question_ids = sum(len(p.token_ids) for p in pieces)
    plain = session.ask(question, max_new_tokens=N, logprobs=1)
    penalised = session.ask(question, max_new_tokens=N, logprobs=1, repetition_penalty=3.0)
    assert answer_ids(penalised) == reference_penalty_loop(session, inputs, question_ids, 3.0)
    assert answer_ids(penalised) != answer_ids(plain)
    assert penalised.stats["prompt_tokens"] == question_ids
    # logprobs stay those of the model (before processing): the same first step as without a penalty
    assert penalised.logprobs[0]["top"] == plain.logprobs[0]["top"]


def test_stop_strings_cut_the_answer_and_the_stream():
    session, question, _ = streamed_session("llava_onevision")
    full = session.ask(question, max_new_tokens=N, logprobs=1, seed=3, **SAMPLING)
    text = full.text
    k = next(
        i for i in range(2, len(text) - 2) if text[i : i + 2].isalnum() and text.find(text[i : i + 2]) == i
    )
    stop = text[k : k + 2]
    pieces: list[str] = []
    cut = session.ask(
        question,
        max_new_tokens=N,
        logprobs=1,
        seed=3,
        stop=[stop, "\x00never"],
        on_token=pieces.append,
        **SAMPLING,
    )
    assert cut.text == text[:k].strip()
    assert cut.stats["finish_reason"] == "stop" and full.stats["finish_reason"] == "length"
    streamed = "".join(pieces)
    assert stop not in streamed and streamed.strip() == cut.text  # nothing of the stop string was streamed
    n = cut.stats["answer_tokens"]
    assert len(cut.logprobs) == n and answer_ids(cut) == answer_ids(full)[:n]
    assert session.engine.adapter.tokenizer.decode(answer_ids(full)[:n]).find(stop) >= 0
    # a stop string that never appears changes nothing
    same = session.ask(question, max_new_tokens=N, seed=3, stop="\x00never", **SAMPLING)
    assert same.text == text


def test_stop_text_holds_back_a_possible_start():
    stops = StopText(("END", "\n\n"))
    assert stops.safe("abc EN") == 4 and stops.safe("abc E") == 4 and stops.safe("abc\n") == 3
    assert stops.safe("abc") == 3 and stops.find("a\n\nEND") == 1 and stops.find("abc") == -1


@pytest.mark.parametrize(
    "options,message",
    [
        ({"do_sample": True, "temperature": 0.0}, "temperature must be > 0 when sampling"),
        ({"do_sample": True, "temperature": -1.0}, "temperature must be > 0"),
        ({"do_sample": True, "top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ({"do_sample": True, "top_p": 1.5}, r"top_p must be in \(0, 1\]"),
        ({"do_sample": True, "top_k": -2}, "top_k must be an integer >= 0"),
        ({"repetition_penalty": 0.0}, "repetition_penalty must be > 0"),
        ({"temperature": 0.7}, "only apply when sampling; pass do_sample=True"),
        ({"do_sample": True, "seed": -1}, "seed must be an integer"),
        ({"stop": [""]}, "each stop string"),
        ({"stop": ["x"] * 9}, "at most 8 stop strings"),
        ({"do_sample": "yes"}, "do_sample must be true or false"),
        ({"temperature": float("nan"), "do_sample": True}, "temperature must be a finite number"),
        # bounded away from 0 where torch needs it (issue 34, item 9: these were a multinomial error)
        ({"do_sample": True, "temperature": 1e-300}, "temperature must be > 0 when sampling, at least 1e-05"),
        ({"do_sample": True, "temperature": 5e-324}, "at least 1e-05"),
        ({"repetition_penalty": 1e-40}, "repetition_penalty must be > 0, from 0.01 to 100"),
        ({"repetition_penalty": 1e40, "do_sample": True}, "from 0.01 to 100"),
        ({"repetition_penalty": float("inf")}, "repetition_penalty must be a finite number"),
        ({"top_q": 0.5}, "unknown generation option.*top_q.*do_sample"),
    ],
)
def test_bad_options_are_clear_errors(options, message):
    session, question, _ = streamed_session("llava_onevision")
    before = session.engine.cache.lengths()
    with pytest.raises(GenerationError, match=message):
        session.ask(question, max_new_tokens=2, **options)
    assert session.engine.cache.lengths() == before
    assert issubclass(GenerationError, InputError)


def test_choices_refuse_sampling_options():
    session, question, _ = streamed_session("llava_onevision")
    with pytest.raises(InputError, match="choices are picked by likelihood"):
        session.ask(question, choices=["a bike", "a car"], do_sample=True, seed=1)
    assert session.ask(question, choices=["a bike", "a car"], seed=1).choice in (0, 1)  # a seed alone is fine


def test_the_smallest_temperature_and_penalty_decode_without_nans():
    """At the bounds, sampling works: temperature 1e-5 draws the greedy answer (the distribution is one
    token), a penalty of 0.01 or 100 gives finite log-probabilities."""
    session, question, _ = streamed_session("llava_onevision")
    greedy = session.ask(question, max_new_tokens=N, logprobs=1)
    cold = session.ask(question, max_new_tokens=N, logprobs=1, do_sample=True, temperature=1e-5, seed=3)
    assert answer_ids(cold) == answer_ids(greedy)
    for penalty in (0.01, 100.0):
        answer = session.ask(
            question, max_new_tokens=N, logprobs=1, do_sample=True, repetition_penalty=penalty
        )
        assert all(torch.isfinite(torch.tensor(step["logprob"])) for step in answer.logprobs)
