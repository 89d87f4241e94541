"""The block store: memory blocks in tiers (accelerator, host RAM, disk) under byte budgets.

A new block goes to the fastest tier; when a tier is over its budget, its oldest blocks spill to the next
tier (accelerator -> host -> disk), so every tier holds a contiguous run of blocks and the resident ones
are the newest. On CUDA, host blocks are pinned and copies to the accelerator are asynchronous
(non_blocking); on a CPU-only machine the host tier is the resident one. Disk blocks are safetensors files
in a folder of this store's own (under spill_dir, removed with the store), written atomically and loaded
lazily when a question retrieves them. Block metadata (times, kinds, positions, retrieval keys) always
stays in RAM. A block restored from a journal may come without its K/V (a *lazy* block: `meta["fetch"]`
reads them from the journal's storage): it is placed and counted like any other, and its K/V are fetched
the first time a question needs them (then kept, if its tier is a resident one). Byte counts are exact:
the K/V bytes held (a block's tensors are compacted when stored, so a view never keeps a larger buffer
alive).

Where each block lives depends only on the sequence of blocks and the budgets: after `truncate` (the
rollback of a failed ingest) spilled blocks come back up as far as the budgets allow, so the store is
exactly as it was when it last held those blocks.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from videokv.errors import ConfigError
from videokv.memory.block import KVBlock

TIERS = ("device", "host", "disk")
PREFETCH_THREADS = 8
STUB_KEYS = ("path", "layers", "fetch", "nbytes", "object", "row", "rotated", "present")
HOT, COLD = 0, 1
LANES = (HOT, COLD)


def _compact(t: torch.Tensor) -> torch.Tensor:
    """`t` itself if it is contiguous and owns exactly its bytes; otherwise a compact copy."""
    if t.is_contiguous() and t.untyped_storage().nbytes() == t.numel() * t.element_size():
        return t
    return t.clone(memory_format=torch.contiguous_format)


class Store:
    """Blocks by id, each in one tier. `compute` is where attention runs (cpu or cuda)."""

    def __init__(
        self,
        compute: torch.device | str = "cpu",
        device_bytes: int | None = None,
        host_bytes: int | None = None,
        spill_dir: str | Path | None = None,
        device_tier: bool | None = None,
    ):
        self.compute = torch.device(compute)
        # None: an accelerator tier exactly when attention runs on one; True on a CPU keeps a separate
        # fastest tier in RAM (the three-tier placement, testable on a CPU-only machine)
        self.has_device_tier = self.compute.type != "cpu" if device_tier is None else device_tier
        self.budgets = {"device": device_bytes, "host": host_bytes, "disk": None}
        self._spill_root = Path(spill_dir) if spill_dir is not None else None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._serial = 0  # spill files are numbered per store, so names never collide
        self.blocks: list[KVBlock] = []
        self.tier: list[str] = []
        self.nbytes_of: list[int] = []
        self.tokens_of: list[int] = []  # per block, its tokens at the first layer
        self.n_tokens = 0  # their sum (kept as blocks come and go: no pass over the store per question)
        self.lane: list[int] = []  # 0: hot (may use every tier), 1: cold (never the fastest tier)
        self.used = {t: 0 for t in TIERS}
        self._lane_used = [{t: 0 for t in TIERS} for _ in LANES]
        self._rows: tuple[list[int], list[int]] = ([], [])  # block ids of each lane, oldest first
        # each lane's tier t holds its rows [lo[lane][t], lo[lane][next faster tier]) (its fastest tier: up
        # to the end); the slowest tier starts at 0
        self._lo = [{t: 0 for t in TIERS} for _ in LANES]

    # ---- adding and spilling ---------------------------------------------------------------------------
    def check_fits(self, nbytes: int, cold: bool = False) -> None:
        """Raise ConfigError, before anything changes, if a block of `nbytes` exceeds a resident budget."""
        for tier in self._lane_tiers(int(cold))[:-1]:
            cap = self.budgets[tier]
            if cap is not None and nbytes > cap:
                raise ConfigError(
                    f"the {tier} memory budget ({cap} bytes) is smaller than one block ({nbytes} "
                    f"bytes); raise {tier}_bytes (--memory-set {tier}_bytes=N) or keep fewer tokens"
                )

    def add(self, block: KVBlock, cold: bool = False) -> None:
        """Store `block` in the fastest tier its lane may use: a `cold` block (one the policy prefers in
        slower memory, such as Video-X²L's L-KV) never takes the fastest tier (the accelerator; on a CPU-only
        machine the host, so cold blocks go to disk) and yields its tier to hot blocks under a budget."""
        lane = int(cold)
        nbytes = int(block.meta["nbytes"]) if "fetch" in block.meta else block.nbytes
        self.check_fits(nbytes, cold)
        first = self._lane_tiers(lane)[0]
        tokens = int(block.positions[0].shape[-1]) if block.positions else 0  # per head if per head
        block = self._place(block, first)
        i = len(self.blocks)
        self.blocks.append(block)
        self.tier.append(first)
        self.nbytes_of.append(nbytes)
        self.tokens_of.append(tokens)
        self.n_tokens += tokens
        self.lane.append(lane)
        self._rows[lane].append(i)
        self.used[first] += nbytes
        self._lane_used[lane][first] += nbytes
        self._settle()

    def _tiers(self) -> list[str]:
        return [t for t in TIERS if t != "device" or self.has_device_tier]

    def _lane_tiers(self, lane: int) -> list[str]:
        tiers = self._tiers()
        return tiers[1:] if lane == 1 and len(tiers) > 1 else tiers

    def _settle(self) -> None:
        """Place every block where the budgets say, fastest tier first: in each tier the hot lane holds the
        longest run of its newest remaining blocks that fits the budget, and the cold lane the longest run of
        its newest remaining blocks that fits what is left. Promotion is best effort: a block that cannot be
        read back stays where it is (this runs while rolling back after an error)."""
        tiers = self._tiers()
        for k, tier in enumerate(tiers[:-1]):
            cap = self.budgets[tier]
            self._promote(HOT, tier, tiers[k + 1 :], cap, self._lane_used[HOT])
            while cap is not None and self.used[tier] > cap:  # the cold lane yields first
                lane = next((ln for ln in (COLD, HOT) if self._in_tier(ln, tier)), None)
                if lane is None:
                    break
                pos = self._lo[lane][tier]
                self._move(self._rows[lane][pos], tiers[k + 1])
                self._lo[lane][tier] = pos + 1
            if tier in self._lane_tiers(COLD):
                self._promote(COLD, tier, tiers[k + 1 :], cap, self.used)

    def _in_tier(self, lane: int, tier: str) -> bool:
        """Whether `lane` has blocks in `tier`."""
        tiers = self._lane_tiers(lane)
        if tier not in tiers:
            return False
        k = tiers.index(tier)
        end = len(self._rows[lane]) if k == 0 else self._lo[lane][tiers[k - 1]]
        return self._lo[lane][tier] < end

    def _promote(self, lane: int, tier: str, lower: list[str], cap: int | None, used: dict[str, int]) -> None:
        """Bring `lane`'s newest blocks below `tier` up while `used[tier]` stays within `cap`."""
        rows, lo = self._rows[lane], self._lo[lane]
        while lo[tier] > 0:
            j = rows[lo[tier] - 1]
            if cap is not None and used[tier] + self.nbytes_of[j] > cap:
                return
            try:
                self._move(j, tier)
            except Exception:  # keep the rollback going; the block stays where it is
                return
            lo[tier] -= 1
            for t in lower:
                lo[t] = min(lo[t], lo[tier])

    def _move(self, i: int, tier: str) -> None:
        block, old = self.blocks[i], self.tier[i]
        self.blocks[i] = self._place(block, tier, old)
        if old == "disk" and "path" in block.meta:
            Path(block.meta["path"]).unlink(missing_ok=True)
        self.used[old] -= self.nbytes_of[i]
        self.used[tier] += self.nbytes_of[i]
        self._lane_used[self.lane[i]][old] -= self.nbytes_of[i]
        self._lane_used[self.lane[i]][tier] += self.nbytes_of[i]
        self.tier[i] = tier

    def _place(self, block: KVBlock, tier: str, old: str | None = None) -> KVBlock:
        if "fetch" in block.meta:  # a lazy block stays lazy wherever it goes: its K/V are in storage
            return block
        if tier in ("device", "host"):
            if old == "disk":
                block = self._read(block)
            keys, values = [_compact(k) for k in block.keys], [_compact(v) for v in block.values]
            block = dataclasses.replace(block, keys=keys, values=values)
            if tier == "device":
                return block.to(self.compute, non_blocking=True)
            return block.to("cpu", pin=self.compute.type == "cuda")
        path = self.spill_dir / f"block-{self._serial:08d}.safetensors"
        self._serial += 1
        if old != "disk":
            tensors = {f"k{i}": k.contiguous().cpu() for i, k in enumerate(block.keys)}
            tensors.update({f"v{i}": v.contiguous().cpu() for i, v in enumerate(block.values)})
            tmp = path.with_suffix(".tmp")
            save_file(tensors, str(tmp))
            os.replace(tmp, path)
        stub = KVBlock(
            block.index,
            block.unit,
            block.kind,
            block.t0,
            block.t1,
            [],
            [],
            block.positions,
            block.rkey,
            block.level,
            block.text,
            block.pinned,
            dict(block.meta, path=str(path)),
            block.origin,
        )
        stub.meta["layers"] = block.num_layers
        return stub

    @property
    def spill_dir(self) -> Path:
        """This store's own folder of spill files (created on first use under spill_dir, or the system's
        temporary folder; removed when the store is garbage-collected)."""
        if self._tmp is None:
            root = self._spill_root
            try:
                if root is not None:
                    root.mkdir(parents=True, exist_ok=True)
                self._tmp = tempfile.TemporaryDirectory(
                    prefix="videokv-spill-", dir=None if root is None else str(root)
                )
            except OSError as e:
                raise ConfigError(
                    f"cannot create a spill folder in {root or tempfile.gettempdir()}: {e}; "
                    f"set spill_dir to a writable folder"
                ) from e
        return Path(self._tmp.name)

    # ---- reading ------------------------------------------------------------------------------------
    def _read(self, stub: KVBlock) -> KVBlock:
        data = stub.meta["fetch"](stub.meta) if "fetch" in stub.meta else load_file(stub.meta["path"])
        n = stub.meta["layers"]
        return KVBlock(
            stub.index,
            stub.unit,
            stub.kind,
            stub.t0,
            stub.t1,
            [data[f"k{i}"] for i in range(n)],
            [data[f"v{i}"] for i in range(n)],
            stub.positions,
            stub.rkey,
            stub.level,
            stub.text,
            stub.pinned,
            {k: v for k, v in stub.meta.items() if k not in STUB_KEYS},
            stub.origin,
        )

    def prefetch(self, rows: list[int]) -> None:
        """Fetch the K/V of the lazy blocks among `rows` concurrently (from an object store, one request
        each), ahead of the `get`s that read them: a question's blocks arrive in about one round trip."""
        lazy = [i for i in rows if "fetch" in self.blocks[i].meta]
        if len(lazy) < 2:
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(PREFETCH_THREADS, len(lazy))) as pool:
            fetched = list(pool.map(lambda i: self._read(self.blocks[i]), lazy))
        for i, block in zip(lazy, fetched, strict=True):
            if self.tier[i] != "disk":  # held from now on, as `get` would; a disk-tier block stays lazy
                self.blocks[i] = self._place(block, self.tier[i])

    def get(self, i: int) -> KVBlock:
        """Block `i` with its K/V on the compute device (read from disk / copied from host if needed)."""
        block = self.blocks[i]
        if self.tier[i] == "disk" or "fetch" in block.meta:
            lazy = "fetch" in block.meta
            block = self._read(block)
            if lazy and self.tier[i] != "disk":  # fetched once, then held like any resident block
                block = self._place(block, self.tier[i])
                self.blocks[i] = block
        if block.num_layers and block.device != self.compute:
            block = block.to(self.compute, non_blocking=True)
        return block

    # ---- accounting, rollback ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.blocks)

    def bytes_by_tier(self) -> dict[str, int]:
        return dict(self.used)

    @property
    def resident_bytes(self) -> int:
        """Bytes held in memory (accelerator + host), not on disk."""
        return self.used["device"] + self.used["host"]

    def truncate(self, n: int) -> None:
        """Forget every block after the first `n` (rollback of a failed ingest), delete their spill files,
        and bring spilled blocks back up as far as the budgets allow (as when the store last held n)."""
        if n < 0:
            raise ValueError(f"truncate: n must be >= 0; got {n}")
        n = min(n, len(self.blocks))
        for i in range(len(self.blocks) - 1, n - 1, -1):
            self.used[self.tier[i]] -= self.nbytes_of[i]
            self._lane_used[self.lane[i]][self.tier[i]] -= self.nbytes_of[i]
            if self.tier[i] == "disk" and "path" in self.blocks[i].meta:
                Path(self.blocks[i].meta["path"]).unlink(missing_ok=True)
        self.n_tokens -= sum(self.tokens_of[n:])
        del self.blocks[n:], self.tier[n:], self.nbytes_of[n:], self.lane[n:], self.tokens_of[n:]
        for lane, rows in enumerate(self._rows):
            while rows and rows[-1] >= n:
                rows.pop()
            for t in TIERS:
                self._lo[lane][t] = min(self._lo[lane][t], len(rows))
        self._settle()
