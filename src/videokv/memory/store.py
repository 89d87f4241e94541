"""The block store: memory blocks in tiers (accelerator, host RAM, disk) under byte budgets.

A new block goes to the fastest tier; when a tier is over its budget, its oldest blocks spill to the next
tier (accelerator -> host -> disk). On CUDA, host blocks are pinned and copies to the accelerator are
asynchronous (non_blocking); on a CPU-only machine the host tier is the resident one. Disk blocks are
safetensors files, written atomically and loaded lazily when a question retrieves them. Block metadata
(times, kinds, positions, retrieval keys) always stays in RAM. Byte counts are exact: the K/V bytes held.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from videokv.errors import ConfigError
from videokv.memory.block import KVBlock

TIERS = ("device", "host", "disk")


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
        self._spill_dir = Path(spill_dir) if spill_dir is not None else None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.blocks: list[KVBlock] = []
        self.tier: list[str] = []
        self.nbytes_of: list[int] = []
        self.used = {t: 0 for t in TIERS}

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
        self._rebalance()

    def _tiers(self) -> list[str]:
        return [t for t in TIERS if t != "device" or self.has_device_tier]

    def _rebalance(self) -> None:
        tiers = self._tiers()
        for upper, lower in zip(tiers, tiers[1:]):
            cap = self.budgets[upper]
            if cap is None:
                continue
            for i in range(len(self.blocks)):  # oldest first
                if self.used[upper] <= cap:
                    break
                if self.tier[i] == upper:
                    self._move(i, lower)

    def _move(self, i: int, tier: str) -> None:
        block, old = self.blocks[i], self.tier[i]
        self.blocks[i] = self._place(block, tier, old)
        self.used[old] -= self.nbytes_of[i]
        self.used[tier] += self.nbytes_of[i]
        self.tier[i] = tier

    def _place(self, block: KVBlock, tier: str, old: str | None = None) -> KVBlock:
        if tier == "device":
            return block.to(self.compute, non_blocking=True)
        if tier == "host":
            if old == "disk":
                block = self._read(block)
            return block.to("cpu", pin=self.has_device_tier)
        path = self.spill_dir / f"block-{block.index:08d}.safetensors"
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
        if self._spill_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="videokv-spill-")
            self._spill_dir = Path(self._tmp.name)
        self._spill_dir.mkdir(parents=True, exist_ok=True)
        return self._spill_dir

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
        if block.device != self.compute:
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
        """Forget every block after the first `n` (rollback of a failed ingest)."""
        for i in range(len(self.blocks) - 1, n - 1, -1):
            self.used[self.tier[i]] -= self.nbytes_of[i]
            if self.tier[i] == "disk":
                Path(self.blocks[i].meta["path"]).unlink(missing_ok=True)
        del self.blocks[n:], self.tier[n:], self.nbytes_of[n:]
