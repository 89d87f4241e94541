"""`videokv bench convert | make-needles | run | report`."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def add_parser(sub: argparse._SubParsersAction, add_model_args: Callable) -> None:
    bench = sub.add_parser("bench", help="quality benchmarks: datasets, needle streams, runs and reports")
    bsub = bench.add_subparsers(dest="bench_command", required=True)
    del bsub, add_model_args
