"""GGUF weight streaming: ``gguf.GGUFReader`` against the lean reader, parse + every projection dequantised.

Reproduce:  .venv/bin/python benchmarks/gguf_streaming.py [--models smollm2-135m,gemma3-270m] [--repeats 2]

What ``acttail alphas`` does before any ESD work: open the file, read the metadata and tensor
infos, then dequantise the 7 projections of every block to fp32, one at a time. Both sides run
in the same process, alternating, after one untimed warm-up that imports ``gguf`` and pulls the
file into the page cache. Writes ``benchmarks/results/gguf_streaming.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks._machine import describe_machine  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def plain(path: Path, names: list[str]) -> tuple[float, float, int]:
    """(parse s, stream s, parameters) with gguf.GGUFReader, as acttail did before the lean reader."""
    import gguf
    from gguf.quants import dequantize

    started = time.perf_counter()
    tensors = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    parsed = time.perf_counter()
    count = 0
    for name in names:
        tensor = tensors[name]
        count += np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32).size
    return parsed - started, time.perf_counter() - parsed, count


def lean(model_id: str) -> tuple[float, float, int]:
    """(parse s, stream s, parameters) through GGUFSource: describe() then iter_projection_weights()."""
    from acttail.models import resolve_model

    source = resolve_model(model_id)
    started = time.perf_counter()
    source.describe()
    parsed = time.perf_counter()
    count = sum(weight.numel() for _, weight in source.iter_projection_weights())
    return parsed - started, time.perf_counter() - parsed, count


def measure(model_id: str, repeats: int) -> dict:
    from acttail.models import resolve_model

    source = resolve_model(model_id)
    names = [name for _, name in source._projection_tensors]  # type: ignore[attr-defined]
    lean(model_id)  # warm-up: imports, page cache
    runs: dict[str, list[tuple[float, float, int]]] = {"plain": [], "lean": []}
    for _ in range(repeats):
        runs["plain"].append(plain(source.path, names))  # type: ignore[attr-defined]
        runs["lean"].append(lean(model_id))
    row: dict = {"model": model_id, "projections": len(names), "repeats": repeats}
    for side, values in runs.items():
        assert len({v[2] for v in values}) == 1
        row[side] = {
            "parse_s": statistics.median(v[0] for v in values),
            "stream_s": statistics.median(v[1] for v in values),
            "total_s": statistics.median(v[0] + v[1] for v in values),
            "params": values[0][2],
        }
    assert row["plain"]["params"] == row["lean"]["params"]
    row["speedup_total"] = row["plain"]["total_s"] / row["lean"]["total_s"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2-135m,gemma3-270m")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    machine = describe_machine()
    rows = [measure(m.strip(), args.repeats) for m in args.models.split(",") if m.strip()]
    doc = {"machine": machine, "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gguf_streaming.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = [
        "# GGUF streaming: gguf.GGUFReader vs the lean reader",
        "",
        f"Parse = metadata + tensor infos; stream = dequantise every projection to fp32 (median of "
        f"{args.repeats}, warm page cache). Load average at start {machine['load_average_at_start']}, "
        f"{machine['cpus']} CPUs ({machine['cpu_model']}).",
        "",
        "| model | projections | plain parse s | plain stream s | lean parse s | lean stream s | total speedup |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        p, q = r["plain"], r["lean"]
        lines.append(
            f"| {r['model']} | {r['projections']} | {p['parse_s']:.2f} | {p['stream_s']:.2f} | "
            f"{q['parse_s']:.3f} | {q['stream_s']:.2f} | {r['speedup_total']:.1f}x |"
        )
    (RESULTS / "gguf_streaming.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
