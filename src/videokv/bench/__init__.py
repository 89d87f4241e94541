"""Benchmarks of answer quality: the dataset format, converters, needle streams, the runner and the report."""

from videokv.bench.dataset import (
    TASKS,
    Conversation,
    DatasetError,
    VideoEntry,
    dump_dataset,
    load_dataset,
    normalize_answer,
)

__all__ = [
    "TASKS",
    "Conversation",
    "DatasetError",
    "VideoEntry",
    "dump_dataset",
    "load_dataset",
    "normalize_answer",
]
