"""Checksummed records: every object the journal or a save writes is a safetensors payload (tensors + a JSON
header) inside an envelope that carries its length and CRC-32, so a flipped byte, a truncated file or a
garbled header anywhere in it is caught when it is read, before anything is served from it.

Envelope: b"VKV\\x01", the payload's length (8 bytes, little-endian), its CRC-32 (4 bytes), the payload.
"""

from __future__ import annotations

import json
import struct
import zlib

import torch
from safetensors.torch import load, save

from videokv.errors import CorruptData

MAGIC = b"VKV\x01"
_HEAD = struct.Struct("<QI")
HEADER_BYTES = len(MAGIC) + _HEAD.size


def checksum(data: bytes | memoryview) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def seal(payload: bytes) -> bytes:
    """`payload` in its envelope."""
    return MAGIC + _HEAD.pack(len(payload), checksum(payload)) + payload


def unseal(data: bytes, what: str) -> memoryview:
    """The payload of an envelope, verified (raises CorruptData naming `what`)."""
    if len(data) < HEADER_BYTES or data[: len(MAGIC)] != MAGIC:
        raise CorruptData(f"{what} is not a videokv record (truncated or overwritten)")
    length, crc = _HEAD.unpack_from(data, len(MAGIC))
    payload = memoryview(data)[HEADER_BYTES:]
    if len(payload) != length:
        raise CorruptData(f"{what} is truncated: {len(payload)} of {length} bytes")
    if checksum(payload) != crc:
        raise CorruptData(f"{what} fails its checksum: its bytes changed after they were written")
    return payload


def pack(tensors: dict[str, torch.Tensor], meta: dict | None = None) -> bytes:
    """A sealed record of `tensors` (CPU, contiguous) and the JSON-friendly `meta`."""
    header = {"videokv": json.dumps(meta or {})}
    return seal(save({k: t.contiguous().cpu() for k, t in tensors.items()}, metadata=header))


def unpack(data: bytes, what: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """The meta and tensors of a sealed record (raises CorruptData naming `what` if it fails verification)."""
    payload = bytes(unseal(data, what))
    try:
        (size,) = struct.unpack_from("<Q", payload, 0)
        header = json.loads(payload[8 : 8 + size])
        meta = json.loads(header.get("__metadata__", {}).get("videokv", "{}"))
        tensors = load(payload)
    except Exception as e:  # a checksummed payload that still does not parse: written by something else
        raise CorruptData(f"{what} cannot be read: {e}") from e
    if not isinstance(meta, dict):
        raise CorruptData(f"{what} has a malformed header")
    return meta, tensors
