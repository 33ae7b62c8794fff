"""The lean GGUF reader returns exactly what ``gguf.GGUFReader`` returns, without its parse cost."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from acttail.errors import ModelSourceError
from acttail.models import resolve_model
from acttail.models.gguf_file import GGUFFile

# Every weight type the bundled models use, plus F16/BF16 and legacy quants; ne0 = 256 fits K-quant blocks.
TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q8_0", "Q4_K", "Q5_K", "Q6_K")


def write_gguf(path: Path, *, alignment: int = 64, seed: int = 0) -> Path:
    """A small GGUF: scalar, string and array metadata (a 3k-entry vocabulary) and one tensor per type.

    Quantised tensors hold random bytes (any bytes are a valid block), so NaN/inf can occur.
    """
    import gguf

    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_custom_alignment(alignment)
    writer.add_block_count(2)
    writer.add_float64("test.scale", 0.25)
    writer.add_bool("test.flag", True)
    writer.add_string("general.name", "tiny ünïcode")
    writer.add_array("tokenizer.ggml.tokens", [f"tok{i}" for i in range(3000)])
    writer.add_array("tokenizer.ggml.scores", [float(i) for i in range(3000)])
    for i, name in enumerate(TYPES):
        qtype = gguf.GGMLQuantizationType[name]
        shape = (3 + i, 256)  # numpy order: rows, ne0
        if name == "F32":
            writer.add_tensor(f"t.{name}", rng.standard_normal(shape, dtype=np.float32))
        elif name == "F16":
            writer.add_tensor(f"t.{name}", rng.standard_normal(shape).astype(np.float16))
        else:
            byte_shape = gguf.quants.quant_shape_to_byte_shape(shape, qtype)
            data = rng.integers(0, 256, size=byte_shape, dtype=np.uint8)
            writer.add_tensor(f"t.{name}", data, raw_shape=byte_shape, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def assert_same_as_gguf_reader(path: Path, names: list[str] | None = None) -> int:
    """Compare every (or the named) tensor's bytes and dequantised values; returns how many."""
    import gguf
    from gguf.quants import dequantize

    reader = gguf.GGUFReader(str(path))
    lean = GGUFFile(path)
    assert lean.data_offset == reader.data_offset
    plain = {t.name: t for t in reader.tensors}
    assert list(lean.tensors) == list(plain)
    for name in names or list(plain):
        ref, info = plain[name], lean.tensors[name]
        assert (info.offset, info.n_bytes, info.type_name) == (ref.data_offset, ref.n_bytes, ref.tensor_type.name)
        assert info.shape == tuple(int(x) for x in ref.shape)
        data = lean.tensor_data(info)
        assert data.dtype == ref.data.dtype and data.shape == ref.data.shape
        with np.errstate(invalid="ignore", over="ignore"):  # random blocks: NaN/inf scales
            expected = np.asarray(dequantize(ref.data, ref.tensor_type), dtype=np.float32)
            values = lean.dequantized(info)
        assert values.dtype == np.float32 and values.shape == expected.shape
        assert np.array_equal(values, expected, equal_nan=True), name
    return len(names or plain)


@pytest.mark.parametrize("alignment", [32, 64, 4096])
def test_every_type_matches_gguf_reader(tmp_path: Path, alignment: int) -> None:
    path = write_gguf(tmp_path / "tiny.gguf", alignment=alignment)
    assert assert_same_as_gguf_reader(path) == len(TYPES)
    lean = GGUFFile(path)
    assert lean.data_offset % alignment == 0
    assert lean.metadata["llama.block_count"] == 2
    assert lean.metadata["general.name"] == "tiny ünïcode"
    assert lean.metadata["test.scale"] == 0.25 and lean.metadata["test.flag"] is True
    assert "tokenizer.ggml.tokens" not in lean.metadata  # arrays are walked, not kept


def test_dequantized_f32_is_writable_memory(tmp_path: Path) -> None:
    lean = GGUFFile(write_gguf(tmp_path / "tiny.gguf"))
    original = float(lean.dequantized(lean.tensors["t.F32"])[0, 0])
    values = lean.dequantized(lean.tensors["t.F32"])
    values[0, 0] = original + 1.0  # a view of the read-only map would raise ValueError here
    assert float(lean.dequantized(lean.tensors["t.F32"])[0, 0]) == original


def test_truncated_and_foreign_files_raise_model_source_error(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "tiny.gguf")
    data = path.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: GGUFFile(path).data_offset // 2])
    with pytest.raises(ModelSourceError, match="truncated"):
        GGUFFile(cut)
    short = tmp_path / "short.gguf"
    short.write_bytes(data[:-100])
    with pytest.raises(ModelSourceError, match="runs past the end"):
        GGUFFile(short)
    foreign = tmp_path / "foreign.gguf"
    foreign.write_bytes(b"PK\x03\x04" + data[4:])
    with pytest.raises(ModelSourceError, match="not a GGUF file"):
        GGUFFile(foreign)


@pytest.mark.slow
def test_bundled_smollm2_projections_match_gguf_reader() -> None:
    """All 210 projections of the real Q4_1 file, byte for byte and value for value."""
    source = resolve_model("smollm2-135m")
    names = [name for _, name, _ in source._projection_tensors]  # type: ignore[attr-defined]
    assert assert_same_as_gguf_reader(source.path, names) == 210  # type: ignore[attr-defined]
    streamed = next(source.iter_projection_weights())[1]
    assert streamed.shape == (576, 576) and bool(np.isfinite(streamed.numpy()).all())
