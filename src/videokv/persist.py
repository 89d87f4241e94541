"""Saving and loading a session: config, blocks, index, positions, ingest context and stream clock.

A save is two objects under a folder or an object-store prefix (videokv.storage), both checksummed
records: `tensors-<id>` (the ingest context's K/V and every block's K/V, positions and retrieval key) and
`manifest` (format, model identity, memory config, stream state, block metadata, and the name of its
tensors object). The tensors are written first under a new name, then the manifest (one atomic put), then
the previous save's tensors are deleted: a crash at any moment leaves the previous save or the new one
readable, whole. Every byte is verified when read. The memory config is stored as data (policy class paths
under `videokv.policies` and their parameters), never pickled. Loading checks that the model is the one the
session was saved with.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import secrets
from collections.abc import Callable
from pathlib import Path

import torch

from videokv.config import MemoryConfig
from videokv.engine import BlockInfo, Engine, Frame
from videokv.errors import ConfigError, CorruptData, InputError, StorageError
from videokv.memory.block import KVBlock
from videokv.storage import Missing, open_backend, pack, unpack

FORMAT = "videokv-session"
VERSION = 3  # 3: checksummed records on a storage backend (2: the official token layout)
MANIFEST = "manifest"


class SaveError(InputError):
    """A session save folder is missing, corrupt, or was made with another model."""


# ---- the memory config as data -------------------------------------------------------------------------
def encode_config(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        fields = {f.name: encode_config(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"__class__": f"{cls.__module__}.{cls.__qualname__}", **fields}
    if isinstance(value, dict):
        return {k: encode_config(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [encode_config(v) for v in value]
    return value


def decode_config(data: object) -> object:
    if isinstance(data, dict) and "__class__" in data:
        path = data["__class__"]
        module, _, name = path.rpartition(".")
        if not (module.startswith("videokv.policies") or path == "videokv.config.MemoryConfig"):
            raise SaveError(f"refusing to build {path!r} from a save: not a videokv policy")
        cls = getattr(importlib.import_module(module), name)
        kwargs = {k: decode_config(v) for k, v in data.items() if k != "__class__"}
        for f in dataclasses.fields(cls):
            if f.name in kwargs and isinstance(kwargs[f.name], list) and isinstance(f.default, tuple):
                kwargs[f.name] = tuple(kwargs[f.name])
        return cls(**kwargs)
    if isinstance(data, dict):
        return {k: decode_config(v) for k, v in data.items()}
    if isinstance(data, list):
        return [decode_config(v) for v in data]
    return data


def model_identity(engine: Engine) -> dict:
    cfg = engine.adapter.text_config
    return {
        "family": engine.adapter.family,
        "layers": engine.adapter.num_layers,
        "kv_heads": engine.adapter.num_kv_heads,
        "head_dim": engine.adapter.head_dim,
        "hidden_size": int(cfg.hidden_size),
        "vocab_size": int(cfg.vocab_size),
        "dtype": str(engine.adapter.dtype),
    }


# ---- save -----------------------------------------------------------------------------------------
STATE_FIELDS = Engine.SCALAR_STATE


def context_tensors(engine: Engine) -> dict[str, torch.Tensor]:
    """The ingest context's K/V per layer, on the CPU (`ctx.k{i}`, `ctx.v{i}`)."""
    tensors: dict[str, torch.Tensor] = {}
    for i, layer in enumerate(engine.cache.layers):
        tensors[f"ctx.k{i}"] = layer.keys.contiguous().cpu()
        tensors[f"ctx.v{i}"] = layer.values.contiguous().cpu()
    return tensors


def block_tensors(b: KVBlock, prefix: str) -> dict[str, torch.Tensor]:
    """A block's K/V, positions per layer and retrieval key on the CPU, named `{prefix}.k{i}` etc."""
    tensors: dict[str, torch.Tensor] = {}
    for i in range(b.num_layers):
        tensors[f"{prefix}.k{i}"] = b.keys[i].contiguous().cpu()
        tensors[f"{prefix}.v{i}"] = b.values[i].contiguous().cpu()
        tensors[f"{prefix}.p{i}"] = b.positions[i].cpu().clone()
    tensors[f"{prefix}.r"] = b.rkey.contiguous().cpu()
    return tensors


def block_record(b: KVBlock) -> dict:
    """A block's metadata as JSON-friendly data (what `restore_engine` reads back with its tensors)."""
    return {
        "index": b.index,
        "unit": b.unit,
        "kind": b.kind,
        "t0": b.t0,
        "t1": b.t1,
        "level": b.level,
        "text": b.text,
        "pinned": b.pinned,
        "layers": b.num_layers,
        "origin": b.origin,
    }


def stream_state(engine: Engine) -> dict:
    """The engine's stream state besides tensors and blocks: scalars, unit sizes, context blocks."""
    return {
        "state": {name: getattr(engine, name) for name in STATE_FIELDS},
        "unit_tokens": list(engine.unit_tokens),
        "context_blocks": [dataclasses.asdict(b) for b in engine.blocks],
        "pending_times": [f.t for f in engine.pending],
        "deferred": [[e.start, e.end, e.text] for e in engine.deferred],
    }


def pending_tensors(engine: Engine) -> dict[str, torch.Tensor]:
    """The frames waiting for their temporal partner (uint8 pixels), `pending.{i}`."""
    return {f"pending.{i}": torch.from_numpy(f.image.copy()) for i, f in enumerate(engine.pending)}


def save_engine(
    engine: Engine, folder: str | Path, extra: dict | None = None, endpoint: str | None = None
) -> str | Path:
    """Write `engine`'s whole state to `folder` (a folder or an `s3://` URL) atomically (the open unit, if
    any, is closed first)."""
    engine.flush()
    store = open_backend(folder, endpoint)
    tensors = context_tensors(engine)
    tensors.update(pending_tensors(engine))
    blocks = []
    for row in range(len(engine.store)):
        b = engine.store.get(row)
        tensors.update(block_tensors(b, f"b{row}"))
        blocks.append(block_record(b))
    name = f"tensors-{secrets.token_hex(6)}"
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "model": model_identity(engine),
        "config": encode_config(engine.config),
        **stream_state(engine),
        "blocks": blocks,
        "extra": extra or {},
        "tensors": name,
    }
    store.put(name, pack(tensors))
    store.put(MANIFEST, pack({}, manifest))
    stale = [k for k in store.list() if k.startswith("tensors-") and k != name]
    with contextlib.suppress(StorageError):  # the previous save's tensors (and any a crash left)
        store.delete(stale)
    return folder


def read_manifest(folder: str | Path, endpoint: str | None = None) -> dict:
    """A save's manifest (raises SaveError if there is none, or it fails verification)."""
    store = open_backend(folder, endpoint)
    try:
        data = store.get(MANIFEST)
    except Missing as e:
        if store.is_local and not Path(store.url).exists():
            raise SaveError(f"no saved session at {store.url}: the folder does not exist") from e
        raise SaveError(f"{store.url} is not a videokv session save: its {MANIFEST} is missing") from e
    try:
        manifest, _ = unpack(data, f"{store.url}/{MANIFEST}")
    except CorruptData as e:
        raise SaveError(str(e)) from e
    if manifest.get("format") != FORMAT:
        raise SaveError(f"{folder} is not a videokv session save (format {manifest.get('format')!r})")
    if manifest.get("version") != VERSION:
        raise SaveError(
            f"{folder} was saved with format version {manifest.get('version')}; this videokv "
            f"reads version {VERSION}"
        )
    return manifest


# ---- load -----------------------------------------------------------------------------------------
def read_save(folder: str | Path, endpoint: str | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """The manifest and tensors of a save, verified (raises SaveError). A save of version 2 (before
    checksummed records) is read as it is (videokv.legacy)."""
    store = open_backend(folder, endpoint)
    if store.is_local and not store.exists(MANIFEST):
        from videokv.legacy import is_save_v2, read_save_v2

        if is_save_v2(Path(store.url)):
            try:
                return read_save_v2(Path(store.url))
            except CorruptData as e:
                raise SaveError(str(e)) from e
    manifest = read_manifest(folder, endpoint)
    store = open_backend(folder, endpoint)
    name = manifest.get("tensors")
    try:
        _, tensors = unpack(store.get(str(name)), f"{store.url}/{name}")
    except (Missing, CorruptData) as e:
        raise SaveError(f"the save at {folder} is incomplete or corrupt: {e}") from e
    return manifest, tensors


def restore_engine(
    engine: Engine,
    manifest: dict,
    tensors: dict[str, torch.Tensor],
    fetch: Callable[[dict], dict[str, torch.Tensor]] | None = None,
) -> None:
    """Fill a fresh engine (same model, same config) with a save's state. A block record with an `object`
    and no K/V in `tensors` becomes a lazy block whose K/V `fetch` reads when a question needs them."""
    if manifest["model"] != model_identity(engine):
        raise SaveError(
            f"this save was made with another model: saved {manifest['model']}, "
            f"loaded {model_identity(engine)}"
        )
    device = engine.adapter.device
    try:
        for i, layer in enumerate(engine.cache.layers):
            layer.keys = tensors[f"ctx.k{i}"].to(device)
            layer.values = tensors[f"ctx.v{i}"].to(device)
        for name in STATE_FIELDS:
            setattr(engine, name, manifest["state"][name])
        engine.unit_tokens = list(manifest["unit_tokens"])
        engine.blocks = [BlockInfo(**b) for b in manifest["context_blocks"]]
        restore_pending(engine, manifest, tensors)
        for row, meta in enumerate(manifest["blocks"]):
            engine.keep(_block(meta, row, tensors, device, fetch))
    except KeyError as e:
        raise SaveError(f"the save is incomplete: {e} is missing") from e
    if len(engine.cache.layers) and engine.cache.lengths()[0] < engine.n_sinks:
        raise SaveError("the save is inconsistent: its context is shorter than its attention sinks")


def _block(meta: dict, row: int, tensors: dict, device, fetch) -> KVBlock:
    """Block `row` of a save: with its K/V, or lazy (`meta["object"]` names them; `fetch` reads them)."""
    n = meta["layers"]
    lazy = f"b{row}.k0" not in tensors and n > 0 and "object" in meta
    if lazy and fetch is None:
        raise SaveError(f"block {row} of the save has no K/V and nothing to fetch them with")
    extra = {}
    if lazy:
        extra = {
            "fetch": fetch,
            "object": meta["object"],
            "row": row,
            "layers": n,
            "nbytes": meta["object"]["nbytes"],
            "rotated": tensors[f"b{row}.q"],
            "present": meta["present"],
        }
    return KVBlock(
        meta["index"],
        meta["unit"],
        meta["kind"],
        meta["t0"],
        meta["t1"],
        [] if lazy else [tensors[f"b{row}.k{i}"].to(device) for i in range(n)],
        [] if lazy else [tensors[f"b{row}.v{i}"].to(device) for i in range(n)],
        [tensors[f"b{row}.p{i}"].to(device) for i in range(n)],
        tensors[f"b{row}.r"],
        meta["level"],
        meta["text"],
        meta["pinned"],
        extra,
        meta.get("origin", 0),
    )


def restore_pending(engine: Engine, state: dict, tensors: dict[str, torch.Tensor]) -> None:
    """The pending frames and deferred text of a save (see `stream_state`)."""
    from videokv.video.subtitles import TextEvent

    times = state.get("pending_times", [])
    engine.pending = [Frame(float(t), tensors[f"pending.{i}"].numpy()) for i, t in enumerate(times)]
    engine.deferred = [TextEvent(float(a), float(b), str(text)) for a, b, text in state.get("deferred", [])]


def load_config(manifest: dict) -> MemoryConfig:
    try:
        config = decode_config(manifest["config"])
    except (KeyError, TypeError, ValueError, ImportError, AttributeError, ConfigError) as e:
        raise SaveError(f"the save's memory configuration cannot be read: {e}") from e
    if not isinstance(config, MemoryConfig):
        raise SaveError("the save's memory configuration is not a MemoryConfig")
    return config
