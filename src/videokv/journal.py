"""Durability: a session's memory in storage as it streams, so a crash loses nothing acknowledged and
recovery never invents anything.

A journal is a set of objects under one prefix of a storage backend (a local folder or an S3-compatible
object store: videokv.storage), every one a checksummed record (videokv.storage.records):

- `blocks/<row>-<gen>`: one memory block's K/V. Immutable: written once, under a name no other object ever
  had (`gen` numbers the commit that wrote it), never rewritten.
- `index/<lo>-<hi>-<gen>`: what a question needs of blocks lo..hi-1 without their K/V: metadata, retrieval
  keys, positions, sizes, and the name of each block's object. Parts are merged as the stream grows (a new
  part absorbs the parts before it that are no larger), so there are O(log n) of them.
- `context/<a>-<b>-<gen>`: the ingest context's K/V for stream tokens a..b-1 (past the attention sinks),
  appended as the context grows; parts wholly dropped from the context are deleted.
- `state`: the **commit record**: the attention sinks' K/V, the frames waiting for their temporal partner,
  and a header naming everything else (the engine's scalars, the memory config, the model identity, the
  number of committed blocks, the index parts and context parts that hold them, the session's own fields).
- `base`: while an all-or-nothing batch of commits is open (an upload), a copy of the record it started
  from. `new`: while a session is being created, before its first commit.

**The protocol** (the same on every backend; the backend only promises that one `put` is atomic and durable
when it returns, and that `get` returns the last one):

1. A commit writes its new objects (blocks, index part, context part) first, then the commit record. A
   commit is durable, and only then acknowledged, when the record's `put` returns. A reader never sees a
   record whose objects are missing, because they were all in storage before it.
2. Names are never reused, so an object a record names never changes; objects no record names are garbage,
   deleted after the record that superseded them is durable (and never while the base of an open batch
   names them).
3. `begin` writes `base` (the record of the acknowledged state); `end` deletes it once the batch is
   acknowledged; a batch that fails is undone by writing `base` back as `state` (`rollback`). If that write
   fails (a full disk), `base` stays, the journal knows its state record is stale, and the next successful
   commit (or recovery) fixes it: memory and the durable, acknowledged state never differ.
4. **Recovery** (`recover`), idempotent: if `base` exists, write it as `state`, then delete `base`; verify the
   record and that every object it names exists; delete the objects it does not name. Killed at any point,
   it is run again from the start and gives the same result.
5. Every object is verified when read (its checksum); a record naming a missing object or failing
   verification raises `CorruptData`: the session is quarantined (listed with the reason, kept in storage,
   never served, never deleted).

Loading is lazy: `read` fetches the commit record, the index parts and the context parts (what a question
needs: retrieval keys, sinks, the ingest window, the clock); block K/V are fetched when a question selects
them (through the backend's local cache, for an object store), so the time to bring a session back does
not grow with the hours of stream behind it.
"""

from __future__ import annotations

import contextlib
import json
from functools import partial

import torch

from videokv.api import Session, VideoQA
from videokv.errors import CorruptData, StorageError
from videokv.persist import (
    SaveError,
    block_record,
    encode_config,
    model_identity,
    pending_tensors,
    stream_state,
)
from videokv.storage import Backend, Missing, open_backend, pack, unpack
from videokv.storage.records import checksum

FORMAT = "videokv-journal"
VERSION = 4  # 4: objects on a storage backend, checksummed records, immutable names, lazy blocks
STATE = "state"
BASE = "base"
NEW = "new"
BLOCKS = "blocks"
INDEX = "index"
CONTEXT = "context"


def _gen_name(folder: str, *parts: int, gen: int) -> str:
    return f"{folder}/" + "-".join(f"{p:012d}" for p in parts) + f"-{gen:08d}"


class Journal:
    """The stored journal of one session (see the module docstring). `store`: a Backend, a folder or a URL
    (the session's own prefix)."""

    def __init__(self, store: Backend | str, endpoint: str | None = None):
        self.store = open_backend(store, endpoint)
        self.count = 0  # blocks the journal holds for the memory (rows 0..count-1)
        self.rows: list[dict] = []  # per committed row: {"name", "crc", "nbytes"} (its block object)
        self.index: list[list] = []  # index parts [name, lo, hi] the record names
        self.segments: list[list] = []  # context parts [name, a, b] the record names
        self.gen = 0  # numbers the objects a commit writes, so no name is ever reused
        self.record: bytes | None = None  # the acknowledged commit record (what memory is)
        self.base: tuple | None = None  # an open batch's (record, journal fields)
        # a rolled-back batch's base is still in storage (writing it back failed): the next commit removes it
        self.leftover_base = False
        self.garbage: set[str] = set()  # objects no record names any more

    @property
    def url(self) -> str:
        return self.store.url

    def exists(self) -> bool:
        return self.store.exists(STATE) or self.store.exists(BASE)

    def _fields(self) -> tuple:
        return (self.count, list(self.rows), list(self.index), list(self.segments))

    def _set_fields(self, fields: tuple) -> None:
        self.count, self.rows, self.index, self.segments = fields[0], list(fields[1]), *map(list, fields[2:])

    def _named(self, fields: tuple | None = None) -> set[str]:
        count, rows, index, segments = fields or self._fields()
        return {r["name"] for r in rows[:count]} | {p[0] for p in index} | {s[0] for s in segments}

    # ---- writing --------------------------------------------------------------------------------------
    def mark_new(self) -> None:
        """A session is being created: a prefix holding only this marker is an unfinished creation."""
        self.store.put(NEW, b"")

    def commit(self, session: Session, info: dict) -> None:
        """Make `session`'s current memory durable: write its new blocks, index part and context part, then
        the commit record (protocol steps 1-2). On an error nothing the journal holds changes."""
        engine = session.engine
        engine.flush()
        n = len(engine.store)
        if self.record is None and self.gen == 0:
            self._continue_numbering()
        self.gen += 1
        gen = self.gen
        keep = min(self.count, n)
        rows = self.rows[:keep]
        for row in range(keep, n):
            rows.append(self._write_block(engine.store.get(row), row, gen))
        index = self._write_index(engine, rows, keep, n, gen)
        sinks, segments = self._write_context(engine, gen)
        header = {
            "format": FORMAT,
            "version": VERSION,
            "model": model_identity(engine),
            "config": encode_config(engine.config),
            **stream_state(engine),
            "blocks": n,
            "index": index,
            "context": {"segments": segments},
            "gen": gen,
            "info": {"fps": session.fps, "system": session.system, **info},
        }
        record = pack({**sinks, **pending_tensors(engine)}, header)
        old = self._named()
        self.store.put(STATE, record)
        self.record = record
        self._set_fields((n, rows, index, segments))
        self.garbage |= old - self._named()
        if self.base is None:
            with contextlib.suppress(StorageError):
                self.store.delete([NEW, BASE] if self.leftover_base else [NEW])
                self.leftover_base = False
        self._collect()

    def _continue_numbering(self) -> None:
        """A journal object that never read nor wrote a record, over storage that may hold one: name its
        objects after those (names are never reused)."""
        with contextlib.suppress(Missing, SaveError, CorruptData):
            self.gen = int(self._read_record()[0]["gen"])
            self.record = None

    def _write_block(self, block, row: int, gen: int) -> dict:
        tensors = {f"k{i}": k for i, k in enumerate(block.keys)}
        tensors.update({f"v{i}": v for i, v in enumerate(block.values)})
        data = pack(tensors, {"row": row})
        name = _gen_name(BLOCKS, row, gen=gen)
        self.store.put(name, data)
        return {"name": name, "crc": checksum(data), "nbytes": block.nbytes}

    def _write_index(self, engine, rows: list[dict], keep: int, n: int, gen: int) -> list[list]:
        """The index parts after this commit: parts ending at or before `keep` stay; a new part covers the
        rest, absorbing the parts before it that are no larger (so there are O(log n) parts)."""
        parts = [p for p in self.index if p[2] <= keep]
        lo = parts[-1][2] if parts else 0
        if lo == n:
            return parts
        while parts and parts[-1][2] - parts[-1][1] <= n - lo:
            lo = parts.pop()[1]
        meta, tensors = [], {}
        for row in range(lo, n):
            entry, own = _index_entry(engine.store.blocks[row], engine.index, row)
            meta.append({**entry, **rows[row]})
            tensors.update(own)
        name = _gen_name(INDEX, lo, n, gen=gen)
        self.store.put(name, pack(tensors, {"rows": meta, "lo": lo, "hi": n}))
        return [*parts, [name, lo, n]]

    def _write_context(self, engine, gen: int) -> tuple[dict[str, torch.Tensor], list[list]]:
        """Write the context tokens not yet in a part; return the sinks' K/V and the parts that cover the
        context now (after a rollback, or if the parts do not line up, one new part covers it)."""
        layers = engine.cache.layers
        n_sinks, first, end = engine.n_sinks, engine.first_kept, engine.non_sink_tokens
        length = engine.cache.lengths()[0] if layers else 0
        if length != n_sinks + end - first:
            raise SaveError(
                f"the ingest context has {length} tokens, not the sinks ({n_sinks}) + tokens {first}..{end}"
            )
        sinks = {}
        for i, la in enumerate(layers):
            sinks[f"sink.k{i}"] = la.keys[:, :, :n_sinks]
            sinks[f"sink.v{i}"] = la.values[:, :, :n_sinks]
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
                tensors[f"k{i}"] = la.keys[:, :, lo:]
                tensors[f"v{i}"] = la.values[:, :, lo:]
            name = _gen_name(CONTEXT, covered, end, gen=gen)
            self.store.put(name, pack(tensors, {"a": covered, "b": end}))
            kept.append([name, covered, end])
        return sinks, kept

    def _collect(self) -> None:
        """Delete the garbage no record (nor an open batch's base) names; best effort."""
        if not self.garbage:
            return
        protected = self._named(self.base[1]) if self.base is not None else set()
        doomed = self.garbage - protected - self._named()
        with contextlib.suppress(StorageError):
            self.store.delete(sorted(doomed))
            self.garbage -= doomed

    def begin(self) -> None:
        """Start an all-or-nothing batch of commits: keep the acknowledged record as `base`."""
        if self.record is None:
            return
        self.store.put(BASE, self.record)
        self.base = (self.record, self._fields())

    def end(self) -> None:
        """The batch is acknowledged: drop its base."""
        if self.base is None:
            return
        self.store.delete([BASE])
        self.base = None
        self._collect()

    def rollback(self) -> None:
        """Undo the open batch: the journal goes back to the base (what memory was rolled back to). If the
        base cannot be written back now, it stays in storage (a crash recovers it) and the next commit
        supersedes it; the error is raised."""
        if self.base is None:
            return
        (record, fields), self.base = self.base, None
        written = self._named()
        self._set_fields(fields)
        self.record = record
        self.garbage |= written - self._named()
        self.leftover_base = True
        self.store.put(STATE, record)
        self.store.delete([BASE])
        self.leftover_base = False
        self._collect()

    def recover(self) -> bool:
        """After a crash (protocol step 4): put an unfinished batch's base back (returns True then) and
        verify the record. Idempotent. What the record names is verified as it is read (`read`) and by
        `scrub`, which also deletes what no record names; raises CorruptData if the record fails."""
        self.store.clean()
        undone = False
        try:
            base = self.store.get(BASE)
        except Missing:
            base = None
        if base is not None:
            unpack(base, f"{self.url}/{BASE}")  # verify before it replaces anything
            self.store.put(STATE, base)
            self.store.delete([BASE])
            undone = True
        self._read_record()
        return undone

    def scrub(self) -> int:
        """Verify that every object the commit record names is in the store (raises CorruptData naming
        the missing ones) and delete the objects no record (nor an open batch's base) names, which a crash
        left behind; returns how many were deleted. One listing of the journal: run it after a restore,
        where no commit of the session runs at the same time (the server runs it as one of the session's
        jobs), off the path to the first answer."""
        header, _ = self._read_record()
        named = self._all_names(header)
        protected = set(named)
        with contextlib.suppress(Missing):
            base, _ = unpack(self.store.get(BASE), f"{self.url}/{BASE}")
            protected |= self._all_names(base)
        present = set(self.store.list())
        missing = sorted(named - present)
        if missing:
            raise CorruptData(
                f"the journal at {self.url} is missing {len(missing)} object(s) its record names: "
                f"{missing[:3]}"
            )
        garbage = sorted(present - protected - {STATE, BASE, NEW})
        with contextlib.suppress(StorageError):
            self.store.delete(garbage)
            return len(garbage)
        return 0

    def _all_names(self, header: dict) -> set[str]:
        names = {p[0] for p in header["index"]} | {s[0] for s in header["context"]["segments"]}
        for name, lo, hi in header["index"]:
            names |= {entry["name"] for entry in self._index_part(name, lo, hi)[0]}
        return names

    # ---- reading --------------------------------------------------------------------------------------
    def _read_record(self) -> tuple[dict, dict[str, torch.Tensor]]:
        try:
            data = self.store.get(STATE)
        except Missing as e:
            raise SaveError(f"no journal at {self.url}: its commit record ({STATE}) is missing") from e
        header, tensors = unpack(data, f"{self.url}/{STATE}")
        if header.get("format") != FORMAT or header.get("version") != VERSION:
            raise SaveError(f"{self.url}/{STATE} is not a videokv journal of version {VERSION}")
        check_header(header, self.url)
        self.record = data
        return header, tensors

    def read_header(self) -> dict:
        """The commit record's header (raises SaveError / CorruptData if it is missing or fails)."""
        return self._read_record()[0]

    def read(self, lazy: bool = True) -> tuple[dict, dict[str, torch.Tensor]]:
        """The journal as a save manifest + tensors (what persist.restore_engine takes). `lazy`: blocks come
        as records naming their object (fetched when a question selects them), else with their K/V."""
        header, state = self._read_record()
        tensors = self._read_context(header, state)
        blocks, rows = [], []
        for name, lo, hi in header["index"]:
            entries, part = self._index_part(name, lo, hi)
            for row, entry in zip(range(lo, hi), entries, strict=True):
                blocks.append(_manifest_block(entry, part, row, tensors))
                rows.append({k: entry[k] for k in ("name", "crc", "nbytes")})
        if len(blocks) != int(header["blocks"]):
            raise CorruptData(f"the journal at {self.url} indexes {len(blocks)} of {header['blocks']} blocks")
        if not lazy:
            for row, entry in enumerate(rows):
                for key, t in self.fetch_block(entry, row).items():
                    tensors[f"b{row}.{key}"] = t
        self._set_fields((len(rows), rows, header["index"], header["context"]["segments"]))
        self.gen = int(header["gen"])
        manifest = {**header, "blocks": blocks, "extra": header.get("info", {})}
        return manifest, tensors

    def _index_part(self, name: str, lo: int, hi: int) -> tuple[list[dict], dict[str, torch.Tensor]]:
        meta, part = unpack(self._get_named(name), f"{self.url}/{name}")
        rows = meta.get("rows")
        if meta.get("lo") != lo or meta.get("hi") != hi or not isinstance(rows, list) or len(rows) != hi - lo:
            raise CorruptData(f"{self.url}/{name} does not hold rows {lo}..{hi - 1}")
        return rows, part

    def _get_named(self, name: str) -> bytes:
        """An immutable object the record names (raises CorruptData if it is missing)."""
        try:
            return self.store.get(name, cache=True)
        except Missing as e:
            raise CorruptData(f"the journal at {self.url} is missing {name}, which its record names") from e

    def fetch_block(self, entry: dict, row: int) -> dict[str, torch.Tensor]:
        """Block `row`'s K/V (`k{i}`, `v{i}`) from its object, verified against the checksum its index part
        recorded (raises CorruptData)."""
        name = entry["name"]
        try:
            data = self.store.get(name, cache=True)
        except Missing as e:
            raise CorruptData(f"block {row} of the journal at {self.url} is missing ({name})") from e
        if checksum(data) != entry["crc"]:
            raise CorruptData(f"block {row} of the journal at {self.url} fails its checksum ({name})")
        meta, tensors = unpack(data, f"{self.url}/{name}")
        if meta.get("row") != row:
            raise CorruptData(f"{self.url}/{name} holds row {meta.get('row')}, not {row}")
        return tensors

    def _read_context(self, header: dict, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The ingest context's K/V per layer (`ctx.k{i}`, `ctx.v{i}`): sinks + the parts, cut to the stream
        tokens still in the context."""
        first = int(header["state"]["first_kept"])
        n_layers = sum(key.startswith("sink.k") for key in state)
        parts: dict[str, list[torch.Tensor]] = {f"{kv}{i}": [] for kv in "kv" for i in range(n_layers)}
        covered = first
        for name, a, b in header["context"]["segments"]:
            if a > covered:
                raise CorruptData(f"the journal at {self.url} has a gap in its context at token {covered}")
            _, seg = unpack(self._get_named(name), f"{self.url}/{name}")
            try:
                for key in parts:
                    parts[key].append(seg[key][:, :, max(0, covered - a) :])
            except KeyError as e:
                raise CorruptData(f"{self.url}/{name} lacks {e}") from e
            covered = b
        if covered != int(header["state"]["non_sink_tokens"]):
            raise CorruptData(f"the journal at {self.url} has context up to token {covered} only")
        tensors = {f"ctx.{key}": torch.cat([state[f"sink.{key}"], *parts[key]], dim=2) for key in parts}
        tensors.update({key: t for key, t in state.items() if key.startswith("pending.")})
        return tensors

    def load(self, qa: VideoQA, lazy: bool = True, **config_overrides: object) -> Session:
        """The session the journal holds, on `qa`'s model (which must be the one it was written with).
        `config_overrides` replace memory config fields (e.g. a new spill_dir)."""
        manifest, tensors = self.read(lazy)
        fetch = partial(_fetch_for, self)
        session = Session.restore(
            qa,
            manifest,
            tensors,
            (lambda c: c.replace(**config_overrides)) if config_overrides else None,
            fetch=fetch,
        )
        return session

    def migrate_legacy(self, qa: VideoQA) -> bool:
        """If this journal's folder holds a version-3 journal (videokv before storage backends) and no
        current one, write the session it holds in the current format (one commit) and return True; the
        old files are then garbage, deleted by `scrub`. An upload a crash cut is left out, as version 3's
        recovery did."""
        from pathlib import Path

        from videokv.legacy import is_journal_v3, read_journal_v3

        if not self.store.is_local or self.exists() or not is_journal_v3(Path(self.url)):
            return False
        manifest, tensors = read_journal_v3(Path(self.url))
        session = Session.restore(qa, manifest, tensors)
        info = {k: v for k, v in manifest.get("info", {}).items() if k not in ("fps", "system")}
        self.commit(session, info)
        return True


def _fetch_for(journal: Journal, meta: dict) -> dict[str, torch.Tensor]:
    return journal.fetch_block(meta["object"], meta["row"])


def _index_entry(block, index, row: int) -> tuple[dict, dict[str, torch.Tensor]]:
    """A block's index entry (JSON) and tensors: retrieval key, rotated key, per-layer token counts and
    positions (a layer whose positions equal the previous layer's refers to it instead of repeating them)."""
    tensors = {f"r{row}": block.rkey, f"q{row}": index.rotated_key(row)}
    source, prev = [], None
    for i, p in enumerate(block.positions):
        if prev is not None and p.shape == prev.shape and torch.equal(p, prev):
            source.append(source[-1])
        else:
            tensors[f"p{row}.{i}"] = p
            source.append(i)
        prev = p
    counts = [int(p.shape[-1]) for p in block.positions]
    present = index.present_layers(row)
    record = {**block_record(block), "layers": len(block.positions)}  # `block` may be a spilled stub
    return {"record": record, "pos": source, "counts": counts, "present": present}, tensors


def _manifest_block(entry: dict, part: dict[str, torch.Tensor], row: int, tensors: dict) -> dict:
    """A block's manifest record for restore_engine, its index tensors put in `tensors` as b{row}.*."""
    try:
        tensors[f"b{row}.r"] = part[f"r{row}"]
        tensors[f"b{row}.q"] = part[f"q{row}"]
        for i, src in enumerate(entry["pos"]):
            tensors[f"b{row}.p{i}"] = part[f"p{row}.{src}"]
    except KeyError as e:
        raise CorruptData(f"the index entry of block {row} lacks {e}") from e
    return {
        **entry["record"],
        "object": {k: entry[k] for k in ("name", "crc", "nbytes")},
        "present": entry["present"],
        "row": row,
    }


# ---- header validation: a malformed record is refused with a reason, never crashes a caller --------------
_HEADER_TYPES = {
    "model": dict,
    "config": dict,
    "state": dict,
    "unit_tokens": list,
    "context_blocks": list,
    "blocks": int,
    "index": list,
    "context": dict,
    "gen": int,
    "info": dict,
}


def check_header(header: dict, where: str) -> None:
    """Raise CorruptData unless the record's header has the fields and types a load needs."""
    for key, kind in _HEADER_TYPES.items():
        value = header.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise CorruptData(
                f"the commit record at {where} has a malformed {key!r}: {json.dumps(value)[:80]}"
            )
    state = header["state"]
    for name in ("clock", "first_kept", "non_sink_tokens"):
        if not isinstance(state.get(name), int | float) or isinstance(state.get(name), bool):
            raise CorruptData(f"the commit record at {where} has a malformed state.{name}")
    segments = header["context"].get("segments")
    if not isinstance(segments, list) or not all(_is_part(s) for s in segments):
        raise CorruptData(f"the commit record at {where} has malformed context parts")
    if not all(_is_part(p) for p in header["index"]):
        raise CorruptData(f"the commit record at {where} has malformed index parts")
    expected = set(_CONTEXT_BLOCK_FIELDS)
    for b in header["context_blocks"]:
        if not isinstance(b, dict) or set(b) != expected:
            raise CorruptData(f"the commit record at {where} has a malformed context block: {str(b)[:80]}")


def _is_part(p: object) -> bool:
    return (
        isinstance(p, list)
        and len(p) == 3
        and isinstance(p[0], str)
        and all(isinstance(x, int) and not isinstance(x, bool) for x in p[1:])
    )


def _context_block_fields() -> tuple[str, ...]:
    import dataclasses

    from videokv.engine import BlockInfo

    return tuple(f.name for f in dataclasses.fields(BlockInfo))


_CONTEXT_BLOCK_FIELDS = _context_block_fields()
