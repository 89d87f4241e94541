"""Answer latency vs stream length: `full` against the retrieval presets, one growing stream each.

Every preset gets its own session over the same stream: random frames at a low rate (`--fps`, with
`--frame-tokens` visual tokens each) and a subtitle line every `--subtitle-every` seconds, with one planted
fact near the start. The streams advance side by side; at each checkpoint (`--minutes`) every session is
asked the same short question `--repeats` times, round-robin, and the stream then continues. Reported per
preset and length: time to first token (retrieval + question prefill + first decoding step), total answer
time (wall clock of `Session.ask`), the tokens in the question's context, the resident KV memory, whether
the answer recalls the planted fact, and each latency's ratio to the first checkpoint (target for retrieval
presets: 60 min <= 1.3x 1 min). Checkpoints are minutes apart, and a shared machine's load changes in
minutes, so each preset also keeps a second session stopped at the first checkpoint and asks it in the same
rounds as the growing one: the ratio is taken within each round (its median is reported).

The physical floor (`--floor`, on by default): in the same rounds, the bare transformers model answers over
a plain `DynamicCache` already holding as many tokens as the preset's question attended to: the question's
prompt tokens prefilled and as many tokens decoded as the preset's answer had, greedy (`floor_s`: the best any
memory could do with that context); and the same from nothing (`cold_s`: the context prefilled with the
question, what a system without a cache pays). Ingest is compared with a bare forward of one chunk's tokens
from an empty cache (`bare_tokens_per_s`). Each answer is split into retrieval (selection, reload, context
assembly), question prefill and decoding; the step that took longest is named.

`full` stops once the next segment would take its context past the model's limit (32768 tokens for the
offline model); its later cells read "over context".

    python benchmarks/latency_vs_length.py                               # 1..60 min, 0.1 fps
    python benchmarks/latency_vs_length.py --fps 0.5 --subtitle-every 10  # denser (slower) streams
    python benchmarks/latency_vs_length.py --presets rekv,videokv --minutes 1,5,15,30,60 --fps 0.5 \
        --frame-tokens 128 --subtitle-every 10  # realistic token rates (issue 15): 64 tokens per frame
    python benchmarks/latency_vs_length.py --quick
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

from videokv.engine import Frame, format_event  # noqa: E402
from videokv.errors import InputError  # noqa: E402
from videokv.video.subtitles import TextEvent  # noqa: E402

ALL_PRESETS = "full,rekv,streamkv,mukv,x2l,uniform"
NAME = "Marguerite"
FACT = f"The courier's name is {NAME} and she parks a blue scooter by the fountain."
QUESTION = "What is the courier's name?"


def segment(t0: float, t1: float, fps: float, every: float, side: int, seed: int) -> list[Frame | TextEvent]:
    """Stream items in [t0, t1): frames at k / fps and subtitle lines at j * every, in time order (a line
    before a frame at the same time). The planted fact is the subtitle at 2 * every."""
    items: list[tuple[float, int, Frame | TextEvent]] = []
    k = int(np.ceil(t0 * fps - 1e-9))
    while k / fps < t1 - 1e-9:
        t = k / fps
        items.append((t, 1, Frame(t, common.random_frames(1, side, seed + k)[0])))
        k += 1
    j = int(np.ceil(t0 / every - 1e-9))
    while j * every < t1 - 1e-9:
        t = j * every
        text = FACT if j == 2 else common.subtitle(j)
        items.append((t, 0, TextEvent(t, t + min(every, 4.0), text)))
        j += 1
    return [item for *_, item in sorted(items, key=lambda x: (x[0], x[1]))]


def segment_tokens(qa, items: list[Frame | TextEvent], frame_tokens: float) -> int:
    """Tokens the items add to a full context (frames: the tokens per frame seen so far)."""
    n = 0
    for item in items:
        if isinstance(item, TextEvent):
            n += len(qa.adapter.tokenize(format_event(item)))
        else:
            n += int(round(frame_tokens))
    return n


class Floor:
    """The bare transformers model (the session's own weights, no videokv code in the loop) answering over a
    plain DynamicCache of `n` tokens: the physical floor of a question that attends to `n` tokens."""

    def __init__(self, model: torch.nn.Module, vocab: int, seed: int) -> None:
        self.model, self.vocab = model, vocab
        # transformers 5.2x renames `past_key_values` to `cache`; pass whichever this version takes
        params = inspect.signature(model.forward).parameters
        self.arg = "cache" if "cache" in params else "past_key_values"
        # logits for the last position only, as `generate` asks: the vocabulary projection of every prompt
        # position is work no answer needs
        self.last = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        self.gen = torch.Generator().manual_seed(seed)
        self.cache = None
        self.n = 0

    def _ids(self, n: int) -> torch.Tensor:
        device = next(self.model.parameters()).device
        return torch.randint(100, self.vocab - 100, (1, n), generator=self.gen).to(device)

    def _answer(self, cache, prompt: int, answer: int) -> None:
        nxt = self._ids(prompt)
        for _ in range(max(1, answer)):  # the prompt's pass gives the first token; each later step one more
            out = self.model(input_ids=nxt, use_cache=True, **self.last, **{self.arg: cache})
            nxt = out.logits[:, -1:].argmax(-1)

    @torch.no_grad()
    def warm(self, n: int, prompt: int, answer: int) -> None:
        """Prefill `prompt` tokens and decode `answer` over a cache already holding `n` tokens (built
        untimed on the first call for this `n`; cropped back after each answer)."""
        from transformers import DynamicCache

        if self.cache is None or self.n != n:
            self.cache, self.n = DynamicCache(), n
            for i in range(0, n, 2048):  # in pieces: the CPU's attention memory stays small
                ids = self._ids(min(2048, n - i))
                self.model(input_ids=ids, use_cache=True, **self.last, **{self.arg: self.cache})
        self._answer(self.cache, prompt, answer)
        self.cache.crop(-(self.cache.get_seq_length() - n))

    @torch.no_grad()
    def cold(self, n: int, prompt: int, answer: int) -> None:
        """The same answer from nothing: `n` context tokens and the prompt prefilled in one pass."""
        from transformers import DynamicCache

        self._answer(DynamicCache(), n + prompt, answer)

    @torch.no_grad()
    def forward(self, n: int) -> None:
        """One bare forward of `n` tokens from an empty cache (an ingest chunk's model cost)."""
        from transformers import DynamicCache

        self.model(input_ids=self._ids(n), use_cache=True, **self.last, **{self.arg: DynamicCache()})


def dominant(retrieval_s: float, prefill_s: float, decode_s: float) -> str:
    """The answer step that took longest."""
    return max(
        (("retrieval", retrieval_s), ("question prefill", prefill_s), ("decode", decode_s)),
        key=lambda x: x[1],
    )[0]


def main(argv: list[str] | None = None) -> dict:
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument(
        "--minutes",
        default=None,
        help="checkpoints in minutes (default 1,5,15: ~8 min on 2 CPU cores; the full "
        "set 1,5,15,30,60 took 22 min there; quick 0.2,0.4)",
    )
    p.add_argument("--presets", default=ALL_PRESETS, help=f"comma list (default {ALL_PRESETS})")
    p.add_argument("--fps", type=float, default=None, help="frames per second (default 0.1; quick 0.5)")
    p.add_argument(
        "--frame-tokens",
        type=int,
        default=4,
        help="visual tokens per frame image (Qwen2-VL family, whose temporal patches pair two frames: 64 "
        "gives 64 tokens per two frames; LLaVA-OV's count is fixed by its vision tower)",
    )
    p.add_argument("--subtitle-every", type=float, default=20.0, help="seconds between subtitle lines")
    p.add_argument("--max-new-tokens", type=int, default=8, help="answer length cap (a short answer)")
    p.add_argument("--chunk-frames", type=int, default=8, help="frames per ingest chunk")
    p.add_argument(
        "--floor",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the bare model over the same number of tokens (the physical floor)",
    )
    args = p.parse_args(argv)
    common.resolve_args(args, repeats=3, quick_repeats=1)
    minutes = [float(x) for x in (args.minutes or ("0.2,0.4" if args.quick else "1,5,15")).split(",")]
    if args.fps is None:
        args.fps = 0.5 if args.quick else 0.1
    if args.quick and args.subtitle_every == 20.0:
        args.subtitle_every = 6.0
    presets = [x.strip() for x in args.presets.split(",") if x.strip()]
    if not presets or minutes != sorted(minutes) or minutes[0] <= 0:
        raise InputError("--presets must name at least one preset; --minutes must be increasing and > 0")
    if not args.fps > 0 or not args.subtitle_every > 0:
        raise InputError("--fps and --subtitle-every must be > 0")

    qa = common.load_qa(args, frame_tokens=args.frame_tokens)
    side = common.frame_side(args.frame_tokens)
    limit = qa.adapter.max_context
    # tokens of one frame on this model (LLaVA-OV's are fixed by its vision tower): one frame through it
    probe = common.random_frames(1, side, args.seed)
    with torch.no_grad():
        # tokens per frame: a temporal patch's visual tokens over its frames (Qwen2-VL pairs two frames)
        fpp = qa.adapter.frames_per_piece
        patch = qa.adapter.video_pieces(np.repeat(probe, fpp, 0), np.zeros(fpp), 1.0 / args.fps, None, 0)[0]
        frame_size = patch[-1].n_tokens / fpp
    sessions = {name: qa.session(memory=name, fps=args.fps) for name in presets}
    # the same stream stopped at the first checkpoint, kept and asked beside the growing one at every later
    # checkpoint: the ratio of each length to the first is measured side by side, under the same load
    baselines = {name: qa.session(memory=name, fps=args.fps) for name in presets}
    floor = Floor(qa.adapter.model, len(qa.adapter.tokenizer), args.seed) if args.floor else None
    active = list(presets)
    stopped: dict[str, float] = {}
    first = f"{minutes[0]:g}"
    results: dict = {
        "minutes": minutes,
        "tokens_per_frame": frame_size,
        "fps": args.fps,
        "max_context": limit,
        "question": QUESTION,
        "presets": {name: {"checkpoints": {}, "ingest_s": 0.0} for name in presets},
    }
    clock = 0.0
    for m in minutes:
        key = f"{m:g}"
        items = segment(clock, m * 60.0, args.fps, args.subtitle_every, side, args.seed)
        clock = m * 60.0
        common.log(f"latency_vs_length: to {key} min (+{len(items)} items), presets {active}")
        for name in list(active):
            engine = sessions[name].engine
            if not engine.memory_mode:
                per_frame = engine.tokens_per_frame or frame_size
                need = engine.cache.lengths()[0] + segment_tokens(qa, items, per_frame) + 64
                if need > limit:
                    common.log(f"  {name}: stops before {key} min ({need} tokens > context {limit})")
                    active.remove(name)
                    stopped[name] = m
                    continue
            before = sessions[name].stats["stream_tokens"]
            t0 = time.perf_counter()
            engine.ingest(items, args.chunk_frames, frame_interval=1.0 / args.fps)
            engine.flush()
            results["presets"][name]["ingest_s"] += time.perf_counter() - t0
            results["presets"][name].setdefault("ingest_tokens", 0)
            results["presets"][name]["ingest_tokens"] += sessions[name].stats["stream_tokens"] - before
            if m == minutes[0]:
                baselines[name].engine.ingest(items, args.chunk_frames, frame_interval=1.0 / args.fps)
                baselines[name].engine.flush()
        if floor is not None and active:  # one ingest chunk's tokens through the bare model, median of 3
            chunk = int(round(args.chunk_frames * frame_size))
            floor.forward(chunk)
            bare = common.median(
                [common.timed(lambda c=chunk: floor.forward(c), args.device)[0] for _ in range(3)]
            )
            results.setdefault("bare_tokens_per_s", {})[key] = chunk / bare
        if m == minutes[0]:  # one untimed ask each: one-off first-call costs stay out of the baseline
            for name in active:
                sessions[name].ask(QUESTION, max_new_tokens=args.max_new_tokens)
        askers = [(name, "now") for name in active]
        if m != minutes[0]:
            askers += [(name, "base") for name in active]
        samples: dict[tuple[str, str], list[dict]] = {a: [] for a in askers}
        for r in range(args.repeats):
            shift = r % max(1, len(askers))
            for name, which in askers[shift:] + askers[:shift]:
                session = sessions[name] if which == "now" else baselines[name]
                seconds, answer = common.timed(
                    lambda s=session: s.ask(QUESTION, max_new_tokens=args.max_new_tokens), args.device
                )
                st = answer.stats
                sample = {
                    "total_s": seconds,
                    "ttft_s": st.get("retrieval_s", 0.0) + st["ttft_s"],
                    "retrieval_s": st.get("retrieval_s", 0.0),
                    "prefill_s": st.get("prefill_s", 0.0),
                    "decode_s": st.get("decode_s", 0.0),
                    "answer_tokens": st["answer_tokens"],
                    "context_tokens": st["context_tokens"],
                    "prompt_tokens": st.get("prompt_tokens", 0),
                    "answer": answer.text,
                }
                if floor is not None and which == "now":  # right after, under the same load
                    n, q, a = int(round(st["context_tokens"])), sample["prompt_tokens"], st["answer_tokens"]
                    floor.warm(n, q, a)  # builds the prefix untimed when n changed
                    sample["floor_s"] = common.timed(lambda n=n, q=q, a=a: floor.warm(n, q, a), args.device)[
                        0
                    ]
                    sample["cold_s"] = common.timed(lambda n=n, q=q, a=a: floor.cold(n, q, a), args.device)[0]
                    sample["floor_tokens"] = floor.cache.get_seq_length()  # the floor's context, cropped back
                samples[(name, which)].append(sample)
        for name in active:
            ss = samples[(name, "now")]
            base = samples.get((name, "base"), ss)
            stats = sessions[name].stats
            cp = {
                "ttft_s": common.median([s["ttft_s"] for s in ss]),
                "total_s": common.median([s["total_s"] for s in ss]),
                "retrieval_s": common.median([s["retrieval_s"] for s in ss]),
                # the first checkpoint's state, asked in the same rounds
                "first_ttft_s": common.median([s["ttft_s"] for s in base]),
                "first_total_s": common.median([s["total_s"] for s in base]),
                "ttft_ratio_to_first": common.paired_ratio(
                    [s["ttft_s"] for s in ss], [s["ttft_s"] for s in base]
                ),
                "total_ratio_to_first": common.paired_ratio(
                    [s["total_s"] for s in ss], [s["total_s"] for s in base]
                ),
                "prefill_s": common.median([s["prefill_s"] for s in ss]),
                "decode_s": common.median([s["decode_s"] for s in ss]),
                "answer_tokens": ss[0]["answer_tokens"],
                "context_tokens": ss[0]["context_tokens"],
                "answer": ss[0]["answer"],
                "recalled": NAME.lower() in ss[0]["answer"].lower(),
                "stream_tokens": stats["stream_tokens"],
                "memory_bytes": stats["memory_bytes"],
                "blocks": stats["blocks"],
                "samples": ss,
                "first_samples": base if base is not ss else None,
            }
            cp["dominant_step"] = dominant(cp["retrieval_s"], cp["prefill_s"], cp["decode_s"])
            if floor is not None:
                cp["floor_s"] = common.median([s["floor_s"] for s in ss])
                cp["cold_s"] = common.median([s["cold_s"] for s in ss])
                cp["total_to_floor"] = common.paired_ratio(
                    [s["total_s"] for s in ss], [s["floor_s"] for s in ss]
                )
                cp["total_to_cold"] = common.paired_ratio(
                    [s["total_s"] for s in ss], [s["cold_s"] for s in ss]
                )
            results["presets"][name]["checkpoints"][key] = cp
            common.log(
                f"  {name:>9} @ {key} min: ttft {cp['ttft_s']:.3f} s "
                f"({cp['ttft_ratio_to_first']:.2f}x {first} min), context {cp['context_tokens']:.0f} "
                f"tokens, answer {cp['answer']!r}"
            )

    header = [
        "preset",
        "minutes",
        "TTFT s",
        f"TTFT / {first} min",
        "total s",
        f"total / {first} min",
        "answer tokens",
        "context tokens",
        "KV MiB",
        "answer right",
        *(["floor s", "total / floor", "cold s"] if args.floor else []),
        "dominant step",
    ]
    rows = []
    for name in presets:
        cps = results["presets"][name]["checkpoints"]
        for m in minutes:
            key = f"{m:g}"
            if key not in cps:
                rows.append([name, key, "over context", *["-"] * (len(header) - 3)])
                continue
            c = cps[key]
            rows.append(
                [
                    name,
                    key,
                    common.fmt(c["ttft_s"]),
                    common.fmt(c["ttft_ratio_to_first"], 2),
                    common.fmt(c["total_s"]),
                    common.fmt(c["total_ratio_to_first"], 2),
                    str(c["answer_tokens"]),
                    f"{c['context_tokens']:.0f}",
                    common.fmt(c["memory_bytes"] / 2**20, 1),
                    "yes" if c["recalled"] else "no",
                    *(
                        [
                            common.fmt(c["floor_s"]),
                            common.fmt(c["total_to_floor"], 2),
                            common.fmt(c["cold_s"]),
                        ]
                        if args.floor
                        else []
                    ),
                    c["dominant_step"],
                ]
            )
        last = cps.get(f"{minutes[-1]:g}")
        results["presets"][name]["stopped_at_minutes"] = stopped.get(name)
        if name != "full" and last is not None:
            results["presets"][name]["meets_1_3x"] = last["ttft_ratio_to_first"] <= 1.3
    table = common.markdown_table(header, rows)
    table += (
        f"\n\nStream: {args.fps:g} fps x {frame_size:g} visual tokens per frame (measured on this model), a "
        f"subtitle line every {args.subtitle_every:g} s; question {QUESTION!r}, at most "
        f"{args.max_new_tokens} answer tokens; model {args.model} on {args.device}. Times: medians of "
        f"{args.repeats} rounds; ratios: median over rounds of (this length / the same stream stopped at "
        f"{first} min, asked in the same round). KV MiB: resident KV (full: its context; retrieval presets: "
        f"the block store). answer right: the answer names the planted fact ({NAME!r}, said at "
        f"{2 * args.subtitle_every:g} s)."
    )
    if args.floor:
        table += (
            " floor s: the bare transformers model answering over a DynamicCache of the same context "
            "tokens (question prefill + the same answer length; median); total / floor: median over rounds; "
            "cold s: the same answer with the context prefilled from nothing. dominant step: the longest of "
            "retrieval (selection, reload, context assembly), question prefill and decoding."
        )
        bare = results.get("bare_tokens_per_s", {})
        ingest_rows = []
        for name in presets:
            r = results["presets"][name]
            rate = r.get("ingest_tokens", 0) / r["ingest_s"] if r["ingest_s"] else None
            ref = common.median(list(bare.values())) if bare else None
            ingest_rows.append(
                [
                    name,
                    str(r.get("ingest_tokens", 0)),
                    common.fmt(r["ingest_s"]),
                    common.fmt(rate, 0),
                    common.fmt(ref, 0),
                    common.fmt(rate / ref if rate and ref else None, 2),
                ]
            )
        table += "\n\n" + common.markdown_table(
            [
                "preset",
                "stream tokens ingested",
                "ingest s",
                "tokens / s",
                "bare forward tokens / s",
                "ratio",
            ],
            ingest_rows,
        )
        table += (
            f"\n\nbare forward: one ingest chunk ({args.chunk_frames} frames' tokens) through the bare model "
            "from an empty cache, median of 3 at each checkpoint, median over checkpoints."
        )
    return common.finish(args, "latency_vs_length", results, table)


if __name__ == "__main__":
    main()
