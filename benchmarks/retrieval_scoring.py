"""Retrieval scoring: time to score one question against N memory blocks and take the top k, torch vs FAISS.

A synthetic catalog of N blocks with the offline model's retrieval-key shape (24 layers x 2 KV heads x 64
head dims = 128 floats per layer; `--layers` / `--dim` for other models) is scored with:

- `torch kernel`: `Catalog.scores` (one matrix product per layer) + `torch.topk` per layer;
- `faiss kernel`: `FaissIndex.search` (an exact inner-product index per layer, memory/faiss_index.py);
- `torch select` / `faiss select`: ReKV's whole retriever, `TopK(k, per_layer=True).select`, on a catalog
  without / with the FAISS search attached (what a question actually pays).

The cases run interleaved; medians are reported in ms per query for all the model's layers. A catalog of
1e6 blocks x 24 layers is 12 GB of float32 keys (twice that with a FAISS copy), more than this machine
holds, so at large N only as many layers are built as fit in `--max-gb` (the table marks those rows). The
kernels are pure per-layer work (one independent search per layer) and are scaled linearly to all layers;
the retrievers also pay a per-query cost independent of the layers, so they are timed on all and on half of
the layers built and extrapolated along that line. `torch kernel, layer-major` is the same product as an
explicit `bmm` on a layer-major [L, N, D] copy of the keys; the catalog itself is built as `Index` builds
it (layer-major storage seen as [N, L, D]), so the two agree (before that storage, [N, L, D] cost 2.3x).
The FAISS and torch top-k rows are compared at every N.

    python benchmarks/retrieval_scoring.py                 # N = 1e3, 1e4, 1e5, 1e6
    python benchmarks/retrieval_scoring.py --quick
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

from videokv.errors import InputError  # noqa: E402
from videokv.memory.faiss_index import FaissIndex  # noqa: E402
from videokv.policies.retrieve import Catalog, Query, TopK  # noqa: E402


def build_catalog(keys: torch.Tensor, search=None) -> Catalog:
    """A catalog of one frame block per unit (ReKV's layout), times 1 s apart."""
    n = keys.shape[0]
    t0 = torch.arange(n, dtype=torch.float64)
    return Catalog(
        rkeys=keys,
        kinds=["frame"] * n,
        units=torch.arange(n),
        levels=["full"] * n,
        t0=t0,
        t1=t0 + 1.0,
        pinned=torch.zeros(n, dtype=torch.bool),
        search=search,
    )


def build_faiss(keys: np.ndarray) -> FaissIndex:
    """A FaissIndex holding `keys` [N, L, D], in the state its per-block `add` would leave it (bulk-added:
    a million one-row adds would take longer than the benchmark)."""
    n, layers, dim = keys.shape
    index = FaissIndex(layers, dim)
    for layer in range(layers):
        index.indexes[layer].add(np.ascontiguousarray(keys[:, layer]))
    index.rows = list(keys)
    return index


def synthetic_keys(n: int, layers: int, dim: int, seed: int) -> np.ndarray:
    """Mean-key-like vectors: a shared offset per layer (keys are not centred) plus per-block variation."""
    rng = np.random.default_rng(seed)
    keys = rng.standard_normal((n, layers, dim), dtype=np.float32)
    keys += rng.standard_normal((1, layers, dim), dtype=np.float32) * 2.0
    return keys


def half_index(index: FaissIndex, layers: int) -> FaissIndex:
    """A FaissIndex over the first `layers` layers of `index`, sharing its per-layer indexes."""
    out = FaissIndex(layers, index.dim)
    out.indexes = index.indexes[:layers]
    out.rows = index.rows
    return out


def _cases(keys: torch.Tensor, faiss_index: FaissIndex, q: torch.Tensor, k: int, suffix: str = "") -> dict:
    """The timed cases over `keys` [N, l, D] and a FAISS index of the same keys."""
    layer_major = keys.permute(1, 0, 2).contiguous()  # [l, N, D], built once
    stored = layer_major.permute(1, 0, 2)  # the catalog's [N, l, D] view of it, as memory.index.Index builds
    plain = build_catalog(stored)
    fast = build_catalog(stored, search=faiss_index.search)
    query = Query(q=q, last_key=q)
    retriever = TopK(k=k, per_layer=True)
    top = min(k, keys.shape[0])
    if suffix:  # the half-layer catalog: only the retrievers (their per-query constant cost is what it fits)
        return {
            f"torch select{suffix}": lambda: retriever.select(plain, query),
            f"faiss select{suffix}": lambda: retriever.select(fast, query),
        }

    def torch_kernel() -> list[list[int]]:
        return torch.topk(plain.scores(query), top, dim=1).indices.tolist()

    def torch_layer_major() -> list[list[int]]:
        scores = torch.bmm(layer_major, q.unsqueeze(-1)).squeeze(-1)
        return torch.topk(scores, top, dim=1).indices.tolist()

    return {
        "torch kernel": torch_kernel,
        "torch kernel, layer-major": torch_layer_major,
        "faiss kernel": lambda: faiss_index.search(q, top),
        "torch select": lambda: retriever.select(plain, query),
        "faiss select": lambda: retriever.select(fast, query),
    }


def measure(n: int, args: argparse.Namespace) -> dict:
    """Time the cases at N = n blocks; returns the results entry of that size.

    When only `built` < all layers fit, kernels (pure per-layer work) are scaled by layers / built; the
    retrievers also have a per-query cost independent of the layers (Python passes over all N rows), so they
    are also timed on half the layers and extrapolated along the line through the two points.
    """
    device = torch.device(args.device)
    per_layer_bytes = n * args.dim * 4
    built = max(1, min(args.layers, int(args.max_gb * 1e9 // per_layer_bytes)))
    half = built // 2 if built < args.layers else 0
    common.log(f"retrieval_scoring: N={n}, building {built} of {args.layers} layers")
    keys_np = synthetic_keys(n, built, args.dim, args.seed)
    keys = torch.from_numpy(keys_np).to(device)
    rng = np.random.default_rng(args.seed + 1)
    q = torch.from_numpy(rng.standard_normal((built, args.dim), dtype=np.float32)).to(device)
    faiss_index = build_faiss(keys_np)
    cases = _cases(keys, faiss_index, q, args.k)
    if half:
        cases.update(_cases(keys[:, :half], half_index(faiss_index, half), q[:half], args.k, " (half)"))
    outputs: dict[str, list[list[int]]] = {}

    def keep(name: str, r: int, seconds: float, result) -> None:
        outputs[name] = result

    repeats = args.repeats if n < 10**6 else max(1, min(args.repeats, 3))
    times = common.interleaved(cases, repeats, warmup=1, device=device, on_result=keep)
    agree = [
        len(set(a) & set(b)) / max(1, len(a))
        for a, b in zip(outputs["torch kernel"], outputs["faiss kernel"])
    ]
    entry: dict = {
        "layers_built": built,
        "half_layers": half or None,
        "scale_to_all_layers": args.layers / built,
        "topk_agreement_torch_vs_faiss": float(np.mean(agree)),
        "layer_major_identical": [set(r) for r in outputs["torch kernel"]]
        == [set(r) for r in outputs["torch kernel, layer-major"]],
        "select_identical_torch_vs_faiss": outputs["torch select"] == outputs["faiss select"],
        "cases": {},
    }
    for name, ts in times.items():
        if name.endswith(" (half)"):
            continue
        s = common.summary(ts)
        ms = s["median"] * 1e3
        if built == args.layers:
            estimate, how = ms, "measured"
        elif name.endswith("select") and half:
            ms_half = common.median(times[f"{name} (half)"]) * 1e3
            per_layer = max(0.0, (ms - ms_half) / (built - half))
            estimate, how = ms + per_layer * (args.layers - built), f"fit through {half} and {built} layers"
            s["median_half_layers"] = ms_half / 1e3
        else:
            estimate, how = ms * args.layers / built, f"scaled from {built} layers"
        entry["cases"][name] = {"seconds": ts, **s, "ms_per_query_all_layers": estimate, "estimate": how}
    ms_all = {name: c["ms_per_query_all_layers"] for name, c in entry["cases"].items()}
    entry["faiss_speedup_kernel"] = ms_all["torch kernel"] / ms_all["faiss kernel"]
    entry["faiss_speedup_select"] = ms_all["torch select"] / ms_all["faiss select"]
    return entry


def main(argv: list[str] | None = None) -> dict:
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--sizes", default=None, help="comma list of N (default 1e3,1e4,1e5,1e6; quick: 1e3,1e4)")
    p.add_argument("--layers", type=int, default=24, help="layers of the model (offline 0.5B: 24)")
    p.add_argument("--dim", type=int, default=128, help="retrieval-key size per layer (kv_heads x head_dim)")
    p.add_argument("--k", type=int, default=64, help="blocks retrieved per layer (ReKV: 64)")
    p.add_argument("--max-gb", type=float, default=1.5, help="largest key catalog built, in GB")
    args = p.parse_args(argv)
    common.resolve_args(args, repeats=7, quick_repeats=2)
    if args.model is not None and args.model not in (common.DEFAULT_MODEL, common.QUICK_MODEL):
        common.log("retrieval_scoring: --model is not used (the catalog is synthetic; see --layers/--dim)")
    sizes = [
        int(float(x)) for x in (args.sizes or ("1e3,1e4" if args.quick else "1e3,1e4,1e5,1e6")).split(",")
    ]
    if any(n < 1 for n in sizes) or args.layers < 1 or args.dim < 1 or args.k < 1:
        raise InputError("--sizes, --layers, --dim and --k must be positive")
    if args.threads:
        import faiss

        faiss.omp_set_num_threads(args.threads)  # FAISS's OpenMP pool, like torch's (--threads)

    results: dict = {"layers": args.layers, "dim": args.dim, "k": args.k, "sizes": {}}
    rows = []
    for n in sizes:
        entry = measure(n, args)
        results["sizes"][str(n)] = entry
        built = entry["layers_built"]
        ms = {name: c["ms_per_query_all_layers"] for name, c in entry["cases"].items()}
        rows.append(
            [
                f"{n:.0e}" if n >= 1000 else str(n),
                f"{built}/{args.layers}" + (" (scaled)" if built < args.layers else ""),
                common.fmt(ms["torch kernel"], 2),
                common.fmt(ms["torch kernel, layer-major"], 2),
                common.fmt(ms["faiss kernel"], 2),
                common.fmt(entry["faiss_speedup_kernel"], 2),
                common.fmt(ms["torch select"], 1),
                common.fmt(ms["faiss select"], 1),
                common.fmt(entry["faiss_speedup_select"], 2),
                f"{entry['topk_agreement_torch_vs_faiss']:.3f}",
            ]
        )
    table = common.markdown_table(
        [
            "blocks N",
            "layers built",
            "torch kernel ms",
            "torch layer-major ms",
            "faiss kernel ms",
            "faiss speed-up",
            "torch select ms",
            "faiss select ms",
            "faiss speed-up (select)",
            "top-k agreement",
        ],
        rows,
    )
    table += (
        f"\n\nms per query for all {args.layers} layers (key size {args.dim}, k = {args.k}); medians of "
        f"{args.repeats} interleaved rounds (at most 3 at 1e6). kernel = score + top-k (torch: "
        "Catalog.scores on the [N, L, D] catalog; layer-major: the same product on an [L, N, D] copy "
        "made once); select = ReKV's TopK.select. 'scaled': only some layers fit in memory; kernels are "
        "scaled linearly to all layers, select times extrapolated through measurements on all and half "
        "the layers built."
    )
    return common.finish(args, "retrieval_scoring", results, table)


if __name__ == "__main__":
    main()
