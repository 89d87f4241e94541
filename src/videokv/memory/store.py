"""The block store: memory blocks in tiers (accelerator, host RAM, disk) under byte budgets.

A new block goes to the fastest tier; when a tier is over its budget, its oldest blocks spill to the next
tier (accelerator -> host -> disk), so every tier holds a contiguous run of blocks and the resident ones
are the newest. On CUDA, host blocks are pinned and copies to the accelerator are asynchronous
(non_blocking); on a CPU-only machine the host tier is the resident one. Disk blocks are safetensors files
in a folder of this store's own (under spill_dir, removed with the store), written atomically and loaded
lazily when a question retrieves them. Block metadata (times, kinds, positions, retrieval keys) always
stays in RAM. Byte counts are exact: the K/V bytes held (a block's tensors are compacted when stored, so
a view never keeps a larger buffer alive).

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
    ):
        self.compute = torch.device(compute)
        self.has_device_tier = self.compute.type != "cpu"
        self.budgets = {"device": device_bytes, "host": host_bytes, "disk": None}
        self._spill_root = Path(spill_dir) if spill_dir is not None else None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._serial = 0  # spill files are numbered per store, so names never collide
        self.blocks: list[KVBlock] = []
        self.tier: list[str] = []
        self.nbytes_of: list[int] = []
        self.used = {t: 0 for t in TIERS}
        # each tier holds the blocks [lo[tier], lo[next faster tier]) (the fastest one: up to the end)
        self._lo = {t: 0 for t in TIERS}

    # ---- adding and spilling ---------------------------------------------------------------------------
    def check_fits(self, nbytes: int) -> None:
        """Raise ConfigError, before anything changes, if a block of `nbytes` exceeds a resident budget."""
        for tier in self._tiers()[:-1]:
            cap = self.budgets[tier]
            if cap is not None and nbytes > cap:
                raise ConfigError(
                    f"the {tier} memory budget ({cap} bytes) is smaller than one block ({nbytes} "
                    f"bytes); raise {tier}_bytes (--memory-set {tier}_bytes=N) or keep fewer tokens"
                )

    def add(self, block: KVBlock) -> None:
        self.check_fits(block.nbytes)
        first = self._tiers()[0]
        block = self._place(block, first)
        self.blocks.append(block)
        self.tier.append(first)
        self.nbytes_of.append(block.nbytes)
        self.used[first] += block.nbytes
        self._spill()

    def _tiers(self) -> list[str]:
        return [t for t in TIERS if t != "device" or self.has_device_tier]

    def _spill(self) -> None:
        """Move the oldest blocks of every tier over its budget down one tier."""
        tiers = self._tiers()
        for upper, lower in zip(tiers, tiers[1:]):
            cap = self.budgets[upper]
            while cap is not None and self.used[upper] > cap and self._lo[upper] < len(self.blocks):
                i = self._lo[upper]
                self._move(i, lower)
                self._lo[upper] = i + 1

    def _promote(self) -> None:
        """Bring the newest lower-tier blocks up while they fit (fastest tier first). Best effort: a block
        that cannot be read back stays where it is (this runs while rolling back after an error)."""
        tiers = self._tiers()
        for k, upper in enumerate(tiers[:-1]):
            cap = self.budgets[upper]
            while self._lo[upper] > 0:
                j = self._lo[upper] - 1
                if cap is not None and self.used[upper] + self.nbytes_of[j] > cap:
                    break
                try:
                    self._move(j, upper)
                except Exception:  # keep the rollback going; the block stays where it is
                    return
                self._lo[upper] = j
                for lower in tiers[k + 1 :]:
                    self._lo[lower] = min(self._lo[lower], j)

    def _move(self, i: int, tier: str) -> None:
        block, old = self.blocks[i], self.tier[i]
        self.blocks[i] = self._place(block, tier, old)
        if old == "disk":
            Path(block.meta["path"]).unlink(missing_ok=True)
        self.used[old] -= self.nbytes_of[i]
        self.used[tier] += self.nbytes_of[i]
        self.tier[i] = tier

    def _place(self, block: KVBlock, tier: str, old: str | None = None) -> KVBlock:
        if tier in ("device", "host"):
            if old == "disk":
                block = self._read(block)
            keys, values = [_compact(k) for k in block.keys], [_compact(v) for v in block.values]
            block = dataclasses.replace(block, keys=keys, values=values)
            if tier == "device":
                return block.to(self.compute, non_blocking=True)
            return block.to("cpu", pin=self.has_device_tier)
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
        data = load_file(stub.meta["path"])
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
            {k: v for k, v in stub.meta.items() if k not in ("path", "layers")},
        )

    def get(self, i: int) -> KVBlock:
        """Block `i` with its K/V on the compute device (read from disk / copied from host if needed)."""
        block = self.blocks[i]
        if self.tier[i] == "disk":
            block = self._read(block)
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
            if self.tier[i] == "disk":
                Path(self.blocks[i].meta["path"]).unlink(missing_ok=True)
        del self.blocks[n:], self.tier[n:], self.nbytes_of[n:]
        for t in TIERS:
            self._lo[t] = min(self._lo[t], n)
        self._promote()
