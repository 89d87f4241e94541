"""Levels in their tiers: what a session keeps resident and what a question reloads, per preset.

One stream (random frames at `--frame-tokens` visual tokens each, a subtitle line every 4 frames) is ingested
once per preset; then the same questions are asked of every preset, interleaved. Reported per preset: the
resident KV bytes (the store's fastest tiers, accelerator + host, plus the ingest context) as a ratio to
`full`'s context bytes; the bytes waiting below (disk on a CPU machine); the tokens a question attends; and
the per-question retrieval time (retrieval forward, block selection, reload from the tiers and assembly:
`Answer.stats["retrieval_s"]`), median over the questions, as a ratio to `rekv` measured side by side.

Presets: `rekv` (every block resident), `x2l` (X²L's economy: the 8x-pooled H copy of every chunk resident,
the exact L copies and text in the cold lane, reloaded for the 4 chosen chunks), `x2l` with
`compress.offload_low=false` (both levels resident: videokv before levels had a place), and `videokv` (every
block in the cold lane, the retrieved ones loaded).

    python benchmarks/level_tiers.py --frames 120 --out benchmarks/results/level_tiers.json
    python benchmarks/level_tiers.py --quick
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

from videokv import Frame, TextEvent  # noqa: E402

CASES = {
    "full": ("full", []),
    "rekv": ("rekv", []),
    "x2l": ("x2l", []),
    "x2l (both levels resident)": ("x2l", ["compress.offload_low=false"]),
    "videokv": ("videokv", []),
}
QUESTIONS = [
    "What did someone say about the bus?",
    "Where did the delivery van stop?",
    "What colour was the cyclist's jacket?",
    "What was the child pointing at?",
]


def main() -> None:
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=120, help="frames in the stream (default: 120)")
    p.add_argument("--frame-tokens", type=int, default=64, help="visual tokens per frame (default: 64)")
    args = common.resolve_args(p.parse_args(), repeats=1)
    if args.quick:
        args.frames = min(args.frames, 16)
    qa = common.load_qa(args, frame_tokens=args.frame_tokens)
    frames = common.random_frames(args.frames, common.frame_side(args.frame_tokens), seed=0)
    items: list = []
    for i, f in enumerate(frames):
        items.append(Frame(2.0 * i, f))
        if i % 4 == 1:
            items.append(TextEvent(2.0 * i + 0.5, 2.0 * i + 1.5, common.subtitle(i)))
    sessions = {}
    for name, (memory, overrides) in CASES.items():
        common.log(f"ingesting {args.frames} frames into {name}")
        s = qa.session(memory=memory, memory_set=overrides or None)
        s.add_items(items)
        sessions[name] = s
    stats: dict[str, list[dict]] = {name: [] for name in CASES}

    def ask(name: str, q: str):
        def run() -> float:
            answer = sessions[name].ask(q, max_new_tokens=1)
            stats[name].append(answer.stats)
            return float(answer.stats["retrieval_s"])

        return run

    times: dict[str, list[float]] = {name: [] for name in CASES}
    for q in QUESTIONS * args.repeats:
        got = common.interleaved({name: ask(name, q) for name in CASES}, repeats=1, warmup=0)
        for name, t in got.items():
            times[name] += t
    full_bytes = stats["full"][-1]["memory_bytes"]
    rekv_t = times["rekv"]
    results, rows = {}, []
    for name in CASES:
        last = stats[name][-1]
        resident = last["memory_bytes"] + last.get("ingest_context_bytes", 0)
        below = last.get("offloaded_bytes", 0)
        ratio = common.paired_ratio(times[name], rekv_t)
        results[name] = {
            "resident_bytes": resident,
            "offloaded_bytes": below,
            "context_tokens": last["context_tokens"],
            "retrieval_s": common.summary(times[name]),
            "retrieval_vs_rekv": ratio,
        }
        rows.append(
            [
                f"`{name}`",
                f"{resident / 2**20:.1f} MiB ({resident / full_bytes:.3f}x)",
                f"{below / 2**20:.1f} MiB",
                common.fmt(float(last["context_tokens"]), 0),
                common.fmt(common.median(times[name])),
                common.fmt(ratio, 2),
            ]
        )
    table = common.markdown_table(
        ["preset", "resident KV (vs full)", "in the cold tier", "tokens attended", "retrieval s", "vs rekv"],
        rows,
    )
    common.finish(args, "level_tiers", results, table)


if __name__ == "__main__":
    main()
