"""How much a sparse perplexity moves when only the CPU kernels' instruction set changes.

The same leaderboard cell, rerun on another machine, gave another number (Gemma-3-270M,
htsr-spectral with thresholds at 50%: 173.8, 180.6 and 171.2 on three machines), while every rerun
on one machine repeats its number to the last digit. This benchmark isolates the cause: it runs
the same cells in fresh processes that differ only in the instruction set PyTorch, MKL and oneDNN
may use (``ATEN_CPU_CAPABILITY``, ``MKL_ENABLE_INSTRUCTIONS``, ``ONEDNN_MAX_CPU_ISA``), so the
only difference between the runs is floating-point rounding. Dense perplexity barely moves; TopK
and thresholds are discontinuous, so a rounding difference flips entries next to the cut-off and
the flips compound through the layers.

Reproduce (one core per process, one process at a time; about 5 minutes on Gemma-3-270M):

    .venv/bin/python benchmarks/isa_drift.py --model gemma3-270m
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _machine import describe_machine

#: Per library, how it spells "use at most this instruction set" (PyTorch's own kernels, MKL, oneDNN).
ISA_ENV = {
    "ATEN_CPU_CAPABILITY": {"AVX512": "avx512", "AVX2": "avx2"},
    "MKL_ENABLE_INSTRUCTIONS": {"AVX512": "AVX512", "AVX2": "AVX2"},
    "ONEDNN_MAX_CPU_ISA": {"AVX512": "AVX512_CORE", "AVX2": "AVX2"},
}
CELLS = (("dense", "topk"), ("uniform", "topk"), ("htsr-spectral", "topk"),
         ("uniform", "threshold"), ("htsr-spectral", "threshold"))  # fmt: skip


def measure(alias: str, target: float, seqlen: int, test_tokens: int, cal_tokens: int) -> dict[str, Any]:
    """Perplexity of every cell of ``CELLS`` in this process, with its per-window NLLs."""
    from dataclasses import replace

    import torch
    from leaderboard import load_esd_report

    from acttail.methods import build_allocations
    from acttail.models import resolve_model
    from acttail.pipeline import PipelineConfig, evaluate_variants
    from acttail.store.requests import PerplexitySpec

    source = resolve_model(alias)
    report = load_esd_report(alias)
    lm, tokenizer = source.load_causal_lm()
    torch.set_num_threads(1)
    config = PipelineConfig(targets=(), methods=(), calibration_tokens=cal_tokens,
                            perplexity=PerplexitySpec(seqlen=seqlen, max_tokens=test_tokens))  # fmt: skip
    out: dict[str, Any] = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "cells": {}}
    for method, mode in CELLS:
        alloc = None if method == "dense" else build_allocations([method], report=report, targets=[target])[0]
        variant = evaluate_variants((lm, tokenizer), [(None, alloc)], replace(config, mode=mode))[0]
        out["cells"][f"{method}/{mode}"] = {"ppl": variant.ppl, "window_nll": list(variant.perplexity.window_nlls)}
    return out


def run_child(isa: str, args: argparse.Namespace) -> dict[str, Any]:
    """``measure`` in a fresh process whose kernels may use at most ``isa``."""
    env = {**os.environ, **{name: spelling[isa] for name, spelling in ISA_ENV.items()}}
    cmd = [sys.executable, __file__, "--child", "--model", args.model, "--target", str(args.target),
           "--seqlen", str(args.seqlen), "--test-tokens", str(args.test_tokens), "--cal-tokens", str(args.cal_tokens)]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _change(a: float, b: float) -> float:
    return 100.0 * (b / a - 1.0)


def render(results: dict[str, dict[str, Any]], args: argparse.Namespace, machine: dict[str, Any]) -> str:
    """The markdown report: each cell's perplexity per instruction set, and the gain vs uniform per mode."""
    isas = list(results)
    first, other = isas[0], isas[-1]
    lines = [
        f"# Sparse perplexity vs the CPU instruction set: {args.model}, target {args.target:g}",
        "",
        f"Command: `.venv/bin/python benchmarks/isa_drift.py --model {args.model} --target {args.target:g}`  ",
        f"Protocol: WikiText-2 test, {args.test_tokens} tokens in windows of {args.seqlen}; thresholds calibrated on "
        f"{args.cal_tokens} validation tokens; one thread; each instruction set in a fresh process.  ",
        f"Machine: {machine['cpu_model']}, {machine['cpus']} CPUs, {machine['note']} "
        f"Load average at start {tuple(round(x, 2) for x in machine['load_average_at_start'])}.",
        "",
        "| cell | " + " | ".join(f"ppl ({isa})" for isa in isas) + f" | {other} vs {first} |",
        "|---|" + "---|" * (len(isas) + 1),
    ]
    for cell in results[first]["cells"]:
        ppls = [results[isa]["cells"][cell]["ppl"] for isa in isas]
        lines.append(f"| {cell} | " + " | ".join(f"{p:.4f}" for p in ppls) + f" | {_change(ppls[0], ppls[-1]):+.3f}% |")
    lines += ["", "Gain of htsr-spectral over uniform (same mode, same instruction set):", ""]
    lines += ["| mode | " + " | ".join(isas) + " |", "|---|" + "---|" * len(isas)]
    for mode in ("topk", "threshold"):
        gains = [
            _change(
                results[isa]["cells"][f"uniform/{mode}"]["ppl"], results[isa]["cells"][f"htsr-spectral/{mode}"]["ppl"]
            )
            for isa in isas
        ]
        lines.append(f"| {mode} | " + " | ".join(f"{g:+.2f}%" for g in gains) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--test-tokens", type=int, default=2048)
    parser.add_argument("--cal-tokens", type=int, default=1024)
    parser.add_argument(
        "--isas",
        default="AVX512,AVX2",
        help=f"instruction sets, the host's own first: {', '.join(ISA_ENV['MKL_ENABLE_INSTRUCTIONS'])}",
    )
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.model, args.target, args.seqlen, args.test_tokens, args.cal_tokens)))
        return
    unknown = set(args.isas.split(",")) - set(ISA_ENV["MKL_ENABLE_INSTRUCTIONS"])
    if unknown:
        parser.error(f"unknown instruction set {', '.join(sorted(unknown))}")
    machine = describe_machine()  # its note reads the load before our own processes start
    results: dict[str, dict[str, Any]] = {}
    for isa in args.isas.split(","):
        t0 = time.perf_counter()
        results[isa] = run_child(isa, args)
        print(f"{isa}: ran as {results[isa]['cpu_capability']} in {time.perf_counter() - t0:.0f} s", flush=True)
    text = render(results, args, machine)
    print(text)
    stem = args.out_dir / f"isa_drift_{args.model}"
    stem.with_suffix(".md").write_text(text)
    payload = {"machine": machine, "settings": vars(args) | {"out_dir": str(args.out_dir)}, "results": results}
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
