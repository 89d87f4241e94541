"""Converters from the official annotation formats of long-video QA benchmarks to the dataset format.

Every converter has the signature::

    convert_NAME(annotation, video_root, subtitles_root=None, *, allow_missing=False, work_dir=None)
        -> Converted  (a list[VideoEntry], with .missing video ids and .skipped records)

and raises :class:`~videokv.bench.dataset.DatasetError` naming the annotation file and the record it cannot
read. Videos whose file is missing are an error listing them, unless ``allow_missing=True`` (then they are
left out and listed in ``Converted.missing``). Offline benchmarks (no stream time per question) get
``start_time`` 0 and ``end_time`` = the video's duration (from the annotation, else probed from the file).
Each module's docstring documents its source format and mapping; see also docs/DATASET.md.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from videokv.bench.convert.common import Converted, Skipped
from videokv.bench.convert.egoschema import convert_egoschema
from videokv.bench.convert.longvideobench import convert_longvideobench
from videokv.bench.convert.mlvu import convert_mlvu
from videokv.bench.convert.rvs import convert_rvs
from videokv.bench.convert.streamingbench import convert_streamingbench
from videokv.bench.convert.videomme import convert_videomme
from videokv.bench.convert.vnbench import convert_vnbench
from videokv.bench.dataset import DatasetError

__all__ = [
    "CONVERTERS",
    "Converted",
    "Skipped",
    "convert",
    "convert_egoschema",
    "convert_longvideobench",
    "convert_mlvu",
    "convert_rvs",
    "convert_streamingbench",
    "convert_videomme",
    "convert_vnbench",
]

#: Benchmark name -> converter.
CONVERTERS: dict[str, Callable[..., Converted]] = {
    "mlvu": convert_mlvu,
    "egoschema": convert_egoschema,
    "videomme": convert_videomme,
    "longvideobench": convert_longvideobench,
    "vnbench": convert_vnbench,
    "rvs": convert_rvs,
    "streamingbench": convert_streamingbench,
}


def convert(
    name: str,
    annotation: str | Path,
    video_root: str | Path,
    subtitles_root: str | Path | None = None,
    *,
    allow_missing: bool = False,
    work_dir: str | Path | None = None,
) -> Converted:
    """Run the converter registered as ``name`` (see :data:`CONVERTERS`).

    Raises:
        DatasetError: an unknown name, or the converter's own errors.
    """
    if name not in CONVERTERS:
        raise DatasetError(f"unknown benchmark {name!r}; choose one of: {', '.join(CONVERTERS)}")
    return CONVERTERS[name](
        Path(annotation),
        Path(video_root),
        Path(subtitles_root) if subtitles_root is not None else None,
        allow_missing=allow_missing,
        work_dir=Path(work_dir) if work_dir is not None else None,
    )
