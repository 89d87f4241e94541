"""`videokv serve` and `videokv stream`."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def add_parsers(sub: argparse._SubParsersAction, add_model_args: Callable) -> None:
    del sub, add_model_args
