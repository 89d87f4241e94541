"""Shared helpers of the speed and memory benchmarks: the machine, timing, models, and output.

Every benchmark measures its cases side by side in one process: `interleaved` runs them round-robin (the
order rotating every round) so that load from other processes on a shared machine falls on every case
alike, and the reports give medians and ratios rather than single timings.

Models (`--model`):
- "offline" (default): the offline real-weights Qwen2.5-0.5B language model in a Qwen2-VL shell;
- "tiny-qwen2_vl", "tiny-qwen2_5_vl", "tiny-llava_onevision": tiny random models (smoke runs, `--quick`);
- "random:qwen2_5_vl-7b", "random:llava_onevision-7b": the published 7B *architectures* with random
  weights (timing needs no trained weights); only with `--device cuda`;
- "random-scaled:qwen2_5_vl-7b", "random-scaled:llava_onevision-7b": the same classes and structure
  scaled down to about 20M parameters, so the code path runs anywhere (the quick tests use them);
- a local checkpoint folder.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from videokv.errors import InputError

DEFAULT_MODEL = "offline"
QUICK_MODEL = "tiny-qwen2_vl"
RANDOM_ARCHS = ("qwen2_5_vl-7b", "llava_onevision-7b")


# ---- command line ------------------------------------------------------------------------------------
def base_parser(description: str, default_model: str = DEFAULT_MODEL) -> argparse.ArgumentParser:
    """The options every benchmark shares: --model, --device, --dtype, --out, --quick, --repeats."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--model",
        default=None,
        help=f"'offline' (default; '{QUICK_MODEL}' with --quick), 'tiny-<family>', "
        f"'random:<arch>' (cuda only) or 'random-scaled:<arch>' with <arch> in {', '.join(RANDOM_ARCHS)}, "
        "or a checkpoint folder",
    )
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="model dtype (default: float32 on cpu, bfloat16 for random:<arch> on cuda)",
    )
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON to this file")
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run on a tiny model")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds per case (medians are reported)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a shared machine, multi-threaded kernels stall whenever "
        "another process holds a core; 0 keeps torch's default)",
    )
    p.set_defaults(default_model=default_model)
    return p


_LOAD_AT_START: list[float] = []


def resolve_args(args: argparse.Namespace, repeats: int, quick_repeats: int = 2) -> argparse.Namespace:
    """Fill the defaults that depend on --quick; check --device; note the machine's load."""
    _LOAD_AT_START[:] = [round(x, 2) for x in os.getloadavg()]
    if args.model is None:
        args.model = QUICK_MODEL if args.quick else args.default_model
    if args.repeats is None:
        args.repeats = quick_repeats if args.quick else repeats
    if args.threads < 0:
        raise InputError(f"--threads must be >= 0; got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.repeats < 1:
        raise InputError(f"--repeats must be >= 1; got {args.repeats}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was given but torch sees no CUDA device; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"--device must be cpu or cuda; got {args.device!r}")
    return args


# ---- the machine -------------------------------------------------------------------------------------
def machine(device: str = "cpu") -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    info: dict[str, Any] = {
        "date": _dt.date.today().isoformat(),
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ram_gb": mem_gb,
        "load_average_at_start": list(_LOAD_AT_START) or None,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover
        pass
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return info


def peak_rss_bytes() -> int:
    """The process's peak resident memory so far (Linux reports KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


# ---- timing ------------------------------------------------------------------------------------------
def sync(device: str | torch.device) -> None:
    """Wait for queued accelerator work (no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str | torch.device = "cpu") -> tuple[float, Any]:
    """(seconds, result) of one call, synchronised with the accelerator before and after."""
    sync(device)
    t0 = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - t0, result


def interleaved(
    cases: dict[str, Callable[[], Any]],
    repeats: int,
    warmup: int = 1,
    device: str | torch.device = "cpu",
    on_result: Callable[[str, int, float, Any], None] | None = None,
) -> dict[str, list[float]]:
    """Run every case `warmup` untimed rounds, then `repeats` timed rounds, round-robin.

    The order rotates every round (A B C, B C A, C A B, ...) so that no case always runs first or right
    after another one. A case returning a float reports that many seconds itself (for cases that time
    only part of their work); otherwise the wall time of the call is used. `on_result(name, round,
    seconds, result)` sees every timed result. Returns, per case, the seconds of each round in round order.
    """
    names = list(cases)
    for _ in range(warmup):
        for name in names:
            cases[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            seconds, result = timed(cases[name], device)
            if isinstance(result, float):
                seconds = result
            times[name].append(seconds)
            if on_result is not None:
                on_result(name, r, seconds, result)
    return times


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def summary(xs: Sequence[float]) -> dict[str, float]:
    """median, min, max and the number of samples."""
    return {"median": median(xs), "min": float(min(xs)), "max": float(max(xs)), "n": len(xs)}


def paired_ratio(num: Sequence[float], den: Sequence[float]) -> float:
    """The median over rounds of num[i] / den[i]: each round's cases ran back to back, so their ratio
    shares that round's machine load."""
    return median([a / b for a, b in zip(num, den)])


# ---- models ------------------------------------------------------------------------------------------
def _dtype(name: str | None, default: torch.dtype) -> torch.dtype:
    return default if name is None else getattr(torch, name)


def load_qa(args: argparse.Namespace, frame_tokens: int = 64, memory: str = "full"):
    """A `videokv.VideoQA` for --model / --device / --dtype (see the module docstring for the names)."""
    from videokv import VideoQA

    device = args.device
    name = args.model
    if name.startswith(("random:", "random-scaled:")):
        kind, _, arch = name.partition(":")
        scaled = kind == "random-scaled"
        if not scaled and torch.device(device).type != "cuda":
            raise InputError(
                f"--model {name} builds a 7B-parameter model with random weights: it needs --device cuda. "
                f"On the CPU use 'offline', or 'random-scaled:{arch}' for the scaled-down architecture."
            )
        default = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
        model, tokenizer = random_model(arch, scaled=scaled, dtype=_dtype(args.dtype, default), device=device)
        return VideoQA.from_model(model, tokenizer, memory=memory, frame_tokens=frame_tokens)
    dtype = _dtype(args.dtype, torch.float32)
    return VideoQA.from_pretrained(name, dtype=dtype, device=device, memory=memory, frame_tokens=frame_tokens)


# Published dimensions (the checkpoints' config.json): Qwen/Qwen2.5-VL-7B-Instruct and
# llava-hf/llava-onevision-qwen2-7b-ov-hf. Only the shapes matter for timing.
QWEN25_VL_7B = {
    "text": dict(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        max_position_embeddings=128000,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
        bos_token_id=151643,
        eos_token_id=151645,
        tie_word_embeddings=False,
    ),
    "vision": dict(
        depth=32,
        hidden_size=1280,
        intermediate_size=3420,
        num_heads=16,
        out_hidden_size=3584,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[7, 15, 23, 31],
        tokens_per_second=2,
        hidden_act="silu",
        in_channels=3,
    ),
    "ids": dict(
        image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653
    ),
}
LLAVA_OV_7B = {
    "text": dict(
        model_type="qwen2",
        vocab_size=152128,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        bos_token_id=151643,
        eos_token_id=151645,
        tie_word_embeddings=False,
    ),
    "vision": dict(
        model_type="siglip_vision_model",
        hidden_size=1152,
        intermediate_size=4304,
        num_hidden_layers=26,
        num_attention_heads=16,
        image_size=384,
        patch_size=14,
    ),
    "ids": dict(image_token_index=151646, video_token_index=151647),
}

# the scaled-down variants: same classes, same structure (GQA ratio, M-RoPE sections, windowed vision
# blocks), about 20M parameters (most of them the published vocabulary's embeddings)
_SCALED_TEXT = dict(
    vocab_size=152064,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)


def random_model(arch: str, scaled: bool = False, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """(model, tokenizer): the Qwen2.5-VL-7B or LLaVA-OneVision-7B architecture with random weights.

    `scaled` keeps the classes and structure but shrinks every width and depth (for runs without a GPU).
    The tokenizer is the tiny in-code one: token counts of text differ from the real tokenizer's, frames
    (which dominate a video stream) do not.
    """
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
    )

    from videokv.models.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    if arch not in RANDOM_ARCHS:
        raise InputError(f"unknown architecture {arch!r}; choose one of {', '.join(RANDOM_ARCHS)}")
    torch.manual_seed(0)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if arch == "qwen2_5_vl-7b":
        text = dict(QWEN25_VL_7B["text"], eos_token_id=eos)
        vision = dict(QWEN25_VL_7B["vision"])
        if scaled:
            text.update(
                _SCALED_TEXT,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
            )
            vision.update(
                depth=4,
                hidden_size=32,
                intermediate_size=64,
                num_heads=2,
                out_hidden_size=64,
                fullatt_block_indexes=[1, 3],
            )
        config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **QWEN25_VL_7B["ids"])
        cls = Qwen2_5_VLForConditionalGeneration
    else:
        text = dict(LLAVA_OV_7B["text"], eos_token_id=eos)
        vision = dict(LLAVA_OV_7B["vision"])
        if scaled:
            text.update(_SCALED_TEXT)
            vision.update(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                image_size=56,
            )
        config = LlavaOnevisionConfig(
            text_config=text,
            vision_config=vision,
            vision_feature_select_strategy="full",
            vision_feature_layer=-1,
            **LLAVA_OV_7B["ids"],
        )
        cls = LlavaOnevisionForConditionalGeneration
    with torch.device(device):
        model = cls._from_config(config, dtype=dtype)
    # the real checkpoint's chat template and video-processor settings (frames at the vision tower's size)
    from videokv.models.checkpoints import CHAT_TEMPLATES, VIDEO_PROCESSOR_CONFIGS

    family = "qwen2_5_vl" if arch == "qwen2_5_vl-7b" else "llava_onevision"
    tokenizer.chat_template = CHAT_TEMPLATES[family]
    processor = dict(VIDEO_PROCESSOR_CONFIGS[family])
    if family == "llava_onevision":
        side = int(config.vision_config.image_size)
        processor["size"] = {"height": side, "width": side}
    tokenizer.videokv_video_processor = processor
    return model.eval(), tokenizer


def frame_side(frame_tokens: int) -> int:
    """The side of a square frame that a Qwen2-VL-family adapter turns into `frame_tokens` visual tokens
    (28 pixels per merged token)."""
    side = max(1, round(frame_tokens**0.5))
    return 28 * side


def random_frames(n: int, side: int, seed: int) -> np.ndarray:
    """n random RGB uint8 frames [n, side, side, 3] (the content does not change any timing)."""
    return np.random.default_rng(seed).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


SUBTITLE_LINES = [
    "The traffic light on the corner turns green again.",
    "A cyclist in a grey jacket passes the bakery.",
    "Someone mentions that the bus is running late today.",
    "Two people argue quietly about where to park.",
    "The radio in the shop plays an old song.",
    "A delivery van stops in front of the pharmacy.",
    "Clouds gather over the bridge to the east.",
    "A child points at a pigeon on the fountain.",
]


def subtitle(i: int) -> str:
    """An ordinary distractor subtitle line (deterministic in i)."""
    return f"{SUBTITLE_LINES[i % len(SUBTITLE_LINES)]} ({i})"


# ---- output ------------------------------------------------------------------------------------------
def fmt(x: float | int | None, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, int):
        return str(x)
    if x != 0 and abs(x) < 10 ** (-digits):
        return f"{x:.2e}"
    return f"{x:.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


def command_line() -> str:
    return "python " + " ".join([sys.argv[0], *sys.argv[1:]]) if sys.argv else ""


def finish(args: argparse.Namespace, name: str, results: dict[str, Any], table: str) -> dict[str, Any]:
    """Print the table, write the JSON (with the machine and the arguments); return the payload."""
    payload = {
        "benchmark": name,
        "machine": machine(args.device),
        "args": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "default_model"
        },
        "peak_rss_bytes": peak_rss_bytes(),
        "results": results,
        "table": table,
    }
    print(table, flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(args.out.suffix + ".tmp")
        tmp.write_text(json.dumps(payload, indent=1, default=_json_default) + "\n")
        os.replace(tmp, args.out)
    return payload


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def log(msg: str) -> None:
    """Progress on stderr (stdout holds the table)."""
    print(msg, file=sys.stderr, flush=True)
