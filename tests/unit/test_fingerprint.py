"""Local fingerprints change with the weights, not only with the metadata, and stay cheap."""

from __future__ import annotations

import json
import shutil
import struct
import sys
import time
from pathlib import Path

import torch

from acttail.models import resolve_model
from acttail.models.fingerprint import FILE_SAMPLE_BYTES, safetensors_fingerprint, safetensors_header, sample_spans
from acttail.models.gguf_source import GGUFSource
from tests.tiny_models import build_tiny_model

sys.path.insert(0, str(Path(__file__).parent))
from test_gguf_file import write_gguf


def fingerprint(directory: Path) -> str:
    return resolve_model(str(directory)).describe().fingerprint


def test_same_config_different_weights_differ_and_resaves_agree(tmp_path: Path) -> None:
    base, tuned = build_tiny_model("llama", seed=0), build_tiny_model("llama", seed=1)
    assert base.config.to_dict() == tuned.config.to_dict()
    for name, model in (("a", base), ("b", base), ("c", tuned)):
        model.save_pretrained(tmp_path / name, safe_serialization=True, max_shard_size="40KB")
    assert (tmp_path / "a" / "config.json").read_bytes() == (tmp_path / "c" / "config.json").read_bytes()
    assert fingerprint(tmp_path / "a") == fingerprint(tmp_path / "b")
    assert fingerprint(tmp_path / "a") != fingerprint(tmp_path / "c")


def test_one_changed_projection_outside_the_file_samples_changes_it(tmp_path: Path) -> None:
    """The per-tensor samples catch a fine-tune (or merged LoRA) that touched one tensor only."""
    model = build_tiny_model("llama")
    model.save_pretrained(tmp_path / "base", safe_serialization=True)
    path = tmp_path / "base" / "model.safetensors"
    header = safetensors_header(path)
    data_start, size = 8 + len(header), path.stat().st_size
    assert size - data_start > 3 * FILE_SAMPLE_BYTES, "the test needs a file longer than the file samples"
    middle = data_start + (size - data_start - FILE_SAMPLE_BYTES) // 2
    file_samples = [
        (data_start, data_start + FILE_SAMPLE_BYTES),
        (middle, middle + FILE_SAMPLE_BYTES),
        (size - FILE_SAMPLE_BYTES, size),
    ]
    entries = json.loads(header)
    untouched = [  # projections whose bytes no file-level sample covers
        name
        for name, entry in entries.items()
        if name.endswith("_proj.weight")
        and not any(
            data_start + entry["data_offsets"][0] < end and begin < data_start + entry["data_offsets"][1]
            for begin, end in file_samples
        )
    ]
    assert untouched, "no projection lies outside the file samples"
    with torch.no_grad():
        model.get_parameter(untouched[0]).add_(1e-3)
    model.save_pretrained(tmp_path / "tuned", safe_serialization=True)
    assert fingerprint(tmp_path / "base") != fingerprint(tmp_path / "tuned")


def test_multi_gigabyte_file_is_sampled_not_read(tmp_path: Path) -> None:
    """A 64 GiB sparse shard: reading it whole would take far longer than the bound."""
    path = tmp_path / "model-00001-of-00001.safetensors"
    numel = 16 * 2**30  # fp32: 64 GiB
    header = json.dumps(
        {
            "model.layers.0.mlp.up_proj.weight": {
                "dtype": "F32",
                "shape": [numel // 4096, 4096],
                "data_offsets": [0, 4 * numel],
            }
        }
    ).encode()
    header += b" " * (-len(header) % 8)
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(header)) + header)
        handle.truncate(8 + len(header) + 4 * numel)
    spans = sample_spans(8 + len(header), path.stat().st_size, [(8 + len(header), path.stat().st_size)])
    assert sum(end - begin for begin, end in spans) == 3 * FILE_SAMPLE_BYTES
    started = time.perf_counter()
    first = safetensors_fingerprint([path], {"model_type": "llama"})
    assert time.perf_counter() - started < 2.0
    with path.open("r+b") as handle:  # one byte in the middle sample
        handle.seek(8 + len(header) + 2 * numel)
        handle.write(b"\x01")
    assert safetensors_fingerprint([path], {"model_type": "llama"}) != first


def test_gguf_fingerprint_hashes_metadata_and_weight_bytes(tmp_path: Path) -> None:
    a = write_gguf(tmp_path / "a.gguf", seed=0)
    copy = tmp_path / "copy" / "renamed.gguf"
    copy.parent.mkdir()
    shutil.copyfile(a, copy)
    other_weights = write_gguf(tmp_path / "b.gguf", seed=1)
    other_alignment = write_gguf(tmp_path / "c.gguf", seed=0, alignment=128)
    prints = {
        name: GGUFSource(path).fingerprint()
        for name, path in {"a": a, "copy": copy, "weights": other_weights, "alignment": other_alignment}.items()
    }
    assert prints["a"] == prints["copy"]
    assert len({prints["a"], prints["weights"], prints["alignment"]}) == 3
