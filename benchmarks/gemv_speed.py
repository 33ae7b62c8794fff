"""Batch-1 sparse GEMV vs dense GEMV, per projection shape and sparsity.

    .venv/bin/python benchmarks/gemv_speed.py --threads 2
    .venv/bin/python benchmarks/gemv_speed.py --device cuda          # on a GPU machine

For each shape W: [d_out, d_in] and sparsity s (k = round((1 - s) d_in) kept channels):

- dense:   F.linear(x, W)                              (what decode does today)
- gemv:    sparse GEMV over W^T given the selection    (acttail.kernels.sparse_gemv)
- topk:    fused TopK selection + sparse GEMV          (acttail.kernels.topk_gemv; what sparse decode runs)

speed-up = dense / sparse, ideal = 1 / (1 - s) (weight bytes read), fraction = speed-up / ideal.
Decode streams every layer's weights once per token (135M fp32 = 0.5 GB >> a 32 MiB L3), so
each timed call starts with cold caches: before every call a buffer larger than the last-level
cache is read (not timed). Dense and sparse calls alternate sample by sample, each sample with
its own x (so its own TopK selection). Times are medians of per-call wall times (device
synchronised on CUDA, where the flush buffer lives on the GPU to evict its L2).
The table uses the minimum over samples (least disturbed by other jobs on a shared machine);
medians are stored in the JSON and shown in the last column.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe_machine, load_average

from acttail import kernels
from acttail.sparsity import keep_count

SHAPES = {  # (d_out, d_in)
    "smollm2 q/o 576x576": (576, 576),
    "smollm2 k/v 192x576": (192, 576),
    "smollm2 gate/up 1536x576": (1536, 576),
    "smollm2 down 576x1536": (576, 1536),
    "7B q/k/v/o 4096x4096": (4096, 4096),
    "7B gate/up 11008x4096": (11008, 4096),
}
SPARSITIES = (0.0, 0.4, 0.5, 0.7, 0.8, 0.9)
HEADLINE = {(4096, 4096), (11008, 4096)}
HEADLINE_SPARSITIES = {0.5, 0.8}
TARGET_FRACTION = 0.70


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class _Flusher:
    """Reads a buffer of ``nbytes`` so the next call finds W in DRAM (or HBM), not in a cache."""

    def __init__(self, nbytes: int, device: torch.device) -> None:
        self.buf = torch.ones(nbytes // 4, dtype=torch.float32, device=device)

    def __call__(self) -> None:
        float(self.buf.sum())


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def _time_call(fn, device: torch.device, flush: _Flusher, clock=time.perf_counter) -> float:
    flush()
    _sync(device)
    start = clock()
    fn()
    _sync(device)
    return clock() - start


def bench_shape(
    d_out: int,
    d_in: int,
    device: torch.device,
    dtype: torch.dtype,
    flush_bytes: int,
    samples: int,
    clock: str = "wall",
) -> list[dict]:
    elem = torch.finfo(dtype).bits // 8
    gen = torch.Generator().manual_seed(d_out * 7 + d_in)
    w = torch.randn(d_out, d_in, generator=gen).to(device, dtype)  # [d_out, d_in]
    wt = w.t().contiguous()  # [d_in, d_out]
    xs = [torch.randn(d_in, generator=gen).to(device, dtype) for _ in range(samples)]
    flush = _Flusher(flush_bytes, device)
    rows = []
    for s in SPARSITIES:
        k = keep_count(s, d_in)
        sel = [kernels.select_topk(x, k) for x in xs]
        fns = {
            "dense": [lambda x=x: F.linear(x, w) for x in xs],
            "gemv": [lambda s_=s_: kernels.sparse_gemv(wt, s_[0], s_[1]) for s_ in sel],
            "topk": [lambda x=x, k=k: kernels.topk_gemv(wt, x, k) for x in xs],
        }
        for name in fns:  # warm-up: first-call allocations, lazy build
            for fn in fns[name][:3]:
                fn()
        times: dict[str, list[float]] = {name: [] for name in fns}
        for i in range(samples):
            for name in fns:
                times[name].append(_time_call(fns[name][i], device, flush, CLOCKS[clock]))
        # min: the call least disturbed by other jobs on a shared machine (timeit's rule);
        # medians are kept beside it.
        med = {name: min(t) for name, t in times.items()}
        medians = {name: statistics.median(t) for name, t in times.items()}
        ideal = d_in / k if k else float("inf")
        row = {
            "d_out": d_out,
            "d_in": d_in,
            "sparsity": s,
            "k": k,
            "dense_us": med["dense"] * 1e6,
            "gemv_us": med["gemv"] * 1e6,
            "topk_us": med["topk"] * 1e6,
            "ideal": ideal,
            "gemv_speedup": med["dense"] / med["gemv"],
            "topk_speedup": med["dense"] / med["topk"],
            "dense_gb_s": d_out * d_in * elem / med["dense"] / 1e9,
            "gemv_gb_s": d_out * k * elem / med["gemv"] / 1e9,
            "samples": samples,
            "dense_median_us": medians["dense"] * 1e6,
            "gemv_median_us": medians["gemv"] * 1e6,
            "topk_median_us": medians["topk"] * 1e6,
            "topk_median_fraction": medians["dense"] / medians["topk"] / ideal,
        }
        row["gemv_fraction"] = row["gemv_speedup"] / ideal
        row["topk_fraction"] = row["topk_speedup"] / ideal
        rows.append(row)
    return rows


def to_markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# Sparse GEMV speed (batch 1)",
        "",
        f"Command: `{result['command']}`",
        "",
        (
            f"Machine: {m['cpu_model']}, {m['cpus']} CPUs, L3 {m['l3_cache']}, {m.get('gpu', 'no GPU')}; "
            f"torch {m['torch']}, {result['threads']} threads, clock {result['clock']}, dtype {result['dtype']}, backend `{result['backend']}`. "
            f"{m['note']} Load average at start {m['load_average_at_start']}, at end {result['load_average_at_end']}."
        ),
        "",
        (
            "Times: minimum over samples. dense = `F.linear(x, W)`; gemv = sparse GEMV over W^T given the selected channels; "
            "topk = TopK selection + GEMV (what sparse decode runs). fraction = speed-up / ideal, ideal = 1/(1-s). "
            f"Caches flushed before every timed call ({result['flush_mib']} MiB read) so weights stream from DRAM as in decode; "
            f"medians of {result['samples']} samples per cell, dense/gemv/topk interleaved."
        ),
        "",
        "| shape | s | k | dense µs | gemv µs | topk µs | ideal | gemv speed-up | gemv fraction | topk speed-up | topk fraction | dense GB/s | gemv GB/s | topk fraction (medians) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rows in result["shapes"].items():
        for r in rows:
            lines.append(
                f"| {name} | {r['sparsity']:.1f} | {r['k']} | {r['dense_us']:.1f} | {r['gemv_us']:.1f} | {r['topk_us']:.1f} | "
                f"{r['ideal']:.2f} | {r['gemv_speedup']:.2f}x | **{r['gemv_fraction']:.2f}** | {r['topk_speedup']:.2f}x | "
                f"**{r['topk_fraction']:.2f}** | {r['dense_gb_s']:.1f} | {r['gemv_gb_s']:.1f} | {r['topk_median_fraction']:.2f} |"
            )
    lines += ["", "## Target: >= 70% of ideal for 7B shapes at s = 0.5 and 0.8", ""]
    for h in result["headline"]:
        verdict = (
            "met" if h["topk_fraction"] >= TARGET_FRACTION else f"MISSED by {TARGET_FRACTION - h['topk_fraction']:.2f}"
        )
        lines.append(
            f"- {h['shape']} s={h['sparsity']}: topk fraction {h['topk_fraction']:.2f} "
            f"(gemv alone {h['gemv_fraction']:.2f}) -> {verdict}"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument(
        "--flush-mib",
        type=int,
        default=None,
        help="MiB read before each timed call (> last-level cache; default 96 CPU, 512 CUDA)",
    )
    parser.add_argument("--samples", type=int, default=25)
    parser.add_argument(
        "--clock",
        default="wall",
        choices=list(CLOCKS),
        help="cpu: CPU time of the calling thread (load-robust; only meaningful with --threads 1)",
    )
    parser.add_argument("--shapes", nargs="*", help="subset of shape names (substring match)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "gemv_speed"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if args.flush_mib is None:
        args.flush_mib = 512 if device.type == "cuda" else 96
    result = {
        "command": "python " + " ".join(sys.argv),
        "machine": describe_machine(),
        "threads": args.threads,
        "clock": args.clock,
        "dtype": args.dtype,
        "backend": kernels.backend_name(device, dtype),
        "flush_mib": args.flush_mib,
        "samples": args.samples,
        "shapes": {},
    }
    for name, (d_out, d_in) in SHAPES.items():
        if args.shapes and not any(sub in name for sub in args.shapes):
            continue
        rows = bench_shape(d_out, d_in, device, dtype, args.flush_mib << 20, args.samples, args.clock)
        result["shapes"][name] = rows
        for r in rows:
            print(
                f"{name:26s} s={r['sparsity']:.1f} dense {r['dense_us']:9.1f}us  gemv {r['gemv_us']:9.1f}us "
                f"({r['gemv_speedup']:5.2f}x, {r['gemv_fraction']:.2f} of ideal)  topk {r['topk_us']:9.1f}us "
                f"({r['topk_speedup']:5.2f}x, {r['topk_fraction']:.2f} of ideal {r['ideal']:.2f}x)",
                flush=True,
            )
    result["load_average_at_end"] = load_average()
    result["headline"] = [
        {
            "shape": name,
            "sparsity": r["sparsity"],
            "gemv_fraction": r["gemv_fraction"],
            "topk_fraction": r["topk_fraction"],
        }
        for name, rows in result["shapes"].items()
        for r in rows
        if (r["d_out"], r["d_in"]) in HEADLINE and r["sparsity"] in HEADLINE_SPARSITIES
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(to_markdown(result))
    print(f"wrote {out.with_suffix('.md')} and .json")


if __name__ == "__main__":
    main()
