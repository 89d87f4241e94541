"""`videokv bench convert | make-needles | lmms-task | run | report`."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable

from videokv.presets import PRESETS


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _minutes(text: str) -> list[float]:
    try:
        values = [float(t) for t in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated minutes such as 1,5,30; got {text!r}"
        ) from None
    if not values or any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"minutes must be positive numbers; got {text!r}")
    return values


def _tasks(text: str) -> list[str]:
    from videokv.bench.tasks import FAMILIES

    values = _csv(text)
    unknown = [t for t in values if t not in FAMILIES]
    if not values or unknown:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated task families from {','.join(FAMILIES)}; got {text!r}"
        )
    return values


def add_parser(sub: argparse._SubParsersAction, add_model_args: Callable) -> None:
    bench = sub.add_parser("bench", help="quality benchmarks: datasets, needle streams, runs and reports")
    bsub = bench.add_subparsers(dest="bench_command", required=True)
    try:
        from videokv.bench.convert.cli import add_convert_parser
    except ImportError:  # pragma: no cover - converters not installed in this build
        pass
    else:
        add_convert_parser(bsub)

    needles = bsub.add_parser(
        "make-needles", help="generate long needle streams (real clips, subtitles with planted facts)"
    )
    needles.add_argument("--out", required=True, help="folder for the videos, subtitles and dataset JSON")
    needles.add_argument(
        "--minutes", type=_minutes, default=[1.0, 5.0, 30.0, 60.0], help="stream lengths (default: 1,5,30,60)"
    )
    needles.add_argument("--questions", type=int, default=8, help="questions per stream (default: 8)")
    needles.add_argument("--seed", type=int, default=0)
    needles.add_argument("--name", default="needles", help="dataset name (default: needles)")
    needles.add_argument(
        "--tasks",
        type=_tasks,
        default=["retrieval"],
        metavar="FAMILIES",
        help="comma-separated task families, dealt to the questions in turn (default: retrieval): "
        "retrieval (one planted fact), ordering (which of 3-4 events came first / last, in what order), "
        "counting (how many times an event happened, 2-9 times over the stream), temporal (what happened "
        "just before / after an event, at about what time), multihop (a fact that needs two lines: "
        "'The florist is called Aisha.' + 'Aisha works at the harbour.'); e.g. "
        "--tasks retrieval,ordering,counting,temporal,multihop",
    )
    needles.add_argument(
        "--speech",
        action="store_true",
        help="speak the lines (espeak-ng narration muxed into the videos) instead of writing subtitles; "
        "run it with `bench run --transcribe en`",
    )
    needles.set_defaults(func=cmd_make_needles)

    lmms = bsub.add_parser(
        "lmms-task", help="write lmms-eval tasks over a dataset (for `lmms-eval --model videokv`)"
    )
    lmms.add_argument("dataset", help="dataset JSON (docs/DATASET.md)")
    lmms.add_argument("--out", required=True, help="folder for the task YAMLs, utils.py and the data")
    lmms.add_argument("--name", default="videokv_needles", help="task name (default: videokv_needles)")
    lmms.set_defaults(func=cmd_lmms_task)

    run = bsub.add_parser("run", help="run memory presets over a dataset (resumable)")
    run.add_argument("dataset", help="dataset JSON (docs/DATASET.md)")
    run.add_argument(
        "--memory",
        type=_csv,
        default=list(PRESETS),
        help=f"comma-separated presets (default: {','.join(PRESETS)})",
    )
    run.add_argument("--out", required=True, help="results folder (a later run into it resumes)")
    run.add_argument("--model", default="offline", help="model (default: the offline real-weights model)")
    run.add_argument("--fps", type=float, default=0.5, help="frames sampled per second (default: 0.5)")
    run.add_argument(
        "--frame-tokens",
        type=int,
        default=16,
        help="cap on visual tokens per temporal patch (2 frames) for Qwen2-VL-family models, as in `videokv "
        "ask` (default: 16 for every model; `ask` keeps a checkpoint's own budget unless given)",
    )
    run.add_argument("--chunk-frames", type=int, default=8)
    run.add_argument("--max-new-tokens", type=int, default=32)
    run.add_argument("--device", default=None)
    run.add_argument("--memory-set", action="append", default=[], metavar="KEY=VALUE")
    run.add_argument("--videos", type=_csv, default=None, help="only these video ids")
    run.add_argument(
        "--evidence-kind",
        default=None,
        help="count evidence recall over blocks of this kind only (e.g. text for subtitle needles)",
    )
    run.add_argument(
        "--transcribe",
        nargs="?",
        const="auto",
        default=None,
        metavar="LANG",
        help="transcribe each video's audio into timed text (for `make-needles --speech` streams)",
    )
    run.set_defaults(func=cmd_run)

    report = bsub.add_parser("report", help="Markdown table and plots of a run folder")
    report.add_argument("folder")
    report.add_argument(
        "--docs",
        default="docs/reports",
        help="output folder (default: docs/reports, beside the committed reports)",
    )
    report.add_argument("--name", default=None, help="file name stem (default: the run folder's name)")
    report.add_argument(
        "--force",
        action="store_true",
        help="overwrite the report's files if they exist (without it, an existing one is an error)",
    )
    report.set_defaults(func=cmd_report)
    del add_model_args


def cmd_make_needles(args: argparse.Namespace) -> int:
    from videokv.bench.needles import make_needles

    path = make_needles(
        args.out,
        args.minutes,
        questions=args.questions,
        seed=args.seed,
        name=args.name,
        speech=args.speech,
        tasks=args.tasks,
    )
    print(path)
    return 0


def cmd_lmms_task(args: argparse.Namespace) -> int:
    from videokv.integrations.lmms_tasks import write_lmms_tasks

    for path in write_lmms_tasks(args.dataset, args.out, args.name):
        print(path)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from videokv.bench.runner import RunSettings, run_benchmark

    settings = RunSettings(
        dataset=args.dataset,
        model=args.model,
        fps=args.fps,
        frame_tokens=args.frame_tokens,
        chunk_frames=args.chunk_frames,
        max_new_tokens=args.max_new_tokens,
        device=args.device,
        memory_set=args.memory_set,
        evidence_kind=args.evidence_kind,
        transcribe=args.transcribe,
    )
    command = "videokv " + shlex.join(sys.argv[1:]) if sys.argv and "videokv" in sys.argv[0] else None
    results = run_benchmark(
        args.dataset, args.memory, args.out, settings, videos=args.videos, command=command
    )
    for preset, records in results.items():
        answered = [r for r in records if "skipped" not in r]
        acc = sum(r["correct"] for r in answered) / len(answered) if answered else float("nan")
        skipped = len(records) - len(answered)
        print(f"{preset}: {len(answered)} answered, accuracy {100 * acc:.1f}%, {skipped} skipped")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from videokv.bench.report import write_report

    for path in write_report(args.folder, args.docs, args.name, force=args.force):
        print(path)
    return 0
