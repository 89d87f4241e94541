"""Engine overhead: ingest through videokv vs a bare transformers forward over exactly the same tokens.

The stream is the same for every path: random frames in chunks (`--chunk-frames` per `add_frames` call)
with a subtitle line after each chunk (one `add_text` call). The paths:

- `bare`: what a plain transformers user would run. The same embeddings and position ids (the adapter's
  `frame_pieces` / `text_piece`: transformers' image processor and vision tower, the model's embedding),
  one language-model forward per `add_frames` / `add_text` call over the same chunk, a plain
  `DynamicCache`, the model's own `sdpa` attention.
- `full`: `Session.add_frames` / `Session.add_text` with the `full` preset (videokv's cache, its attention
  function, the transaction around every ingest, the block bookkeeping). Target: <= 1.05x `bare`.
- the memory presets (`--presets`, default `rekv`): the same calls; these do a different computation
  (memory units prefilled against a window, blocks stored and indexed), so their ratio is their cost
  relative to full-context ingest, not an overhead.

The header prompt is prefilled before the clock starts on every path. After each `full` run the script
checks that its cache holds the same keys as the bare run's (same tokens, same positions).

    python benchmarks/engine_overhead.py                       # offline 0.5B model, CPU
    python benchmarks/engine_overhead.py --quick               # tiny model, seconds
    python benchmarks/engine_overhead.py --model random:qwen2_5_vl-7b --device cuda
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import DynamicCache

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

from videokv.engine import format_event  # noqa: E402
from videokv.errors import InputError  # noqa: E402
from videokv.qa import prompt_layout  # noqa: E402
from videokv.video.subtitles import events_from_pairs  # noqa: E402


@dataclass(frozen=True)
class Step:
    """One ingest call: a chunk of frames (with their times) or one subtitle line at time t."""

    frames: np.ndarray | None = None
    times: np.ndarray | None = None
    text: str = ""
    t: float = 0.0


def make_stream(n_chunks: int, chunk_frames: int, side: int, fps: float, seed: int) -> list[Step]:
    steps = []
    for c in range(n_chunks):
        times = (c * chunk_frames + np.arange(chunk_frames)) / fps
        steps.append(Step(frames=common.random_frames(chunk_frames, side, seed + c), times=times))
        steps.append(Step(text=common.subtitle(c), t=float(times[-1])))
    return steps


@contextlib.contextmanager
def sdpa_attention(model: torch.nn.Module) -> Iterator[None]:
    """The model's own SDPA attention inside the block (a videokv Engine switches it to its own)."""
    cfg = model.config.get_text_config()
    saved = cfg._attn_implementation
    cfg._attn_implementation = "sdpa"
    try:
        yield
    finally:
        cfg._attn_implementation = saved


class BarePath:
    """A plain transformers ingest of the stream: DynamicCache, sdpa, one forward per ingest call."""

    def __init__(self, qa, fps: float):
        self.adapter = qa.adapter
        self.system = qa.system
        self.fps = fps
        self.cache: DynamicCache | None = None

    def _forward(self, embeds: torch.Tensor, positions: torch.Tensor) -> None:
        a = self.adapter
        pos = positions.unsqueeze(1) if a.rope_rows == 3 else positions
        a.language_model(
            inputs_embeds=embeds.unsqueeze(0).to(a.dtype),
            position_ids=pos,
            use_cache=True,
            **{self.adapter.cache_argument: self.cache},
        )

    def prepare(self) -> None:
        """The header prompt, untimed (videokv prefills it when the session opens)."""
        a = self.adapter
        header = prompt_layout(a.tokenizer, a.placeholder, self.system).header
        self.video = None
        self.cache = DynamicCache(config=a.text_config)
        with sdpa_attention(a.model), torch.no_grad():
            piece = a.text_piece(header, 0, kind="prompt")
            self._forward(piece.embeds, piece.positions)
        self.cursor = a.next_cursor(piece)

    def ingest(self, steps: list[Step]) -> None:
        a = self.adapter
        with sdpa_attention(a.model), torch.no_grad():
            for step in steps:
                if step.frames is not None:  # the chunk continues the open video (videokv's layout)
                    pieces, self.video, self.cursor = a.video_pieces(
                        step.frames, step.times, 1.0 / self.fps, self.video, self.cursor
                    )
                else:  # a subtitle closes the video
                    (event,) = events_from_pairs([(step.t, step.text)])
                    pieces = []
                    if self.video is not None:
                        pieces.append(a.close_video(self.video, self.cursor))
                        self.cursor = a.next_cursor(pieces[-1])
                        self.video = None
                    pieces.append(
                        a.text_piece(format_event(event), self.cursor, "text", event.start, event.end)
                    )
                    self.cursor = a.next_cursor(pieces[-1])
                self._forward(
                    torch.cat([p.embeds for p in pieces]), torch.cat([p.positions for p in pieces], 1)
                )


def videokv_ingest(session, steps: list[Step], chunk_frames: int) -> None:
    for step in steps:
        if step.frames is not None:
            session.add_frames(step.frames, timestamps=step.times, chunk_frames=chunk_frames)
        else:
            session.add_text(step.text, t=step.t)
    session.engine.flush()  # memory presets: close the open unit (part of ingesting the stream)


def key_difference(bare: DynamicCache, session) -> float:
    """max |K_bare - K_videokv| over layers (inf if the token counts differ)."""
    worst = 0.0
    for layer, ours in zip(bare.layers, session.engine.cache.layers):
        if layer.keys.shape != ours.keys.shape:
            return float("inf")
        worst = max(worst, float((layer.keys.float() - ours.keys.float()).abs().max()))
    return worst


def main(argv: list[str] | None = None) -> dict:
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--chunks", type=int, default=None, help="chunks of frames (default 4; 2 with --quick)")
    p.add_argument("--chunk-frames", type=int, default=8, help="frames per add_frames call")
    p.add_argument("--frame-tokens", type=int, default=16, help="visual tokens per frame (Qwen2-VL family)")
    p.add_argument("--fps", type=float, default=0.5)
    p.add_argument("--presets", default="rekv", help="memory presets besides full (comma list, or '')")
    args = p.parse_args(argv)
    common.resolve_args(args, repeats=5)
    if args.chunks is None:
        args.chunks = 2 if args.quick else 4
    if args.chunks < 1 or args.chunk_frames < 1:
        raise InputError("--chunks and --chunk-frames must be >= 1")
    presets = ["full"] + [x.strip() for x in args.presets.split(",") if x.strip() and x.strip() != "full"]

    qa = common.load_qa(args, frame_tokens=args.frame_tokens)
    if args.chunk_frames % qa.adapter.frames_per_piece:
        raise InputError(
            f"--chunk-frames must be a multiple of {qa.adapter.frames_per_piece} (the model's temporal "
            f"patch), so both paths see the same tokens"
        )
    side = common.frame_side(args.frame_tokens)
    steps = make_stream(args.chunks, args.chunk_frames, side, args.fps, args.seed)
    n_frames = args.chunks * args.chunk_frames
    common.log(f"engine_overhead: {args.model}, {n_frames} frames + {args.chunks} lines, presets {presets}")

    state: dict = {"bare": None, "sessions": {}}

    def bare_case() -> float:
        bare = BarePath(qa, args.fps)
        bare.prepare()
        seconds, _ = common.timed(lambda: bare.ingest(steps), args.device)
        state["bare"] = bare
        return seconds

    def preset_case(preset: str):
        def run() -> float:
            session = qa.session(memory=preset, fps=args.fps)
            seconds, _ = common.timed(lambda: videokv_ingest(session, steps, args.chunk_frames), args.device)
            state["sessions"][preset] = session
            return seconds

        return run

    cases = {"bare": bare_case, **{name: preset_case(name) for name in presets}}
    diffs: list[float] = []

    def check(name: str, r: int, seconds: float, result) -> None:
        common.log(f"  round {r}: {name:>9} {seconds:.3f} s")
        if name == "full" and state["bare"] is not None:
            diffs.append(key_difference(state["bare"].cache, state["sessions"]["full"]))

    times = common.interleaved(cases, args.repeats, warmup=1, device=args.device, on_result=check)

    tokens = int(state["bare"].cache.get_seq_length())
    header = state["sessions"]["full"].engine.header_tokens
    stream_tokens = tokens - header
    results = {
        "stream": {
            "frames": n_frames,
            "subtitle_lines": args.chunks,
            "forwards": len(steps),
            "stream_tokens": stream_tokens,
            "tokens_per_frame": state["sessions"]["full"].engine.tokens_per_frame,
        },
        "check": {
            "same_tokens": all(d != float("inf") for d in diffs),
            "max_abs_key_diff_full_vs_bare": max(diffs) if diffs else None,
        },
        "cases": {},
    }
    rows = []
    for name in cases:
        s = common.summary(times[name])
        entry = {
            "seconds": times[name],
            **s,
            "tokens_per_s": stream_tokens / s["median"],
            "ratio_to_bare": s["median"] / common.median(times["bare"]),
            "paired_ratio_to_bare": common.paired_ratio(times[name], times["bare"]),
        }
        if name in state["sessions"]:
            st = state["sessions"][name].stats
            entry["memory_bytes"] = st.get("memory_bytes")
            entry["ingest_context_bytes"] = st.get("ingest_context_bytes")
        results["cases"][name] = entry
        rows.append(
            [
                name,
                common.fmt(s["median"]),
                common.fmt(s["min"]),
                f"{entry['tokens_per_s']:.0f}",
                common.fmt(entry["ratio_to_bare"]),
                common.fmt(entry["paired_ratio_to_bare"]),
                common.fmt((entry.get("memory_bytes") or 0) / 2**20, 1) if name != "bare" else "-",
            ]
        )
    full_ratio = results["cases"]["full"]["paired_ratio_to_bare"]
    results["target_full_le_1_05"] = full_ratio <= 1.05
    table = common.markdown_table(
        ["path", "median s", "min s", "tokens/s", "ratio to bare", "paired ratio", "KV MiB"], rows
    )
    table += (
        f"\n\n{n_frames} frames ({results['stream']['tokens_per_frame']:.0f} tokens each) + {args.chunks} "
        f"subtitle lines = {stream_tokens} stream tokens in {len(steps)} ingest calls; {args.repeats} "
        f"interleaved rounds; model {args.model} on {args.device}. full vs bare keys: max |diff| = "
        f"{common.fmt(results['check']['max_abs_key_diff_full_vs_bare'])}."
    )
    return common.finish(args, "engine_overhead", results, table)


if __name__ == "__main__":
    main()
