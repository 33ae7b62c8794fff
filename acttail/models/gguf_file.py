"""A lean GGUF reader: header and tensor infos in one pass, tensor bytes memory-mapped on demand.

``gguf.GGUFReader`` turns every metadata value into numpy views, one per array element, so the
~100k-entry tokenizer arrays of a small model cost seconds before the first tensor can be read.
Here the header is walked with ``struct`` (arrays are skipped by length, only scalars and
strings are kept), and a tensor's bytes are a slice of one read-only ``np.memmap`` shaped as
``GGUFReader`` shapes them, so ``gguf.quants.dequantize`` returns the same array from either.

Format (GGUF v2/v3, little-endian; https://github.com/ggml-org/ggml/blob/master/docs/gguf.md):
magic ``GGUF``, u32 version, u64 tensor count, u64 metadata count, the metadata key/value
pairs, then per tensor: name, u32 n_dims, u64 dims (ne0, the row length, first), u32 ggml type,
u64 offset into the data section, which starts at the next multiple of ``general.alignment``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from acttail.errors import ModelSourceError

if TYPE_CHECKING:
    from gguf import GGMLQuantizationType

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32

# GGUF metadata value types -> struct format of one scalar; 8 = string, 9 = array.
_SCALAR_FORMATS: dict[int, str] = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_STRING, _ARRAY = 8, 9
_U64 = struct.Struct("<Q")

MetadataValue = int | float | bool | str


@dataclass(frozen=True)
class GGUFTensorInfo:
    """One tensor's entry in the header; ``shape`` lists ne0 (elements per row) first, as GGUF does."""

    name: str
    ggml_type: int
    shape: tuple[int, ...]
    offset: int  # absolute file offset of the first byte
    n_bytes: int

    @property
    def type_name(self) -> str:
        return self.quant_type.name

    @property
    def quant_type(self) -> GGMLQuantizationType:
        from gguf import GGMLQuantizationType

        return GGMLQuantizationType(self.ggml_type)


class _Cursor:
    """Sequential little-endian reads over the mapped header."""

    def __init__(self, buffer: memoryview, name: str) -> None:
        self.buffer, self.pos, self.name = buffer, 0, name

    def unpack(self, fmt: str) -> tuple:
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.buffer):
            raise ModelSourceError(f"{self.name} is truncated: header ends at byte {len(self.buffer)}")
        values = struct.unpack_from("<" + fmt, self.buffer, self.pos)
        self.pos += size
        return values

    def skip(self, size: int) -> None:
        if self.pos + size > len(self.buffer):
            raise ModelSourceError(f"{self.name} is truncated: header ends at byte {len(self.buffer)}")
        self.pos += size

    def string(self) -> str:
        (length,) = self.unpack("Q")
        start = self.pos
        self.skip(length)
        try:
            return bytes(self.buffer[start : self.pos]).decode("utf-8")
        except UnicodeDecodeError:
            raise ModelSourceError(f"{self.name}: header string at byte {start} is not UTF-8") from None

    def _skip_strings(self, count: int) -> None:
        # The hot loop of the walk: a tokenizer vocabulary is ~50k-250k strings.
        buffer, pos, end = self.buffer, self.pos, len(self.buffer)
        for _ in range(count):
            if pos + 8 > end:
                break
            pos += 8 + _U64.unpack_from(buffer, pos)[0]
        else:
            if pos <= end:
                self.pos = pos
                return
        raise ModelSourceError(f"{self.name} is truncated: header ends at byte {end}")

    def value(self, value_type: int) -> MetadataValue | None:
        """One metadata value; arrays are skipped (None), which is all the header walk needs."""
        if value_type in _SCALAR_FORMATS:
            return self.unpack(_SCALAR_FORMATS[value_type])[0]
        if value_type == _STRING:
            return self.string()
        if value_type == _ARRAY:
            item_type, count = self.unpack("IQ")
            if item_type in _SCALAR_FORMATS:
                self.skip(count * struct.calcsize("<" + _SCALAR_FORMATS[item_type]))
            elif item_type == _STRING:
                self._skip_strings(count)
            else:
                for _ in range(count):
                    self.value(item_type)
            return None
        raise ModelSourceError(f"{self.name}: unknown GGUF metadata type {value_type} at byte {self.pos}")


class GGUFFile:
    """The parsed header of one ``.gguf`` file and lazy, memory-mapped access to its tensors."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = path.stat().st_size
        self.metadata: dict[str, MetadataValue] = {}
        self.tensors: dict[str, GGUFTensorInfo] = {}
        self.data_offset = 0
        self._parse()

    def _parse(self) -> None:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        cursor = _Cursor(memoryview(self._mmap), self.path.name)  # type: ignore[arg-type]
        magic = bytes(cursor.buffer[:4]) if len(cursor.buffer) >= 4 else b""
        if magic != GGUF_MAGIC:
            raise ModelSourceError(f"{self.path.name} is not a GGUF file (magic {magic!r})")
        cursor.skip(4)
        (version,) = cursor.unpack("I")
        if version not in SUPPORTED_VERSIONS:
            endian = " (a big-endian file?)" if version & 0xFFFF == 0 else ""
            raise ModelSourceError(f"{self.path.name}: GGUF version {version}{endian} is not supported")
        tensor_count, kv_count = cursor.unpack("QQ")
        for _ in range(kv_count):
            key = cursor.string()
            (value_type,) = cursor.unpack("I")
            value = cursor.value(value_type)
            if value is not None:
                self.metadata[key] = value
        raw_infos = []
        for _ in range(tensor_count):
            name = cursor.string()
            (n_dims,) = cursor.unpack("I")
            dims = cursor.unpack("Q" * n_dims)
            ggml_type, offset = cursor.unpack("IQ")
            raw_infos.append((name, dims, ggml_type, offset))
        alignment = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise ModelSourceError(f"{self.path.name}: general.alignment {alignment!r} is not a power of two")
        self.data_offset = -(-cursor.pos // alignment) * alignment
        for name, dims, ggml_type, offset in raw_infos:
            try:
                block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
            except (ValueError, KeyError):
                raise ModelSourceError(f"{self.path.name}: tensor {name} has unknown ggml type {ggml_type}") from None
            n_bytes = int(np.prod(dims, dtype=np.int64)) * type_size // block_size
            start = self.data_offset + offset
            if start + n_bytes > self.size:
                raise ModelSourceError(f"{self.path.name}: tensor {name} runs past the end of the file")
            if name in self.tensors:
                raise ModelSourceError(f"{self.path.name}: tensor {name} appears twice")
            self.tensors[name] = GGUFTensorInfo(name, ggml_type, tuple(int(d) for d in dims), start, n_bytes)

    @cached_property
    def _mmap(self) -> np.memmap:
        try:
            return np.memmap(self.path, mode="r", dtype=np.uint8)
        except (OSError, ValueError) as exc:
            raise ModelSourceError(f"{self.path.name} is not a readable GGUF file: {exc}") from None

    @property
    def header_bytes(self) -> bytes:
        """Everything before the data section: metadata and tensor infos, byte for byte."""
        return bytes(self._mmap[: self.data_offset])

    def tensor_data(self, info: GGUFTensorInfo) -> np.ndarray:
        """The tensor's bytes as ``GGUFReader`` exposes them (no copy): typed for F32/F16, else uint8 rows.

        Shape is numpy order (ne0 last); quantised rows are ``ne0 / block_size * type_size`` bytes.
        """
        from gguf import GGMLQuantizationType
        from gguf.quants import quant_shape_to_byte_shape

        raw = self._mmap[info.offset : info.offset + info.n_bytes]
        shape = tuple(reversed(info.shape))
        qtype = GGMLQuantizationType(info.ggml_type)
        if qtype == GGMLQuantizationType.F32:
            return raw.view(np.float32).reshape(shape)
        if qtype == GGMLQuantizationType.F16:
            return raw.view(np.float16).reshape(shape)
        return raw.reshape(quant_shape_to_byte_shape(shape, qtype))

    def dequantized(self, info: GGUFTensorInfo) -> np.ndarray:
        """fp32 values in numpy order (``[d_out, d_in]`` for a weight); reads only this tensor's pages."""
        from gguf.quants import dequantize

        try:
            values = np.asarray(dequantize(self.tensor_data(info), info.quant_type), dtype=np.float32)
        except NotImplementedError as exc:
            raise ModelSourceError(f"{self.path.name}: tensor {info.name}: {exc}") from None
        # F32 dequantises to a view of the read-only map; callers get memory they may write.
        return values if values.flags.writeable else values.copy()
