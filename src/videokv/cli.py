"""`videokv ask | demo | presets | models | bench | serve | stream`: the command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from videokv.errors import VideoKVError
from videokv.presets import DEFAULT_PRESET, PRESETS

OFFLINE_CLI_NOTICE = (
    "videokv: using the offline model (Qwen2.5-Coder-0.5B-Instruct's real language weights with an "
    "untrained, random vision tower): it reads subtitles and transcripts, not pixels. "
    "Pass --model PATH for a real video-LLM checkpoint."
)


def _add_model_args(p: argparse.ArgumentParser, answers: str = "json+logprobs") -> None:
    """The model and memory options every command shares. `answers`: the output options the command has,
    "json+logprobs" (ask, demo), "json" (stream: no per-token log-probabilities) or "" (serve: answers go
    over HTTP, where each request says what it wants)."""
    p.add_argument(
        "--model",
        default="offline",
        help="checkpoint folder or hub id (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, LLaVA-OneVision, InternVL: "
        "`videokv models`); 'offline' (default) is the offline real-weights model; 'tiny-qwen2_vl' a tiny "
        "random model",
    )
    p.add_argument(
        "--memory",
        default=DEFAULT_PRESET,
        help=f"memory preset (`videokv presets` describes them): {', '.join(PRESETS)} "
        f"(default: {DEFAULT_PRESET})",
    )
    p.add_argument(
        "--memory-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a memory parameter (repeatable), e.g. --memory-set window=4096",
    )
    p.add_argument("--fps", type=float, default=1.0, help="frames sampled per second (default: 1)")
    p.add_argument(
        "--frame-tokens",
        type=int,
        default=None,
        help="cap on visual tokens per temporal patch (2 frames) for Qwen2-VL models (default: the "
        "checkpoint's video-processor max_pixels; 16 for the offline model, whose vision tower is random)",
    )
    p.add_argument(
        "--system",
        default=None,
        help="system prompt (default: the checkpoint chat template's own; the demo uses one for subtitles)",
    )
    if "logprobs" in answers:
        p.add_argument(
            "--logprobs",
            type=int,
            default=0,
            metavar="N",
            help="with --json: per answer token, its log-probability and the N most likely alternatives",
        )
    p.add_argument(
        "--chunk-frames", type=int, default=8, help="frames per forward during ingest (default: 8)"
    )
    p.add_argument("--max-new-tokens", type=int, default=48, help="answer length limit (default: 48)")
    p.add_argument("--device", default=None, help="torch device, e.g. cuda (default: CPU)")
    if "json" in answers:
        p.add_argument("--json", action="store_true", help="print one JSON object per question on stdout")


def _add_generation_args(p: argparse.ArgumentParser) -> None:
    """Decoding options (videokv.GenerationOptions; transformers' names). Default: greedy."""
    g = p.add_argument_group("decoding (default: greedy; transformers' logits processors)")
    g.add_argument("--do-sample", action="store_true", help="sample instead of taking the most likely token")
    g.add_argument("--temperature", type=float, default=1.0, help="with --do-sample: >= 1e-5 (default: 1.0)")
    g.add_argument("--top-k", type=int, default=0, help="with --do-sample: keep the k most likely (0: off)")
    g.add_argument(
        "--top-p", type=float, default=1.0, help="with --do-sample: nucleus mass in (0, 1] (1: off)"
    )
    g.add_argument(
        "--repetition-penalty",
        type=float,
        default=1.0,
        help="0.01 to 100; > 1 discourages repeats (default: 1.0, off)",
    )
    g.add_argument("--seed", type=int, default=None, help="the sampler's seed (default: a fresh one)")
    g.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="TEXT",
        help="end the answer before this text (repeatable; not part of the answer)",
    )


def _generation(args: argparse.Namespace):
    from videokv.generation import GenerationOptions

    return GenerationOptions(
        do_sample=args.do_sample,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        stop=tuple(args.stop),
    )


def add_transcribe_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--transcribe",
        nargs="?",
        const="auto",
        default=None,
        metavar="LANG",
        help="transcribe the audio track (faster-whisper, Whisper base) into timed text that is memory like "
        "subtitles; LANG sets the language, e.g. en (default: detected)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="videokv", description="Long-term KV memory for video question answering."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    ask = sub.add_parser("ask", help="ingest a video once and answer one or more questions about it")
    ask.add_argument("video", help="video file (any format FFmpeg reads)")
    ask.add_argument("questions", nargs="+", metavar="QUESTION")
    ask.add_argument("--subtitles", help="SRT or WebVTT file of timed text, interleaved with the frames")
    add_transcribe_arg(ask)
    ask.add_argument(
        "--choices",
        nargs="+",
        metavar="CHOICE",
        help="multiple choice, for every question: answer freely, and pick the option that answer names, "
        "else the most likely option (every option's score is shown)",
    )
    _add_model_args(ask)
    _add_generation_args(ask)

    demo = sub.add_parser("demo", help="answer three questions about a real clip with the offline model")
    demo.add_argument(
        "--out",
        default=None,
        help="folder for the demo's subtitle file, kept after the demo (default: $VIDEOKV_HOME/demo, i.e. "
        "~/.cache/videokv/demo)",
    )
    _add_model_args(demo, answers="json")

    sub.add_parser("presets", help="list the memory presets and their sources")
    models = sub.add_parser("models", help="list the supported model families and what is verified for each")
    models.add_argument("--json", action="store_true", help="one JSON object per model type")

    # commands that live beside what they drive; each sets `func` on its parser
    from videokv.bench.cli import add_parser as add_bench_parser
    from videokv.server.cli import add_parsers as add_server_parsers

    add_bench_parser(sub, _add_model_args)
    add_server_parsers(sub, _add_model_args)
    return parser


def _open_session(args: argparse.Namespace, system: str | None = None):
    from videokv.api import VideoQA

    if args.model == "offline" and not args.json:
        print(OFFLINE_CLI_NOTICE, file=sys.stderr)
    if args.json:  # keep stderr quiet too: no weight-loading bars
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    frame_tokens = args.frame_tokens or (16 if args.model == "offline" else None)
    qa = VideoQA.from_pretrained(
        args.model,
        device=args.device,
        memory=args.memory,
        memory_set=args.memory_set,
        frame_tokens=frame_tokens,
        system=system if system is not None else args.system,
    )
    return qa.session(fps=args.fps)


EVIDENCE_LABELS = {"frame": "frames", "text": "text", "frame+text": "frames and text"}


def evidence_lines(evidence: list) -> list[str]:
    """Every evidence span of an answer, one line per kind: `evidence, frames (3): 0.0-1.0s, ...`,
    `evidence, text (1): 2.5-3.0s` (`frames and text`: a stretch of the stream where both were attended,
    as the `full` and `window` memories report it); a level other than full (e.g. x2l's pooled H) follows
    its span."""
    if not evidence:
        return ["evidence: none"]
    kinds = sorted({e.kind for e in evidence}, key=lambda k: (list(EVIDENCE_LABELS) + [k]).index(k))
    lines = []
    for kind in kinds:
        spans = [e for e in evidence if e.kind == kind]
        items = ", ".join(
            f"{e.t0:.1f}-{e.t1:.1f}s" + ("" if e.level == "full" else f" ({e.level})") for e in spans
        )
        lines.append(f"evidence, {EVIDENCE_LABELS.get(kind, kind)} ({len(spans)}): {items}")
    return lines


def choice_line(answer, choices: list[str]) -> str:
    """A multiple-choice answer's options with their scores (mean log-probability per token), the chosen
    one marked, and how it was chosen."""
    if answer.choice is None or not answer.choice_scores:
        return ""
    options = list(choices)
    parts = []
    for i, score in enumerate(answer.choice_scores):
        name = options[i] if i < len(options) else f"option {i + 1}"
        parts.append(f"{'*' if i == answer.choice else ''}{name} {score:.2f}")
    how = answer.stats.get("choice_by", "likelihood")
    free = answer.stats.get("free_answer")
    said = f"; the free answer was {free!r}" if free is not None else ""
    return f"choices (mean log-prob per token; * chosen, by {how}{said}): " + ", ".join(parts)


def _print_answer(
    answer, as_json: bool, correct: bool | None = None, choices: list[str] | None = None
) -> None:
    if as_json:
        d = answer.to_dict()
        if correct is not None:
            d["correct"] = correct
        print(json.dumps(d), flush=True)
        return
    from videokv.api import kv_memory, kv_text

    mark = "" if correct is None else ("  [correct]" if correct else "  [WRONG]")
    print(f"Q: {answer.question}\nA: {answer.text}{mark}")
    if choices:
        print(f"   {choice_line(answer, choices)}")
    for line in evidence_lines(answer.evidence):
        print(f"   {line}")
    s = answer.stats
    print(
        f"   memory: {s['memory']} | {s['memory_tokens']} tokens | {kv_text(kv_memory(s))} | "
        f"{s['blocks']} blocks, {s['stream_seconds']:.1f}s of stream | prefill {s['prefill_s']:.2f}s, "
        f"decode {s['decode_s']:.2f}s ({s['answer_tokens']} tokens)\n",
        flush=True,
    )


def check_ask_args(args: argparse.Namespace):
    """Every check of `ask` that does not need the stream, before the model loads and anything is ingested:
    the questions, choices and decoding options, fps, the video, its subtitles and audio. Returns the
    decoding options."""
    from videokv.api import check_question
    from videokv.errors import InputError
    from videokv.generation import GREEDY

    generation = _generation(args)
    if args.choices and generation.replace(seed=None) != GREEDY:
        raise InputError(
            "--choices are picked by likelihood: drop --do-sample, --repetition-penalty and --stop"
        )
    if args.choices is not None and len(args.choices) < 2:
        raise InputError(
            f"--choices needs at least two options; got {len(args.choices)} ({' '.join(args.choices)!r}): "
            "give every option, e.g. --choices yes no"
        )
    if args.logprobs and not args.json:
        raise InputError("--logprobs N adds per-token log-probabilities to the JSON output: add --json")
    if args.logprobs and args.choices:
        raise InputError(
            "--choices are scored, not generated, so --logprobs does not apply: each option's score is in "
            "the output (choice_scores with --json)"
        )
    for q in args.questions:
        check_question(q, args.choices, args.max_new_tokens, args.logprobs)
    check_stream_args(args)
    _check_media(args.video, args.subtitles, args.transcribe)
    return generation


def check_stream_args(args: argparse.Namespace) -> None:
    """The ingest options every command shares: fps and frames per forward."""
    from videokv.errors import InputError

    if not args.fps > 0:
        raise InputError(f"--fps must be > 0; got {args.fps}")
    if args.chunk_frames < 1:
        raise InputError(f"--chunk-frames must be >= 1; got {args.chunk_frames}")
    if args.frame_tokens is not None and args.frame_tokens < 1:
        raise InputError(f"--frame-tokens must be >= 1; got {args.frame_tokens}")


def _check_media(video: str, subtitles: str | None, transcribe: str | None) -> None:
    """The video is one FFmpeg reads, the subtitles parse, the audio track exists when it is transcribed."""
    from videokv.video.decode import probe
    from videokv.video.subtitles import load_subtitles

    probe(video)
    if subtitles is not None:
        load_subtitles(subtitles)
    if transcribe:
        from videokv.video.transcribe import parse_transcribe, require_audio

        parse_transcribe(transcribe)
        require_audio(video)


def cmd_ask(args: argparse.Namespace) -> int:
    generation = check_ask_args(args)  # bad input fails before the model loads and the video is ingested
    session = _open_session(args)
    session.add_video(
        args.video,
        subtitles=args.subtitles,
        chunk_frames=args.chunk_frames,
        progress=not args.json,
        transcribe=args.transcribe or False,
    )
    for q in args.questions:
        answer = session.ask(
            q,
            choices=args.choices,
            max_new_tokens=args.max_new_tokens,
            logprobs=args.logprobs,
            generation=None if args.choices else generation,
        )
        _print_answer(answer, args.json, choices=args.choices)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from videokv.api import STREAM_SYSTEM
    from videokv.demo import DEMO_QUESTIONS, is_correct, prepare_demo

    video, srt = prepare_demo(args.out)  # kept after the demo: the path printed below stays valid
    if not args.json:
        print(
            f"videokv demo: {video} (real street footage, 10 s) with subtitles {srt}",
            file=sys.stderr,
        )
    session = _open_session(args, system=args.system or STREAM_SYSTEM)
    session.add_video(video, subtitles=srt, chunk_frames=args.chunk_frames, progress=not args.json)
    n_ok = 0
    for q in DEMO_QUESTIONS:
        answer = session.ask(q.question, max_new_tokens=args.max_new_tokens)
        ok = is_correct(answer.text, q)
        n_ok += ok
        _print_answer(answer, args.json, correct=ok)
    if not args.json:
        print(f"{n_ok}/{len(DEMO_QUESTIONS)} answers correct.")
    return 0 if n_ok == len(DEMO_QUESTIONS) else 1


def cmd_presets(args: argparse.Namespace) -> int:
    width = max(len(n) for n in PRESETS)
    for name, preset in PRESETS.items():
        print(f"{name:<{width}}  {preset.summary}\n{'':<{width}}  source: {preset.source}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from videokv import VideoQA

    rows = VideoQA.supported_models()
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    width = max(len(r["model_type"]) for r in rows)
    for r in rows:
        print(f"{r['model_type']:<{width}}  {r['class']} ({r['positions']} positions)")
        print(f"{'':<{width}}  verified: {r['verified']}")
    print("Adding a family: docs/ADAPTERS.md")
    return 0


def one_line(message: str) -> str:
    """An error message on one line (a loader's message may span several)."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"ask": cmd_ask, "demo": cmd_demo, "presets": cmd_presets, "models": cmd_models}
    handler = commands.get(args.command) or args.func
    try:
        return handler(args)
    except VideoKVError as e:
        print(f"videokv: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("videokv: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
