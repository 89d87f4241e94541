"""Retrieval and reload at scale: one question through the real engine path over N = 1e4 ... 1e6 blocks.

`retrieval_scoring.py` times the scoring kernel alone; this times a whole `Session.ask` over a memory of
N blocks and splits it into its steps. Per preset (`--presets`, default rekv and videokv):

1. A real session on a tiny model (`tiny-qwen2_vl`, 4 visual tokens per frame) ingests a short real stream
   (`--frames` random frames, a subtitle line every `--text-every` frames), so its blocks, retrieval keys
   and KV are what the engine made.
2. The memory grows to N blocks through the memory layer's own call, `Engine.keep` (what the engine calls
   when it keeps a block: `store.add(block, cold=...)` + `index.add(block)`), with copies of the real
   blocks in stream order: fresh K/V tensors of the same shapes (cloned; see below), new ids, units and
   times, the retrieval keys of the real block times (1 + 5% noise) so that scores do not tie, subtitle
   copies with their own text. The blocks go where the preset puts them (rekv: the host tier, i.e. RAM on a
   CPU; videokv: the cold lane, i.e. safetensors files on disk on a CPU). Two needles are planted at the
   middle of the smallest size: a frame block whose retrieval key is aligned with the question's per-layer
   query (taken from a question on the real stream; 15x the norm of any real key, so it must be the top
   block of layer 0, whose query does not depend on the memory) and a subtitle line that is the only one
   sharing the question's words (videokv's text matching must find it).
3. Before every timed question one more block is kept (a live stream: something arrived since the last
   question, so the index's catalog is rebuilt, as it would be). `session.ask(question,
   max_new_tokens=4)` is timed, with its stats' `retrieval_s` (selection + reload + context assembly),
   `prefill_s` and `decode_s`; `retrieval_s` is split from inside the ask without changing the engine:
   the session's retriever is wrapped (`Probe`, a `Retriever` that times its inner retriever's choices
   and the retrieval forward around them), and the session's `store.get` and `index.catalog` are timed
   where they are called. The steps: `catalog` (Index.catalog, rebuilt after a new block), `selection`
   (the retriever's choices: scoring, top-k, text matching), `reload` (Store.get of every selected block),
   `forward` (the layer-wise retrieval forward of the question, with each layer's context assembly),
   `assembly+` (the rest of retrieval_s: the final [sinks | blocks] context, evidence), `prefill`,
   `decode`, and `after` (what the ask does after decoding: the answer's memory statistics).
4. The same steps alone, from outside, with the public calls: the retriever's selection replayed with the
   queries the ask used (`select_layerwise` on the catalog; must give the ask's rows), `Store.get` of the
   selected rows, and `assemble` of the question's context from them.

Checks (in the JSON, asserted by the smoke test): the frame needle is in layer 0's selection at every N
(and the fraction of layers that chose it), the subtitle needle is in every layer's selection (presets
with text matching), the replayed selection equals the ask's, every layer chose at least k blocks, and the
context holds exactly the sinks plus the selected blocks' tokens.

Before growing to each N the script estimates the process's RAM (K/V held in RAM, the per-block
bookkeeping measured while growing the previous size, the catalog), the spill files on disk, and the
seconds to grow the memory and to release it (a disk-tier memory deletes one file per block); a size over
`--max-gb`, `--max-disk-gb` or `--max-build-s` is skipped and marked in the table. Where cloned copies of
the largest size would pass `--max-gb` (the tiny model's blocks are small tensors: each costs more in
bookkeeping than in bytes), the preset's copies share their real block's K/V tensors at every N
(`--share-kv auto`; marked "shared K/V"): the store counts N blocks of K/V, RAM holds each real block's
once. What grows with N (the catalog, the selection, the bookkeeping) is the same either way, and reload and
assembly read the same number of blocks of the same shapes. The presets run one after the other (not
interleaved: two memories of 1e6 blocks would not fit), so on a shared machine compare the ratios to the
smallest N rather than absolute times.

    python benchmarks/retrieval_at_scale.py                  # N = 1e4, 1e5, 1e6; rekv, videokv
    python benchmarks/retrieval_at_scale.py --quick          # N = 300, 3000
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

from videokv.errors import InputError  # noqa: E402
from videokv.memory.assemble import assemble  # noqa: E402
from videokv.memory.block import KVBlock  # noqa: E402
from videokv.policies.retrieve.base import Catalog, LayerwiseForward, Query, Retriever  # noqa: E402
from videokv.presets import get_preset  # noqa: E402

QUESTION = "What colour is the juggler's umbrella?"
NEEDLE_TEXT = "A juggler opens a bright orange umbrella."
# the steps of one ask, in order; together they are its wall time
STEPS = ("catalog", "selection", "reload", "forward", "assembly+", "prefill", "decode", "after")
ALONE = ("selection alone", "reload alone", "assembly alone")
# per-block costs before anything was measured (this machine, the tiny model, shared with other jobs),
# replaced by what growing each size measures: RAM beyond the K/V of a block in RAM ("overhead"; the small
# cloned tensors cost more than their bytes), RAM of a copy sharing its real block's K/V ("shared"), of a
# disk-tier block's stub ("stub"); microseconds to keep a block in RAM / on disk (a safetensors file), and
# to delete a spill file when the memory is released (0.5 to 1.2 ms per file here)
PRIOR = {
    "overhead": 6500,
    "shared": 3000,
    "stub": 1500,
    "keep_us": 100.0,
    "keep_us_disk": 600.0,
    "release_us_disk": 1000.0,
}
FS_BLOCK = 4096  # a spill file takes whole file-system blocks


_T0 = time.perf_counter()


def log(msg: str) -> None:
    common.log(f"[{time.perf_counter() - _T0:6.0f} s] {msg}")


def rss_bytes() -> int:
    """The process's resident memory now (Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return common.peak_rss_bytes()


@dataclass(frozen=True)
class Probe(Retriever):
    """A retriever that runs `inner` and times it: its choices (`choose` in a layer-wise forward, or all of
    `select`), and the retrieval forward around them. Records each layer's query summary for a replay."""

    name: ClassVar[str] = "probe"
    inner: Retriever = None  # type: ignore[assignment]
    log: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    def reset(self) -> None:
        self.log.clear()
        self.log.update(choose=0.0, forward=0.0, select=0.0, reload_in_forward=0.0, q={})

    def layerwise_query(self) -> bool:
        return self.inner.layerwise_query()

    def select(self, catalog: Catalog, query: Query) -> list[list[int]]:
        t0 = time.perf_counter()
        rows = self.inner.select(catalog, query)
        seconds = time.perf_counter() - t0
        self.log["select"] += seconds
        self.log["choose"] += seconds
        return rows

    def select_layerwise(self, catalog: Catalog, forward: LayerwiseForward) -> list[list[int]]:
        log = self.log

        def timed_forward(choose: Callable[[int, torch.Tensor], list[int]]) -> None:
            def timed_choose(layer: int, q: torch.Tensor) -> list[int]:
                log["q"][layer] = q.detach().clone()
                t0 = time.perf_counter()
                rows = choose(layer, q)
                log["choose"] += time.perf_counter() - t0
                return rows

            reload_before = log.get("reload", 0.0)
            t0 = time.perf_counter()
            forward(timed_choose)
            log["forward"] += time.perf_counter() - t0
            log["reload_in_forward"] += log.get("reload", 0.0) - reload_before

        t0 = time.perf_counter()
        rows = self.inner.select_layerwise(catalog, timed_forward)
        log["select"] += time.perf_counter() - t0
        return rows


def instrument(engine, probe: Probe) -> dict[str, Callable]:
    """Time the session's `store.get` and `index.catalog` where the engine calls them (instance attributes
    wrapping the same methods); returns the original methods."""
    originals = {"get": engine.store.get, "catalog": engine.index.catalog}

    def get(i: int) -> KVBlock:
        t0 = time.perf_counter()
        block = originals["get"](i)
        probe.log["reload"] = probe.log.get("reload", 0.0) + time.perf_counter() - t0
        return block

    def catalog() -> Catalog:
        t0 = time.perf_counter()
        cat = originals["catalog"]()
        probe.log["catalog"] = probe.log.get("catalog", 0.0) + time.perf_counter() - t0
        return cat

    engine.store.get = get
    engine.index.catalog = catalog
    return originals


def ingest_stream(session, args: argparse.Namespace) -> None:
    """The short real stream: frames at --fps in calls of --text-every frames, a subtitle line after each."""
    side = common.frame_side(args.frame_tokens)
    frames = common.random_frames(args.frames, side, args.seed)
    step = args.text_every
    for c, start in enumerate(range(0, args.frames, step)):
        times = (start + np.arange(min(step, args.frames - start))) / args.fps
        session.add_frames(frames[start : start + len(times)], timestamps=times, chunk_frames=step)
        session.add_text(common.subtitle(c), t=float(times[-1]))
    session.engine.flush()


class Grower:
    """Copies of the stream's real blocks, kept through `Engine.keep` in stream order (see the docstring)."""

    def __init__(self, engine, templates: list[KVBlock], seed: int):
        self.engine = engine
        self.templates = templates
        self.period = max(engine.clock, max(b.t1 for b in templates)) + 1.0
        self.units = max(b.unit for b in templates) + 1
        self.rng = torch.Generator().manual_seed(seed)
        self.copies = 0
        self.planted = 0  # 1 once the needles took a cycle of their own
        self.share_kv = False  # copies hold their real block's K/V tensors instead of clones
        self.needles: dict[str, int] = {}

    def copy(self, template: KVBlock, cycle: int, rkey: torch.Tensor | None = None, text: str | None = None):
        i = len(self.engine.store)
        if rkey is None:
            noise = torch.randn(template.rkey.shape, generator=self.rng, dtype=template.rkey.dtype)
            rkey = template.rkey * (1.0 + 0.05 * noise)
        if text is None and template.kind == "text":
            text = f"[{template.t0 + cycle * self.period:.1f}s] {common.subtitle(i)}\n"
        return dataclasses.replace(
            template,
            index=i,
            unit=template.unit + cycle * self.units,
            t0=template.t0 + cycle * self.period,
            t1=template.t1 + cycle * self.period,
            keys=list(template.keys) if self.share_kv else [k.clone() for k in template.keys],
            values=list(template.values) if self.share_kv else [v.clone() for v in template.values],
            rkey=rkey.contiguous(),
            text=template.text if text is None else text,
            meta={},
        )

    def keep_one(self) -> None:
        j = self.copies
        self.copies += 1
        cycle = 1 + self.planted + j // len(self.templates)
        self.engine.keep(self.copy(self.templates[j % len(self.templates)], cycle))

    def plant(self, queries: dict[int, torch.Tensor]) -> None:
        """The two needles (see the docstring) as the next two blocks: a cycle of the stream of their own,
        so that their units (and the stored positions of their tokens) are no other block's."""
        cycle = 1 + self.planted + self.copies // len(self.templates)
        self.planted = 1
        frame = next(b for b in self.templates if b.kind == "frame")
        text = next(b for b in self.templates if b.kind == "text")
        norms = torch.stack([b.rkey.float().norm(dim=-1) for b in self.templates]).max(0).values  # [L]
        q = torch.stack([queries[layer].float().reshape(-1) for layer in range(len(queries))])
        rkey = q / q.norm(dim=-1, keepdim=True) * (15.0 * norms[:, None])
        self.needles["frame"] = len(self.engine.store)
        self.engine.keep(self.copy(frame, cycle, rkey=rkey.to(frame.rkey.dtype)))
        self.needles["text"] = len(self.engine.store)
        t = text.t0 + cycle * self.period
        self.engine.keep(self.copy(text, cycle, text=f"[{t:.1f}s] {NEEDLE_TEXT}\n"))

    def grow_to(self, n: int, plant_at: int | None, queries: dict[int, torch.Tensor]) -> None:
        while len(self.engine.store) < n:
            at_cycle_start = self.copies % len(self.templates) == 0
            if (
                plant_at is not None
                and not self.needles
                and len(self.engine.store) >= plant_at
                and at_cycle_start
            ):
                self.plant(queries)
            else:
                self.keep_one()


def per_block_bytes(templates: list[KVBlock], tiers: list[str], layers: int, dim: int) -> dict[str, float]:
    """Average bytes per copied block: K/V resident in RAM, spill file on disk, catalog row."""
    resident = [b.nbytes for b, t in zip(templates, tiers) if t != "disk"]
    disk = [
        math.ceil((b.nbytes + 1024) / FS_BLOCK) * FS_BLOCK for b, t in zip(templates, tiers) if t == "disk"
    ]
    n = len(templates)
    return {
        "kv_resident": sum(resident) / n,
        "resident_share": len(resident) / n,
        "disk": sum(disk) / n,
        # the catalog (beyond the index's own rows): stacked retrieval keys, units, times, flags
        "catalog": layers * dim * 4 + dim * 4 + 64,
    }


def estimate(n: int, have: int, rss_now: int, sizes: dict[str, float], cost: dict[str, float]) -> dict:
    """Estimated RAM of the whole process after growing from `have` to `n` blocks, with cloned or with shared
    K/V; the spill files on disk; seconds to grow the memory and to release it (delete its spill files)."""
    extra = max(0, n - have)
    catalog = n * sizes["catalog"]
    return {
        "ram_gb": (rss_now + extra * (sizes["kv_resident"] + cost["overhead"]) + catalog) / 1e9,
        "ram_gb_shared": (rss_now + extra * cost["shared"] + catalog) / 1e9,
        "disk_gb": n * sizes["disk"] / 1e9,
        "build_s": (extra * cost["keep_us"] + n * cost["release_us"]) / 1e6,
    }


def kv_mode(largest: dict, sizes: dict[str, float], args: argparse.Namespace) -> str:
    """ "cloned" or "shared" K/V for every copy of a preset: shared with --share-kv always, or (auto) when
    cloned copies of the largest size would pass --max-gb (`largest`: its estimate); one mode at every N,
    so the ratios compare like with like."""
    if sizes["kv_resident"] == 0 or args.share_kv == "never":
        return "cloned"  # nothing to share: the K/V is on disk, not in RAM
    if args.share_kv == "always" or largest["ram_gb"] > args.max_gb:
        return "shared"
    return "cloned"


def plan(est: dict, mode: str, args: argparse.Namespace) -> str | None:
    """Why a size with estimate `est` is skipped, or None."""
    if est["disk_gb"] > args.max_disk_gb:
        return f"est. {est['disk_gb']:.1f} GB of spill files > --max-disk-gb {args.max_disk_gb:g}"
    if est["build_s"] > args.max_build_s:
        return f"est. {est['build_s']:.0f} s to grow and release > --max-build-s {args.max_build_s:g}"
    gb = est["ram_gb_shared" if mode == "shared" else "ram_gb"]
    if gb > args.max_gb:
        return f"est. {gb:.1f} GB RAM > --max-gb {args.max_gb:g}"
    return None


def alone(engine, probe: Probe, originals: dict, retrieved: list[list[int]], args: argparse.Namespace):
    """The steps of the last question, each alone through its public call: (selection seconds, the rows it
    chose, Store.get seconds, assemble seconds, the blocks per layer, the context)."""
    retriever = probe.inner
    catalog = originals["catalog"]()  # the catalog the question used (nothing was kept since)
    catalog.question = QUESTION
    queries = dict(probe.log["q"])
    t_sel, replayed = None, None
    if retriever.layerwise_query():

        def replay(choose: Callable[[int, torch.Tensor], list[int]]) -> None:
            for layer in range(catalog.n_layers):
                choose(layer, queries[layer])

        t_sel, replayed = common.timed(lambda: retriever.select_layerwise(catalog, replay), args.device)
        replayed = [catalog.one_level(layer) for layer in replayed]
    rows = sorted({x for layer in retrieved for x in layer})
    t_get, got = common.timed(lambda: {x: originals["get"](x) for x in rows}, args.device)
    per_layer = [sorted((got[x] for x in layer), key=lambda b: b.index) for layer in retrieved]

    def assembled():
        return assemble(
            [la.keys[:, :, : engine.n_sinks] for la in engine.cache.layers],
            [la.values[:, :, : engine.n_sinks] for la in engine.cache.layers],
            engine.n_sinks,
            per_layer,
            engine.config.positions,
            engine.adapter.rotary_emb,
            engine.cursor,
        )

    t_asm, (context, _) = common.timed(assembled, args.device)
    return t_sel, replayed, t_get, t_asm, per_layer, context


def measure(session, probe: Probe, originals: dict, grower: Grower, args: argparse.Namespace) -> dict:
    """Time `args.repeats` questions (after one untimed) over the session's memory; returns the entry."""
    engine = session.engine
    samples: dict[str, list[float]] = {s: [] for s in ("total", "retrieval", *STEPS, *ALONE)}
    checks: dict[str, list] = {"frame_layer0": [], "frame_layers": [], "text": [], "replay": [], "ctx": []}
    dense_k = getattr(getattr(probe.inner, "base", probe.inner), "k", None)
    per_layer_rows: list[int] = []
    for r in range(args.repeats + 1):
        grower.keep_one()  # something arrived since the last question: the catalog is stale
        probe.reset()
        seconds, answer = common.timed(
            lambda: session.ask(QUESTION, max_new_tokens=args.max_new_tokens), args.device
        )
        st, log = answer.stats, dict(probe.log)
        retrieved = [list(layer) for layer in engine.retrieved]
        # the steps of this ask
        catalog_s = log.get("catalog", 0.0)
        selection_s = log["choose"] + max(0.0, log["select"] - log["forward"])
        reload_s = log.get("reload", 0.0)
        forward_s = max(0.0, log["forward"] - log["choose"] - log["reload_in_forward"])
        rest = st["retrieval_s"] - catalog_s - selection_s - reload_s - forward_s
        steps = {
            "catalog": catalog_s,
            "selection": selection_s,
            "reload": reload_s,
            "forward": forward_s,
            "assembly+": max(0.0, rest),
            "prefill": st["prefill_s"],
            "decode": st["decode_s"],
            "after": max(0.0, seconds - st["retrieval_s"] - st["prefill_s"] - st["decode_s"]),
        }
        # the same steps alone, from outside
        t_sel, replayed, t_get, t_asm, per_layer, context = alone(engine, probe, originals, retrieved, args)
        # checks
        needles = grower.needles
        frame_in = [needles.get("frame") in layer for layer in retrieved]
        checks["frame_layer0"].append(bool(frame_in[0]))
        checks["frame_layers"].append(sum(frame_in) / len(frame_in))
        checks["text"].append(all(needles.get("text") in layer for layer in retrieved))
        checks["replay"].append(replayed is None or replayed == retrieved)
        expected = [
            engine.n_sinks + sum(b.tokens(layer) for b in blocks) for layer, blocks in enumerate(per_layer)
        ]
        checks["ctx"].append(engine.context_lengths == expected == context.lengths())
        per_layer_rows.append(min(len(layer) for layer in retrieved))
        if r == 0:
            continue  # the warm-up question
        samples["total"].append(seconds)
        samples["retrieval"].append(st["retrieval_s"])
        for name, value in steps.items():
            samples[name].append(value)
        samples["selection alone"].append(t_sel if t_sel is not None else float("nan"))
        samples["reload alone"].append(t_get)
        samples["assembly alone"].append(t_asm)
    medians = {name: common.median(xs) for name, xs in samples.items()}
    dominant = max(STEPS, key=lambda s: medians[s])
    return {
        "blocks": len(engine.store),
        "context_tokens": st["context_tokens"],
        "selected_rows": len({x for layer in retrieved for x in layer}),
        "bytes_by_tier": st["bytes_by_tier"],
        "answer_tokens": st.get("answer_tokens"),
        "steps": {name: {"seconds": xs, **common.summary(xs)} for name, xs in samples.items()},
        "dominant": dominant,
        "dominant_share": medians[dominant] / medians["total"],
        "checks": {
            "frame_needle_in_layer0": all(checks["frame_layer0"]),
            "frame_needle_layer_fraction": min(checks["frame_layers"]),
            "text_needle_in_every_layer": all(checks["text"]),
            "replay_identical": all(checks["replay"]),
            "context_is_sinks_plus_selected": all(checks["ctx"]),
            "dense_k": dense_k,
            "selected_per_layer_min": min(per_layer_rows),
        },
    }


def run_preset(qa, preset: str, sizes: list[int], args: argparse.Namespace) -> dict:
    base = get_preset(preset)
    if base.retrieve is None:
        raise InputError(
            f"--presets: {preset!r} has no retriever (it answers from its context); use a memory preset"
        )
    probe = Probe(inner=base.retrieve)
    probe.reset()
    config = base.replace(retrieve=probe, spill_dir=str(args.spill_dir) if args.spill_dir else base.spill_dir)
    session = qa.session(memory=config, fps=args.fps)
    engine = session.engine
    ingest_stream(session, args)
    n_real = len(engine.store)
    if n_real < 2 or not any(b.kind == "text" for b in engine.store.blocks):
        raise InputError("the stream made too few blocks; raise --frames")
    templates = [engine.store.get(i) for i in range(n_real)]
    tiers = list(engine.store.tier)
    originals = instrument(engine, probe)
    # the question on the real stream: its per-layer queries aim the frame needle
    probe.reset()
    session.ask(QUESTION, max_new_tokens=1)
    queries = dict(probe.log["q"])
    if len(queries) != engine.adapter.num_layers:
        raise InputError(f"{preset}: the retriever is not layer-wise; this benchmark needs per-layer queries")
    grower = Grower(engine, templates, args.seed)
    plant_at = n_real + (sizes[0] - n_real) // 2
    layers, dim = engine.adapter.num_layers, engine.adapter.num_kv_heads * engine.adapter.head_dim
    bytes_per = per_block_bytes(templates, tiers, layers, dim)
    resident = bytes_per["resident_share"]
    cost = {  # per block; the priors, replaced by what growing each size measures
        "overhead": resident * PRIOR["overhead"] + (1 - resident) * PRIOR["stub"],
        "shared": resident * PRIOR["shared"] + (1 - resident) * PRIOR["stub"],
        "keep_us": resident * PRIOR["keep_us"] + (1 - resident) * PRIOR["keep_us_disk"],
        "release_us": (1 - resident) * PRIOR["release_us_disk"],
    }
    out: dict = {"real_blocks": n_real, "bytes_per_block": bytes_per, "sizes": {}}
    mode = kv_mode(
        estimate(sizes[-1] + args.repeats + 1, n_real, rss_bytes(), bytes_per, cost), bytes_per, args
    )
    grower.share_kv = mode == "shared"
    out["kv"] = mode
    skip_rest = None
    for n in sizes:
        have, rss0 = len(engine.store), rss_bytes()
        est = estimate(n + args.repeats + 1, have, rss0, bytes_per, cost)
        entry: dict = {"estimate": est, "cost_per_block": dict(cost)}
        if skip_rest is None:
            skip_rest = plan(est, mode, args)
        if skip_rest is not None:
            log(f"retrieval_at_scale: {preset} N={n}: skipped ({skip_rest})")
            out["sizes"][str(n)] = {**entry, "skipped": skip_rest}
            continue
        gb = est["ram_gb_shared" if grower.share_kv else "ram_gb"]
        log(f"retrieval_at_scale: {preset}: growing {have} -> {n} blocks, {mode} K/V (est. {gb:.2f} GB)")
        t0 = time.perf_counter()
        grower.grow_to(n, plant_at, queries)
        grow_s = time.perf_counter() - t0
        gc.collect()
        rss1 = rss_bytes()
        if n - have >= 1000:  # the costs per block, as measured (what the next estimates use)
            per_block = (rss1 - rss0) / (n - have)
            if grower.share_kv:
                cost["shared"] = max(cost["shared"], per_block)
            else:
                cost["overhead"] = max(cost["overhead"], per_block - bytes_per["kv_resident"])
            cost["keep_us"] = grow_s / (n - have) * 1e6
            entry["measured_ram_per_block_bytes"] = per_block
        entry["kv"] = mode
        log(f"  grown in {grow_s:.1f} s; RSS {rss1 / 1e9:.2f} GB; timing {args.repeats} questions")
        entry.update(
            grow_s=grow_s,
            keep_us_per_block=grow_s / max(1, n - have) * 1e6,
            rss_gb_after_growth=rss1 / 1e9,
            **measure(session, probe, originals, grower, args),
        )
        out["sizes"][str(n)] = entry
        log(f"  N={n}: ask {entry['steps']['total']['median'] * 1e3:.0f} ms, dominant {entry['dominant']}")
    measured = [e for e in out["sizes"].values() if "steps" in e]
    if measured:
        first = measured[0]["steps"]
        for e in measured:
            e["ratio_to_smallest"] = {
                name: (s["median"] / first[name]["median"] if first[name]["median"] > 0 else None)
                for name, s in e["steps"].items()
            }
    t0 = time.perf_counter()
    del session, engine, grower, templates, originals
    gc.collect()  # the store goes, and its spill folder with it
    out["teardown_s"] = time.perf_counter() - t0
    log(f"retrieval_at_scale: {preset}: memory released in {out['teardown_s']:.1f} s")
    return out


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.1f}" if ms >= 1 else f"{ms:.2f}"


def _n(n: int) -> str:
    return (
        f"{n:.0e}".replace("e+0", "e") if n >= 1000 and str(n).rstrip("0") in ("1", "2", "3", "5") else str(n)
    )


def tables(results: dict, args: argparse.Namespace) -> str:
    head = ["preset", "blocks N", "ask ms", "retrieval_s ms", *(f"{s} ms" for s in STEPS), "dominant"]
    head += ["ask / smallest N", "retrieval / smallest N"]
    rows, alone_rows = [], []
    for preset, res in results["presets"].items():
        for n, e in res["sizes"].items():
            label = [preset, _n(int(n)) + (" (shared K/V)" if e.get("kv") == "shared" else "")]
            if "skipped" in e:
                rows.append(label + ["-"] * (len(head) - 5) + [f"skipped: {e['skipped']}", "-", "-"])
                alone_rows.append(label + ["-"] * 6 + [f"skipped: {e['skipped']}"])
                continue
            ms = {name: _ms(s["median"]) for name, s in e["steps"].items()}
            ratio = e["ratio_to_smallest"]
            rows.append(
                label
                + [ms["total"], ms["retrieval"]]
                + [ms[s] for s in STEPS]
                + [f"{e['dominant']} ({e['dominant_share']:.0%})"]
                + [common.fmt(ratio["total"], 2), common.fmt(ratio["retrieval"], 2)]
            )
            c = e["checks"]
            ok = all(
                [
                    c["frame_needle_in_layer0"],
                    c["replay_identical"],
                    c["context_is_sinks_plus_selected"],
                    c["text_needle_in_every_layer"] or not results["text_matching"][preset],
                ]
            )
            alone_rows.append(
                label
                + [ms[s] for s in ALONE]
                + [
                    str(e["selected_rows"]),
                    common.fmt(e["context_tokens"], 0),
                    f"{e['keep_us_per_block']:.0f}",
                ]
                + [
                    f"{'ok' if ok else 'FAILED'} (frame needle in "
                    f"{c['frame_needle_layer_fraction']:.0%} of layers"
                    + (", text needle found" if c["text_needle_in_every_layer"] else "")
                    + ")"
                ]
            )
    main = common.markdown_table(head, rows)
    alone = common.markdown_table(
        [
            "preset",
            "blocks N",
            *(f"{s} ms" for s in ALONE),
            "rows reloaded",
            "context tokens",
            "keep us/block",
            "checks",
        ],
        alone_rows,
    )
    return (
        f"{main}\n\nMedians of {args.repeats} questions (after one untimed) per cell; each question follows "
        f"one more kept block, so the catalog is rebuilt as in a live stream. Model {args.model}, "
        f"{args.frame_tokens} visual tokens per frame, max_new_tokens={args.max_new_tokens}, {args.device}. "
        "The step columns add up to the ask: catalog (Index.catalog), selection (the retriever's choices), "
        "reload (Store.get of the selected blocks), forward (the layer-wise retrieval forward with each "
        "layer's context), assembly+ (the rest of retrieval_s: the final context), prefill, decode, after "
        "(the answer's memory statistics, after decoding).\n\n"
        f"{alone}\n\nThe same steps alone, from outside (one call each after every question): the "
        "retriever's selection replayed with the ask's queries, Store.get of the selected rows, assemble of "
        "the context. keep us/block: growing the memory through Engine.keep (a copy made, stored and "
        "indexed; on the disk tier a safetensors file written per block)."
    )


def main(argv: list[str] | None = None) -> dict:
    p = common.base_parser(__doc__.splitlines()[0], default_model=common.QUICK_MODEL)
    p.add_argument("--sizes", default=None, help="comma list of N (default 1e4,1e5,1e6; quick: 300,3000)")
    p.add_argument("--presets", default="rekv,videokv", help="memory presets with a layer-wise retriever")
    p.add_argument("--frames", type=int, default=32, help="frames of the real stream")
    p.add_argument("--text-every", type=int, default=16, help="a subtitle line after every this many frames")
    p.add_argument("--frame-tokens", type=int, default=4, help="visual tokens per frame (Qwen2-VL family)")
    p.add_argument("--fps", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=4)
    p.add_argument("--max-gb", type=float, default=4.0, help="skip sizes whose estimated RAM exceeds this")
    p.add_argument("--max-disk-gb", type=float, default=8.0, help="skip sizes whose spill files exceed this")
    p.add_argument(
        "--max-build-s",
        type=float,
        default=300.0,
        help="skip sizes whose estimated growth + release (deleting their spill files) takes longer",
    )
    p.add_argument(
        "--share-kv",
        default="auto",
        choices=["auto", "never", "always"],
        help="copies share their real block's K/V tensors: auto = only where cloned copies would not fit "
        "--max-gb (the table marks those sizes)",
    )
    p.add_argument("--spill-dir", type=Path, default=None, help="where disk-tier blocks go (default: /tmp)")
    args = p.parse_args(argv)
    common.resolve_args(args, repeats=5, quick_repeats=2)
    sizes = sorted(
        {int(float(x)) for x in (args.sizes or ("300,3000" if args.quick else "1e4,1e5,1e6")).split(",") if x}
    )
    presets = [x.strip() for x in args.presets.split(",") if x.strip()]
    if not sizes or not presets:
        raise InputError("--sizes and --presets must not be empty")
    if args.frames < 2 or args.text_every < 2 or args.text_every % 2 or args.max_new_tokens < 1:
        raise InputError("--frames >= 2, --text-every even and >= 2, --max-new-tokens >= 1")
    qa = common.load_qa(args, frame_tokens=args.frame_tokens)
    results: dict = {
        "question": QUESTION,
        "needle_text": NEEDLE_TEXT,
        "model": args.model,
        "layers": qa.adapter.num_layers,
        "kv_heads": qa.adapter.num_kv_heads,
        "head_dim": qa.adapter.head_dim,
        "text_matching": {},
        "presets": {},
    }
    for preset in presets:
        retriever = get_preset(preset).retrieve
        results["text_matching"][preset] = hasattr(retriever, "matcher")
        if sizes[0] < args.frames:
            raise InputError(
                f"--sizes: the smallest N must be at least the stream's blocks (>= {args.frames})"
            )
        results["presets"][preset] = run_preset(qa, preset, sizes, args)
    return common.finish(args, "retrieval_at_scale", results, tables(results, args))


if __name__ == "__main__":
    main()
