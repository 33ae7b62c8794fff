"""Model fingerprints: a stable ID for "these exact weights", so results can be cached and shared.

Hub models use the commit sha. Local files use sha256 over their metadata (config, file names
and sizes, safetensors headers or the GGUF header) plus a fixed sample of the weight bytes:
the first, middle and last 64 KiB of each file's data section and the first 4 KiB of every
tensor. A fine-tune saved with the base model's config changes every tensor it trained, so it
changes the fingerprint; a merged LoRA that touched only q/v is caught by the per-tensor
samples. The cost is a few hundred small reads per file, never the whole file (a 70B
checkpoint: ~3 MB read). Two copies of the same checkpoint get the same fingerprint.

Version 2 (the weight samples) changed every local fingerprint; results stored under version
1 fingerprints are recomputed, and allocations built then must be rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

FILE_SAMPLE_BYTES = 64 * 1024
TENSOR_SAMPLE_BYTES = 4 * 1024


def sha256_of_parts(parts: Iterable[bytes | str]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else part
        digest.update(struct.pack("<Q", len(data)))  # length-prefixed: no ambiguity between parts
        digest.update(data)
    return digest.hexdigest()


def sample_spans(data_start: int, data_end: int, tensor_spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Byte ranges ``[begin, end)`` that stand for the weights of one file, sorted and disjoint.

    First, middle and last ``FILE_SAMPLE_BYTES`` of the data section (all of it when it is at
    most three samples long), plus the first ``TENSOR_SAMPLE_BYTES`` of every tensor.
    """
    size = data_end - data_start
    if size <= 3 * FILE_SAMPLE_BYTES:
        return [(data_start, data_end)] if size > 0 else []
    middle = data_start + (size - FILE_SAMPLE_BYTES) // 2
    spans = {
        (data_start, data_start + FILE_SAMPLE_BYTES),
        (middle, middle + FILE_SAMPLE_BYTES),
        (data_end - FILE_SAMPLE_BYTES, data_end),
    }
    spans.update((begin, min(end, begin + TENSOR_SAMPLE_BYTES)) for begin, end in tensor_spans if end > begin)
    merged: list[tuple[int, int]] = []
    for begin, end in sorted(spans):  # overlapping samples are read once
        if merged and begin <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((begin, end))
    return merged


def read_spans(path: Path, spans: Iterable[tuple[int, int]]) -> Iterator[bytes]:
    """The bytes of each span, in order; a file shorter than a span is an error, not a short hash."""
    with path.open("rb") as handle:
        for begin, end in spans:
            handle.seek(begin)
            data = handle.read(end - begin)
            if len(data) != end - begin:
                raise ValueError(f"{path.name}: truncated, bytes {begin}..{end} are past the end")
            yield data


def safetensors_header(path: Path) -> bytes:
    """The JSON header of a .safetensors file (tensor names, dtypes, shapes, offsets)."""
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if length > 100 * 2**20:
            raise ValueError(f"{path.name}: implausible safetensors header length {length}")
        return handle.read(length)


def _safetensors_spans(path: Path, header: bytes) -> list[tuple[int, int]]:
    data_start = 8 + len(header)
    entries = json.loads(header)
    tensor_spans = [
        (data_start + int(entry["data_offsets"][0]), data_start + int(entry["data_offsets"][1]))
        for name, entry in entries.items()
        if name != "__metadata__"
    ]
    return sample_spans(data_start, path.stat().st_size, tensor_spans)


def safetensors_fingerprint(files: list[Path], config: dict) -> str:
    """Hash of config + every shard's name, size, header and weight samples; location-independent."""

    def parts() -> Iterator[bytes | str]:
        yield "safetensors/v2"
        yield json.dumps(config, sort_keys=True)
        for path in sorted(files, key=lambda p: p.name):
            header = safetensors_header(path)
            yield from (path.name, str(path.stat().st_size), header)
            yield from read_spans(path, _safetensors_spans(path, header))

    return sha256_of_parts(parts())
