"""`videokv bench convert NAME ANNOTATION --videos DIR [--subtitles DIR] [--allow-missing] --out FILE`."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from videokv.bench.convert import CONVERTERS, convert
from videokv.bench.dataset import DatasetError, dump_dataset, load_dataset

#: Missing ids / skipped records printed in the summary (all of them are in the returned lists).
MAX_PRINTED = 10


def add_convert_parser(bsub: argparse._SubParsersAction) -> None:
    """Register the ``convert`` sub-command under ``videokv bench`` (``func`` = :func:`run_convert`)."""
    p = bsub.add_parser(
        "convert",
        help="convert a benchmark's official annotations to the dataset format (docs/DATASET.md)",
        description="Convert the official annotation file of a long-video QA benchmark to the videokv "
        "dataset format (docs/DATASET.md), checking that every video file is there.",
    )
    p.add_argument("name", choices=list(CONVERTERS), help="the benchmark")
    p.add_argument("annotation", help="the benchmark's annotation file (MLVU: a file or its json/ folder)")
    p.add_argument("--videos", required=True, metavar="DIR", help="folder of the benchmark's video files")
    p.add_argument("--subtitles", metavar="DIR", help="folder of subtitle files (Video-MME, LongVideoBench)")
    p.add_argument(
        "--allow-missing",
        action="store_true",
        help="leave out videos whose file is missing (listed) instead of stopping with an error",
    )
    p.add_argument("--out", required=True, metavar="FILE", help="the dataset JSON to write")
    p.add_argument(
        "--work-dir",
        metavar="DIR",
        default=None,
        help="folder for files made during conversion (LongVideoBench subtitles as SRT); "
        "default: OUT's folder/<OUT name>_files",
    )
    p.set_defaults(func=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    """Convert, write the dataset atomically, re-load it to check it, and print a summary.

    Returns:
        0 when at least one question was written, 1 when nothing could be converted.

    Raises:
        DatasetError: the annotation cannot be read, or videos are missing without ``--allow-missing``.
    """
    out = Path(args.out).expanduser()
    if not out.parent.is_dir():
        raise DatasetError(f"cannot write {str(out)!r}: folder {str(out.parent)!r} does not exist")
    work_dir = Path(args.work_dir) if getattr(args, "work_dir", None) else out.parent / f"{out.stem}_files"
    converted = convert(
        args.name,
        args.annotation,
        args.videos,
        args.subtitles,
        allow_missing=bool(args.allow_missing),
        work_dir=work_dir,
    )
    print(f"{args.name}: {len(converted)} videos, {converted.questions} questions")
    if converted.missing:
        n = len(converted.missing)
        more = f" and {n - MAX_PRINTED} more" if n > MAX_PRINTED else ""
        print(f"missing videos (left out): {n}: {', '.join(converted.missing[:MAX_PRINTED])}{more}")
    else:
        print("missing videos: 0")
    if converted.skipped:
        reasons = Counter(s.reason for s in converted.skipped)
        print(f"skipped questions: {len(converted.skipped)}")
        for reason, n in reasons.most_common():
            print(f"  {n}: {reason}")
    if not converted:
        print(f"videokv: nothing to write: no question of {args.annotation} could be converted")
        return 1
    path = dump_dataset(converted, out)
    load_dataset(path, check_files=True)
    print(f"wrote {path}")
    return 0
