"""Model fingerprints: a stable ID for "these exact weights", so results can be cached and shared.

Hub models use the commit sha. Local files use sha256 over metadata that changes whenever the
weights do (file names, sizes, tensor headers), which costs milliseconds instead of hashing
gigabytes. Two copies of the same checkpoint get the same fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable
from pathlib import Path


def sha256_of_parts(parts: Iterable[bytes | str]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else part
        digest.update(struct.pack("<Q", len(data)))  # length-prefixed: no ambiguity between parts
        digest.update(data)
    return digest.hexdigest()


def safetensors_header(path: Path) -> bytes:
    """The JSON header of a .safetensors file (tensor names, dtypes, shapes, offsets)."""
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if length > 100 * 2**20:
            raise ValueError(f"{path.name}: implausible safetensors header length {length}")
        return handle.read(length)


def safetensors_fingerprint(files: list[Path], config: dict) -> str:
    """Hash of config + every shard's header and size, independent of the directory's location."""
    parts: list[bytes | str] = ["safetensors", json.dumps(config, sort_keys=True)]
    for path in sorted(files, key=lambda p: p.name):
        parts += [path.name, str(path.stat().st_size), safetensors_header(path)]
    return sha256_of_parts(parts)
