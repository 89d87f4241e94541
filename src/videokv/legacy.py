"""What videokv wrote before its storage backends, read so that an upgrade loses no session.

- **Save version 2** (a folder: `manifest.json` + `tensors.safetensors`, or the `.<name>.old` folder a
  crash left moved aside): `read_save_v2`; `Session.load` falls back to it.
- **Journal version 3** (a folder: `state.safetensors` with the header, `base.safetensors` while an upload
  was ingested, `blocks/<row>.safetensors`, `context/<a>-<b>-<n>.safetensors`): `read_journal_v3`; the server
  migrates such a journal to the current format when it restores the session (journal.migrate_v3).

Neither format carried checksums; they are read as they are, and written again only in the current format.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from videokv.errors import CorruptData

SAVE_V2 = ("videokv-session", 2)
JOURNAL_V3 = ("videokv-journal", 3)


def is_save_v2(folder: Path) -> bool:
    old = folder.with_name(f".{folder.name}.old")
    return (folder / "manifest.json").exists() or (old / "manifest.json").exists()


def read_save_v2(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The manifest and tensors of a version-2 save (raises CorruptData)."""
    if not (folder / "manifest.json").exists():
        folder = folder.with_name(f".{folder.name}.old")
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        tensors = load_file(str(folder / "tensors.safetensors"))
    except Exception as e:  # json and safetensors raise several types for garbled files
        raise CorruptData(f"the version-2 save at {folder} cannot be read: {e}") from e
    if (manifest.get("format"), manifest.get("version")) != SAVE_V2:
        raise CorruptData(f"{folder} is not a version-2 videokv save")
    return manifest, tensors


def is_journal_v3(folder: Path) -> bool:
    return (folder / "state.safetensors").exists() or (folder / "base.safetensors").exists()


def read_journal_v3(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """A version-3 journal as a save manifest + tensors (what persist.restore_engine takes). An upload the
    crash cut is left out (its base is read instead of the state), as version 3's recovery did."""
    state = folder / "base.safetensors"
    if not state.exists():
        state = folder / "state.safetensors"
    try:
        with safe_open(str(state), "pt") as f:
            header = json.loads((f.metadata() or {})["journal"])
            sinks = {key: f.get_tensor(key) for key in f.keys()}
        if (header.get("format"), header.get("version")) != JOURNAL_V3:
            raise CorruptData(f"{state} is not a version-3 videokv journal")
        tensors = _context(folder, header, sinks)
        blocks = []
        for row in range(int(header["blocks"])):
            with safe_open(str(folder / "blocks" / f"{row:08d}.safetensors"), "pt") as f:
                blocks.append(json.loads((f.metadata() or {})["block"]))
                for key in f.keys():
                    tensors[f"b{row}{key[1:]}"] = f.get_tensor(key)
    except CorruptData:
        raise
    except Exception as e:  # a missing or garbled file of the old journal
        raise CorruptData(f"the version-3 journal at {folder} cannot be read: {e}") from e
    return {**header, "blocks": blocks, "extra": header.get("info", {})}, tensors


def _context(folder: Path, header: dict, sinks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    first = int(header["state"]["first_kept"])
    n_layers = sum(key.startswith("sink.k") for key in sinks)
    parts: dict[str, list[torch.Tensor]] = {f"{kv}{i}": [] for kv in "kv" for i in range(n_layers)}
    covered = first
    for name, a, b in header["context"]["segments"]:
        if a > covered:
            raise CorruptData(
                f"the version-3 journal at {folder} has a gap in its context at token {covered}"
            )
        with safe_open(str(folder / "context" / name), "pt") as f:
            for key in parts:
                parts[key].append(f.get_tensor(key)[:, :, max(0, covered - a) :])
        covered = b
    tensors = {f"ctx.{key}": torch.cat([sinks[f"sink.{key}"], *parts[key]], dim=2) for key in parts}
    tensors.update({key: t for key, t in sinks.items() if key.startswith("pending.")})
    return tensors
