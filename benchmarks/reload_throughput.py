"""KV reload throughput: moving a question's blocks from the host and disk tiers to where attention runs.

Blocks have the offline model's shape by default (24 layers x 2 KV heads x 64 head dims, 66 tokens per
frame block at 64 visual tokens per frame, float32: 1.6 MB each); a question reloads k = 64 of them (ReKV's
top-64), out of a store of `--blocks`. Everything is compared with the machine's measured copy bandwidth
(a large `torch.Tensor.copy_` and `numpy.copyto` of the same number of bytes), side by side, interleaved.

Cases (bytes moved / seconds, in GB/s; 1 GB = 1e9 bytes):
- `memcpy (torch)` / `memcpy (numpy)`: the reference: one copy of the same bytes, preallocated target;
- `clone (new buffer)`: the same copy into freshly allocated memory (the kernel maps and zeroes new pages
  on first touch), which is what assembling a new context does;
- `host get`: `Store.get` of host-tier blocks. On a CPU-only machine the host tier *is* where attention
  runs, so this is zero-copy (its GB/s is not a bandwidth: nothing is moved);
- `host -> context`: host get + `assemble` (keep positions) of the question's context: the one copy a
  question pays on the CPU;
- `host -> context (compact)`: the same with compact positions (rekv, streamkv, uniform): every block's
  keys are also re-rotated to their new positions;
- `disk get (warm)`: `Store.get` of spilled blocks (safetensors files) whose pages are in the OS cache.
  safetensors' default loader memory-maps the file, so the tensors it returns are read lazily, when first
  touched: this is mostly the cost of opening and mapping 64 files;
- `disk get (cold)`: the same after evicting the files from the page cache (posix_fadvise DONTNEED; the
  eviction is not timed). On a virtual disk the host may still cache them;
- `disk -> context (warm / cold)`: disk get + assemble, where the mapped pages are actually read: the
  real cost of reloading from the disk tier on the CPU.
On CUDA also: `memcpy H2D pinned` / `memcpy H2D pageable` (the reference), `host(pinned) -> cuda` (the
store's host tier is pinned, copies are non_blocking) vs `host(pageable) -> cuda`, and `disk -> cuda`.

    python benchmarks/reload_throughput.py
    python benchmarks/reload_throughput.py --device cuda
    python benchmarks/reload_throughput.py --quick
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

from videokv.errors import InputError  # noqa: E402
from videokv.memory.assemble import assemble  # noqa: E402
from videokv.memory.block import KVBlock  # noqa: E402
from videokv.memory.store import Store  # noqa: E402


def make_block(i: int, layers: int, heads: int, tokens: int, dim: int, dtype: torch.dtype) -> KVBlock:
    g = torch.Generator().manual_seed(i)
    keys = [torch.randn(heads, tokens, dim, generator=g).to(dtype) for _ in range(layers)]
    values = [torch.randn(heads, tokens, dim, generator=g).to(dtype) for _ in range(layers)]
    # M-RoPE positions of a frame: t constant, h and w over a small grid
    j = torch.arange(tokens)
    start = i * tokens
    pos = torch.stack([torch.full_like(j, start), start + j // 8, start + j % 8])
    return KVBlock(
        i, i, "frame", float(i), float(i + 1), keys, values, [pos] * layers, torch.zeros(layers, heads * dim)
    )


def make_rotary(head_dim: int) -> torch.nn.Module:
    """The offline model's rotary embedding (Qwen2-VL M-RoPE, theta 1e6) for keys of `head_dim`."""
    from transformers import Qwen2VLTextConfig
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLRotaryEmbedding

    quarter = head_dim // 2
    section = [quarter - 2 * (3 * quarter // 8), 3 * quarter // 8, 3 * quarter // 8]
    config = Qwen2VLTextConfig(
        hidden_size=head_dim * 4,
        num_attention_heads=4,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": section},
    )
    return Qwen2VLRotaryEmbedding(config=config)


def evict(paths: list[Path]) -> None:
    """Drop the files' pages from the OS page cache (they were fsynced, so none is dirty)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def fsync_all(paths: list[Path]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def main(argv: list[str] | None = None) -> dict:
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--blocks", type=int, default=None, help="blocks in the store (default 256; quick 16)")
    p.add_argument("--k", type=int, default=None, help="blocks reloaded per question (default 64; quick 4)")
    p.add_argument("--layers", type=int, default=None, help="default 24 (offline model); quick 2")
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=None, help="default 64; quick 16")
    p.add_argument("--tokens", type=int, default=None, help="tokens per block (default 66; quick 6)")
    p.add_argument("--kv-dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--spill-dir", type=Path, default=None, help="where the disk tier lives (default: /tmp)")
    args = p.parse_args(argv)
    common.resolve_args(args, repeats=7, quick_repeats=2)
    quick = args.quick
    args.blocks = args.blocks or (16 if quick else 256)
    args.k = args.k or (4 if quick else 64)
    args.layers = args.layers or (2 if quick else 24)
    args.head_dim = args.head_dim or (16 if quick else 64)
    args.tokens = args.tokens or (6 if quick else 66)
    if args.k > args.blocks - 1 or min(args.blocks, args.k, args.layers, args.kv_heads, args.tokens) < 1:
        raise InputError("need 1 <= --k < --blocks and positive shapes")
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = getattr(torch, args.kv_dtype)
    shape = (args.layers, args.kv_heads, args.tokens, args.head_dim)
    common.log(f"reload_throughput: {args.blocks} blocks of {shape}, reloading {args.k}")

    blocks = [make_block(i, *shape, dtype) for i in range(args.blocks)]
    block_bytes = blocks[0].nbytes
    # host tier: on the CPU the resident tier; on CUDA a device budget of one block pushes the rest to
    # (pinned) host memory
    host = Store(device, device_bytes=block_bytes if cuda else None, host_bytes=None)
    # disk tier: a host (and device) budget of one block spills everything else
    disk = Store(
        device, device_bytes=block_bytes if cuda else None, host_bytes=block_bytes, spill_dir=args.spill_dir
    )
    for b in blocks:
        host.add(b)
        disk.add(b)
    rng = np.random.default_rng(args.seed)
    rows = sorted(rng.choice(args.blocks - 2, size=args.k, replace=False).tolist())
    assert all(host.tier[r] == ("host") for r in rows) and all(disk.tier[r] == "disk" for r in rows)
    files = [Path(disk.blocks[r].meta["path"]) for r in rows]
    fsync_all(files)
    moved = block_bytes * args.k
    sinks_k = [torch.zeros(1, args.kv_heads, 4, args.head_dim, dtype=dtype, device=device)] * args.layers

    src = (
        torch.randn(moved // 4).to(dtype) if dtype == torch.float32 else torch.zeros(moved // 2, dtype=dtype)
    )
    dst = torch.empty_like(src)
    src_np, dst_np = src.view(torch.uint8).numpy(), dst.view(torch.uint8).numpy()

    def get_all(store: Store) -> list[KVBlock]:
        return [store.get(r) for r in rows]

    rotary = make_rotary(args.head_dim).to(device)

    def to_context(loaded: list[KVBlock], positions: str = "keep"):
        return assemble(sinks_k, sinks_k, 4, [loaded] * args.layers, positions, rotary, 10**6)

    def cold(fn):
        def run() -> float:
            evict(files)
            seconds, _ = common.timed(fn, device)
            return seconds

        return run

    cases = {
        "memcpy (torch)": lambda: dst.copy_(src),
        "memcpy (numpy)": lambda: np.copyto(dst_np, src_np),
        "clone (new buffer)": lambda: src.clone(),
        "host get": lambda: get_all(host),
        "host -> context": lambda: to_context(get_all(host)),
        "host -> context (compact)": lambda: to_context(get_all(host), "compact"),
        "disk get (warm)": lambda: get_all(disk),
        "disk get (cold)": cold(lambda: get_all(disk)),
        "disk -> context (warm)": lambda: to_context(get_all(disk)),
        "disk -> context (cold)": cold(lambda: to_context(get_all(disk))),
    }
    if cuda:
        pinned = torch.empty(src.shape, dtype=src.dtype, pin_memory=True).copy_(src)
        pageable_blocks = [blocks[r] for r in rows]
        cases.update(
            {
                "memcpy H2D pinned": lambda: pinned.to(device, non_blocking=True),
                "memcpy H2D pageable": lambda: src.to(device, non_blocking=True),
                "host(pinned) -> cuda": lambda: get_all(host),
                "host(pageable) -> cuda": lambda: [b.to(device, non_blocking=True) for b in pageable_blocks],
            }
        )
        del cases["host get"]
        cases["disk -> cuda"] = cases.pop("disk get (cold)")

    times = common.interleaved(cases, args.repeats, warmup=1, device=device)

    # check: what came back is what was stored
    loaded = get_all(disk)
    exact = all(
        torch.equal(a.keys[layer].cpu(), blocks[r].keys[layer])
        and torch.equal(a.values[layer].cpu(), blocks[r].values[layer])
        for a, r in zip(loaded, rows)
        for layer in range(args.layers)
    )
    reference = "memcpy H2D pinned" if cuda else "memcpy (torch)"
    results: dict = {
        "block_bytes": block_bytes,
        "bytes_per_question": moved,
        "k": args.k,
        "blocks": args.blocks,
        "reloaded_blocks_exact": exact,
        "reference": reference,
        "cases": {},
    }
    ref_gbs = moved / common.median(times[reference]) / 1e9
    rows_out = []
    for name, ts in times.items():
        s = common.summary(ts)
        gbs = moved / s["median"] / 1e9
        results["cases"][name] = {"seconds": ts, **s, "gb_per_s": gbs, "fraction_of_reference": gbs / ref_gbs}
        zero_copy = name == "host get" and not cuda
        rows_out.append(
            [
                name,
                common.fmt(s["median"] * 1e3, 2),
                "zero-copy" if zero_copy else common.fmt(gbs, 2),
                "-" if zero_copy else common.fmt(gbs / ref_gbs, 2),
            ]
        )
    table = common.markdown_table(["case", "ms per question", "GB/s", f"x {reference}"], rows_out)
    table += (
        f"\n\n{args.k} blocks of {block_bytes / 2**20:.2f} MiB ({shape[0]} layers x {shape[1]} kv heads x "
        f"{shape[2]} tokens x {shape[3]} dims, K+V, {args.kv_dtype}) = {moved / 2**20:.1f} MiB per question, "
        f"from a store of {args.blocks}; medians of {args.repeats} interleaved rounds on {args.device}."
    )
    return common.finish(args, "reload_throughput", results, table)


if __name__ == "__main__":
    main()
