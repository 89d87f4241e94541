"""Durability: a session's memory on disk as it streams, so a SIGKILL loses nothing committed.

A journal is a folder:

- `blocks/00000000.safetensors`, ...: one file per memory block (its K/V, positions per layer, retrieval key;
  its metadata in the safetensors header), appended as blocks are committed and never rewritten;
- `context/<a>-<b>-<n>.safetensors`: the ingest context's K/V in segments, appended as the context grows
  (segment [a, b) holds the stream tokens a..b-1, counted past the attention sinks; tokens are never changed
  once in the context, only dropped from the front, so a commit writes only the tokens added since the last);
  segments wholly dropped from the context are deleted;
- `state.safetensors`: the attention sinks' K/V and, in its header, everything else (the engine's scalars,
  unit sizes, context-mode blocks, the memory config, the model identity, the number of committed blocks,
  the context segments, and the session's own fields: fps, name, creation time, live source).

Every file is written to a temporary name, fsynced and renamed into place (then the folder is fsynced), and
the state file is replaced last: the state names how many blocks are committed, so a block file written by
a commit that a kill interrupted is ignored (and deleted) when the journal is read. A commit follows every
ingest step, after the open memory unit is closed (`engine.flush()`); presets without blocks (`full`,
`window`) keep their whole memory in the context. Each commit writes what the step added (its blocks, its
context tokens) plus the small state file, so journaling a long stream costs time linear in its length.

An ingest that must be all-or-nothing across several commits (an upload) is bracketed by `begin()` and
`end()`: `begin` keeps the current state file as `base.safetensors` (a hard link: state files are replaced,
never modified), `end` drops it. If the process dies in between, `recover()` puts the base back, so the
half-done ingest disappears as a whole (its client never got an answer) and a retry does not double it.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save

from videokv.api import Session, VideoQA
from videokv.persist import (
    SaveError,
    block_record,
    block_tensors,
    encode_config,
    model_identity,
    pending_tensors,
    stream_state,
)

FORMAT = "videokv-journal"
VERSION = 3  # 3: the official token layout; pending frames in the state file
STATE = "state.safetensors"
BASE = "base.safetensors"
BLOCKS = "blocks"
CONTEXT = "context"


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a crash leaves either the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class Journal:
    """The on-disk journal of one session (see the module docstring)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.blocks_dir = self.folder / BLOCKS
        self.context_dir = self.folder / CONTEXT
        self.count = 0  # blocks committed (named by the state file)
        self.segments: list[list] = []  # context segments [file name, a, b] the state file names
        self.serial = 0  # numbers segment files, so a rewritten range never reuses a name
        self.base_segments: set[str] = set()  # segments the base of an open batch names

    def exists(self) -> bool:
        return (self.folder / STATE).exists()

    def block_path(self, row: int) -> Path:
        return self.blocks_dir / f"{row:08d}.safetensors"

    # ---- writing --------------------------------------------------------------------------------------
    def commit(self, session: Session, info: dict) -> None:
        """Make `session`'s current memory durable: append its new blocks, then replace the state file.

        If the session has fewer blocks than the journal (an ingest was rolled back), the state is replaced
        first and the extra block files are deleted after.
        """
        engine = session.engine
        engine.flush()
        n = len(engine.store)
        self.blocks_dir.mkdir(parents=True, exist_ok=True)
        self.context_dir.mkdir(parents=True, exist_ok=True)
        for row in range(self.count, n):
            block = engine.store.get(row)
            meta = {"block": json.dumps(block_record(block))}
            write_atomic(self.block_path(row), save(block_tensors(block, "b"), metadata=meta))
        if n > self.count:
            _fsync_dir(self.blocks_dir)
        header = {
            "format": FORMAT,
            "version": VERSION,
            "model": model_identity(engine),
            "config": encode_config(engine.config),
            **stream_state(engine),
            "blocks": n,
            "info": {"fps": session.fps, "system": session.system, **info},
        }
        sinks, segments = self._write_context(engine)
        header["context"] = {"segments": segments, "serial": self.serial}
        state = {**sinks, **pending_tensors(engine)}  # frames waiting for their temporal partner
        write_atomic(self.folder / STATE, save(state, metadata={"journal": json.dumps(header)}))
        _fsync_dir(self.folder)
        if n < self.count:
            self._drop_from(n)
        self.count = n
        self.segments = segments
        self._collect()

    def _write_context(self, engine) -> tuple[dict[str, torch.Tensor], list[list]]:
        """Write the context tokens not yet in a segment; return the sinks' K/V and the segments that cover
        the context now (after a rollback, or if the segments do not line up, one new segment covers it)."""
        layers = engine.cache.layers
        n_sinks, first, end = engine.n_sinks, engine.first_kept, engine.non_sink_tokens
        length = engine.cache.lengths()[0] if layers else 0
        if length != n_sinks + end - first:
            raise SaveError(
                f"the ingest context has {length} tokens, not the sinks ({n_sinks}) + tokens {first}..{end}"
            )
        sinks = {}
        for i, la in enumerate(layers):
            sinks[f"sink.k{i}"] = la.keys[:, :, :n_sinks].contiguous().cpu()
            sinks[f"sink.v{i}"] = la.values[:, :, :n_sinks].contiguous().cpu()
        kept, covered = [], first
        for seg in self.segments:
            _, a, b = seg
            if b <= first:
                continue
            if a > covered or b > end:  # a gap, or tokens the context no longer has (rolled back)
                kept, covered = [], first
                break
            kept.append(seg)
            covered = b
        if end > covered:
            lo = n_sinks + covered - first
            tensors = {}
            for i, la in enumerate(layers):
                tensors[f"k{i}"] = la.keys[:, :, lo:].contiguous().cpu()
                tensors[f"v{i}"] = la.values[:, :, lo:].contiguous().cpu()
            name = f"{covered:012d}-{end:012d}-{self.serial:06d}.safetensors"
            self.serial += 1
            self.context_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(self.context_dir / name, save(tensors))
            _fsync_dir(self.context_dir)
            kept.append([name, covered, end])
        return sinks, kept

    def _collect(self) -> None:
        """Delete context segment files that neither the state nor an open batch's base names."""
        if not self.context_dir.exists():
            return
        keep = {name for name, _, _ in self.segments} | self.base_segments
        for path in self.context_dir.iterdir():
            if path.name not in keep:
                path.unlink(missing_ok=True)

    def _drop_from(self, n: int) -> None:
        """Delete the block files from row `n` on (not named by the state file)."""
        if not self.blocks_dir.exists():
            return
        for path in self.blocks_dir.iterdir():
            stem = path.name.split(".")[0] if not path.name.startswith(".") else ""
            if not stem.isdigit() or int(stem) >= n:
                path.unlink(missing_ok=True)

    def begin(self) -> None:
        """Start an all-or-nothing batch of commits: keep the current state as the base to return to."""
        state, base = self.folder / STATE, self.folder / BASE
        if not state.exists():
            return
        tmp = self.folder / f".{BASE}.tmp"
        tmp.unlink(missing_ok=True)
        os.link(state, tmp)
        os.replace(tmp, base)
        _fsync_dir(self.folder)
        self.base_segments = {name for name, _, _ in self.segments}

    def end(self) -> None:
        """The batch is over (kept, or rewound by a commit of the rolled-back session): drop the base."""
        base = self.folder / BASE
        if base.exists():
            base.unlink()
            _fsync_dir(self.folder)
        self.base_segments = set()
        self._collect()

    def recover(self) -> bool:
        """After a crash: delete temporary files, undo a batch that never ended (returns True then), and
        delete the block and segment files the state does not name."""
        self.remove_temporaries()
        base = self.folder / BASE
        undone = base.exists()
        if undone:
            os.replace(base, self.folder / STATE)
            _fsync_dir(self.folder)
        header = self.read_header()
        self._drop_from(int(header["blocks"]))
        self.segments = header["context"]["segments"]
        self.base_segments = set()
        self._collect()
        return undone

    # ---- reading --------------------------------------------------------------------------------------
    def read_header(self) -> dict:
        """The state file's header (raises SaveError if it is missing or corrupt)."""
        path = self.folder / STATE
        if not path.exists():
            raise SaveError(f"no journal at {self.folder}: {STATE} is missing")
        try:
            with safe_open(str(path), "pt") as f:
                header = json.loads((f.metadata() or {})["journal"])
        except Exception as e:  # safetensors raises several types for garbled files
            raise SaveError(f"{path} is corrupt: {e}") from e
        if header.get("format") != FORMAT or header.get("version") != VERSION:
            raise SaveError(f"{path} is not a videokv journal of version {VERSION}")
        return header

    def read(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """The journal as a save manifest + tensors (what persist.restore_engine takes). Block files beyond
        the committed count (from a commit a kill interrupted) are deleted."""
        header = self.read_header()
        tensors = self._read_context(header)
        n = int(header["blocks"])
        blocks = []
        for row in range(n):
            path = self.block_path(row)
            try:
                with safe_open(str(path), "pt") as f:
                    blocks.append(json.loads((f.metadata() or {})["block"]))
                    for key in f.keys():
                        tensors[f"b{row}{key[1:]}"] = f.get_tensor(key)
            except Exception as e:
                raise SaveError(f"the journal at {self.folder} is missing committed block {row}: {e}") from e
        self._drop_from(n)
        self.segments = header["context"]["segments"]
        self.serial = int(header["context"]["serial"])
        manifest = {**header, "blocks": blocks, "extra": header.get("info", {})}
        return manifest, tensors

    def _read_context(self, header: dict) -> dict[str, torch.Tensor]:
        """The ingest context's K/V per layer (`ctx.k{i}`, `ctx.v{i}`): sinks + the segments, cut to the
        stream tokens still in the context."""
        first = int(header["state"]["first_kept"])
        with safe_open(str(self.folder / STATE), "pt") as f:
            sinks = {key: f.get_tensor(key) for key in f.keys()}
        n_layers = sum(key.startswith("sink.k") for key in sinks)
        parts: dict[str, list[torch.Tensor]] = {f"{kv}{i}": [] for kv in "kv" for i in range(n_layers)}
        covered = first
        for name, a, b in header["context"]["segments"]:
            if a > covered:
                raise SaveError(f"the journal at {self.folder} has a gap in its context at token {covered}")
            try:
                with safe_open(str(self.context_dir / name), "pt") as f:
                    for key in parts:
                        parts[key].append(f.get_tensor(key)[:, :, max(0, covered - a) :])
            except Exception as e:
                raise SaveError(f"the journal at {self.folder} is missing context segment {name}: {e}") from e
            covered = b
        if covered != int(header["state"]["non_sink_tokens"]):
            raise SaveError(f"the journal at {self.folder} has context up to token {covered} only")
        tensors = {f"ctx.{key}": torch.cat([sinks[f"sink.{key}"], *parts[key]], dim=2) for key in parts}
        tensors.update({key: t for key, t in sinks.items() if key.startswith("pending.")})
        return tensors

    def load(self, qa: VideoQA, **config_overrides: object) -> Session:
        """The session the journal holds, on `qa`'s model (which must be the one it was written with).
        `config_overrides` replace memory config fields (e.g. a new spill_dir)."""
        manifest, tensors = self.read()
        session = Session.restore(
            qa, manifest, tensors, (lambda c: c.replace(**config_overrides)) if config_overrides else None
        )
        self.count = len(manifest["blocks"])
        return session

    def remove_temporaries(self) -> None:
        """Delete half-written temporary files a kill left behind."""
        for folder in (self.folder, self.blocks_dir):
            if folder.exists():
                for path in folder.glob(".*.tmp"):
                    with contextlib.suppress(OSError):
                        path.unlink()
