"""The whole pipeline on the bigger bundled models, on this CPU: alphas, dense and sparse WikiText-2
perplexity in fp32 and bf16, with wall time and peak memory per stage.

Reproduce (one model per process, 0.5B first; results merge into one .json/.md):

    make models-large
    nice -n 10 .venv/bin/python benchmarks/scale_real.py --model qwen2.5-coder-0.5b --max-tokens 4096 --seqlen 512
    nice -n 10 .venv/bin/python benchmarks/scale_real.py --model qwen2.5-coder-1.5b --max-tokens 2048 --seqlen 512

Every step is the project's own: ``acttail.esd.analyze_source`` for the alphas,
``acttail.pipeline.build_allocations`` for uniform / the paper's rule (``acttail``) / ``auto``,
``acttail.pipeline.evaluate_variants`` for TopK perplexity, ``load_causal_lm(Placement)`` for the
fp32 and bf16 loads. Allocations are built once (from the alphas, which do not depend on the
evaluation dtype) and evaluated in both dtypes. ``--auto`` adds the default method, which
calibrates on WikiText-2 validation (its greedy search costs ~70 forward passes of the
calibration text, so it is off by default on a 2-core machine).

Peak memory per stage is the process's peak RSS within that stage: the kernel's high-water mark
(VmHWM) is reset at the start of each stage (``/proc/self/clear_refs``), after the previous
stage's objects were freed and returned to the OS (``malloc_trim``); the RSS at the stage's start
is recorded beside it.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import re
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._machine import describe_machine, load_average

DTYPES = ("float32", "bfloat16")
BF16_TOLERANCE = 0.01  # the bar: bf16 perplexity within 1% of fp32
SAVE: Callable[[dict[str, Any]], None] | None = None  # set by main(): writes the .json and .md


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _status_mib(field: str) -> float:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    return int(match.group(1)) / 1024 if match else float("nan")


def _release_memory() -> None:
    gc.collect()
    with suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@contextmanager
def stage(doc: dict[str, Any], name: str, **extra: Any) -> Iterator[dict[str, Any]]:
    """Time one stage and record its peak RSS; the yielded dict takes the stage's own numbers.

    The document is saved after every stage (``SAVE``), so an interrupted run keeps what it measured.
    """
    _release_memory()
    reset = _reset_peak()
    row: dict[str, Any] = {"stage": name, **extra, "rss_start_mib": round(_status_mib("VmRSS"), 1)}
    log(f"{name} ...")
    began = time.perf_counter()
    yield row
    row["wall_s"] = round(time.perf_counter() - began, 2)
    row["peak_rss_mib"] = round(_status_mib("VmHWM"), 1)
    row["peak_scope"] = "stage" if reset else "process so far (clear_refs unavailable)"
    row["load_average_end"] = [round(x, 2) for x in load_average()]
    doc["stages"].append(row)
    log(f"{name}: {row['wall_s']} s, peak RSS {row['peak_rss_mib']:.0f} MiB")
    if SAVE is not None:
        SAVE(doc)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from acttail.esd import analyze_source
    from acttail.models import resolve_model
    from acttail.models.placement import Placement
    from acttail.pipeline import PipelineConfig, build_allocations
    from acttail.store.requests import PerplexitySpec

    methods = ("uniform", "acttail", *(("auto",) if args.auto else ()))
    config = PipelineConfig(
        targets=(args.target,),
        methods=methods,
        perplexity=PerplexitySpec(seqlen=args.seqlen, max_tokens=args.max_tokens),
        calibration_tokens=args.calibration_tokens,
    )
    config.validate()
    stages: list[dict[str, Any]] = []
    doc: dict[str, Any] = {
        "model": args.model,
        "command": "nice -n 10 " + shlex.join([".venv/bin/python", "benchmarks/scale_real.py", *sys.argv[1:]]),
        "machine": describe_machine(),
        "protocol": config.to_dict(),
        "stages": stages,
        "variants": [],
    }
    with stage(doc, "resolve + sha256 check"):
        source = resolve_model(args.model)
        doc["description"] = source.describe().as_dict()
    with stage(doc, "alphas (ESD, fp32 from the GGUF, streamed)") as row:
        report = analyze_source(source, estimator=config.estimator, progress=False)
        alphas = report.alphas()
        row["projections"] = len(alphas)
        doc["alphas"] = {"count": len(alphas), "mean": sum(alphas.values()) / len(alphas), "values": alphas}
    static = replace(config, methods=tuple(m for m in methods if m != "auto"))
    allocations = build_allocations(report, static)
    if args.cast_bf16:
        evaluate_cast(args, doc, source, report, config, allocations)
    else:
        for dtype in args.dtypes:
            with stage(doc, f"load {dtype}", dtype=dtype):
                lm, tokenizer = source.load_causal_lm(Placement(device="cpu", dtype=dtype))
                assert next(lm.parameters()).dtype == getattr(torch, dtype)
            if args.auto and not any(a.method == "auto" for a in allocations):
                with stage(doc, f"auto allocation (calibration, {dtype})", dtype=dtype):
                    allocations += build_allocations(report, replace(config, methods=("auto",)), lm, tokenizer)
            for alloc in [None, *allocations]:
                evaluate_one(args, doc, {dtype: lm}, tokenizer, alloc, config)
            del lm, tokenizer
    doc["bf16_vs_fp32"] = bf16_vs_fp32(doc["variants"])
    doc["machine"]["load_average_at_end"] = load_average()
    return doc


def evaluate_one(
    args: argparse.Namespace,
    doc: dict[str, Any],
    models: dict[str, Any],
    tokenizer: Any,
    alloc: Any,
    config: Any,
) -> None:
    """One allocation (None = dense) on each loaded model, one stage each, checkpointed."""
    from acttail.models import find_projections
    from acttail.pipeline import evaluate_variants

    label = "dense" if alloc is None else f"{alloc.method}@{alloc.target:g}"
    for dtype, lm in models.items():
        if alloc is not None:
            alloc.check_matches(doc["description"]["fingerprint"], [ref.name for ref, _ in find_projections(lm)])
        with stage(doc, f"{label} {dtype}", dtype=dtype) as row:
            (variant,) = evaluate_variants((lm, tokenizer), [(None, alloc)], config)
            row["ppl"] = variant.ppl
        doc["variants"].append(
            {
                "dtype": dtype,
                "label": label,
                "ppl": variant.ppl,
                "tokens_scored": variant.perplexity.tokens_scored if variant.perplexity else None,
                "realised_sparsity": variant.realised_sparsity,
                "wall_s": row["wall_s"],
                "peak_rss_mib": row["peak_rss_mib"],
            }
        )
        if SAVE is not None:
            SAVE(doc)


def evaluate_cast(
    args: argparse.Namespace, doc: dict[str, Any], source: Any, report: Any, config: Any, allocations: list[Any]
) -> None:
    """One fp32 load, every allocation evaluated, then the same model cast to bf16 in place and
    evaluated again. The bf16 values should equal a bf16 load's (that path too dequantises GGUF
    tensors to fp32, then rounds; not compared bit for bit here); this saves a second dequantising load when time is short and
    never holds two copies (the bf16 stages' RSS at start still includes freed fp32 pages that
    the allocator kept)."""
    import torch

    from acttail.models.placement import Placement
    from acttail.pipeline import build_allocations

    with stage(doc, "load float32", dtype="float32"):
        lm, tokenizer = source.load_causal_lm(Placement(device="cpu", dtype="float32"))
    if args.auto:
        with stage(doc, "auto allocation (calibration, float32)", dtype="float32"):
            allocations += build_allocations(report, replace(config, methods=("auto",)), lm, tokenizer)
    for alloc in [None, *allocations]:
        evaluate_one(args, doc, {"float32": lm}, tokenizer, alloc, config)
    if "bfloat16" in args.dtypes:
        with stage(doc, "cast to bfloat16 in place", dtype="bfloat16"):
            lm.to(torch.bfloat16)
        for alloc in [None, *allocations]:
            evaluate_one(args, doc, {"bfloat16": lm}, tokenizer, alloc, config)


def bf16_vs_fp32(variants: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per variant: 100 * (ppl_bf16 - ppl_fp32) / ppl_fp32 and whether it is within the 1% bar."""
    by = {(v["label"], v["dtype"]): v["ppl"] for v in variants}
    out = {}
    for (label, dtype), ppl in by.items():
        fp32 = by.get((label, "float32"))
        if dtype == "bfloat16" and fp32:
            change = 100.0 * (ppl - fp32) / fp32
            out[label] = {"change_pct": change, "within_1pct": abs(change) <= 100 * BF16_TOLERANCE}
    return out


def render(runs: dict[str, dict[str, Any]]) -> str:
    lines = [
        "# The whole pipeline on the bigger bundled models (CPU)",
        "",
        "Written by `benchmarks/scale_real.py` (see its docstring for the protocol). WikiText-2 raw test",
        "perplexity on the first `max_tokens` tokens in non-overlapping windows of `seqlen`; TopK",
        "activation sparsity at the target; alphas (KS estimator) from the dequantised GGUF weights in",
        "fp32, the same allocations evaluated in fp32 and bf16. Peak RSS is per stage (high-water mark",
        "reset at each stage's start). Absolute times depend on how busy the 2-core machine was: the",
        "load averages are recorded with every run and stage.",
        "",
    ]
    for alias, doc in runs.items():
        proto = doc["protocol"]["perplexity"]
        machine = doc["machine"]
        lines += [
            f"## {alias}",
            "",
            f"Command: `{doc['command']}`",
            "",
            f"Token budget: {proto['max_tokens']} test tokens, seqlen {proto['seqlen']} "
            f"({proto['max_tokens'] // proto['seqlen']} windows); targets {doc['protocol']['targets']}; "
            f"methods {', '.join(doc['protocol']['methods'])}. {doc['description']['num_layers']} blocks, "
            f"{doc['description']['projection_params'] / 1e6:.0f} M projection parameters"
            + (
                f"; mean alpha {doc['alphas']['mean']:.3f} over {doc['alphas']['count']} projections."
                if "alphas" in doc
                else "."
            ),
            "",
            f"Machine: {machine['cpu_model']}, {machine['cpus']} CPUs, torch {machine['torch']} "
            f"({machine['torch_threads']} threads); load average at start "
            f"{', '.join(f'{x:.2f}' for x in machine['load_average_at_start'])}"
            + (
                f", at end {', '.join(f'{x:.2f}' for x in machine['load_average_at_end'])}"
                if "load_average_at_end" in machine
                else " (run incomplete)"
            )
            + f"; {machine['date_utc']}.",
            "",
            *([f"**Note:** {doc['note']}", ""] if doc.get("note") else []),
            "| variant | dtype | PPL | realised sparsity | wall s | peak RSS MiB |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for v in doc["variants"]:
            lines.append(
                f"| {v['label']} | {v['dtype']} | {v['ppl']:.4f} | {v['realised_sparsity']:.3f} | "
                f"{v['wall_s']:.0f} | {v['peak_rss_mib']:.0f} |"
            )
        gains = {
            (v["dtype"]): v["ppl"]
            for v in doc["variants"]
            if v["label"] == f"uniform@{doc['protocol']['targets'][0]:g}"
        }
        for v in doc["variants"]:
            base = gains.get(v["dtype"])
            if v["label"].startswith("acttail@") and base:
                lines.append("")
                lines.append(
                    f"{v['dtype']}: the paper's rule vs uniform at {v['label'][8:]}: perplexity "
                    f"{100 * (v['ppl'] - base) / base:+.2f}% (negative = the paper's rule is better)."
                )
        if doc.get("bf16_vs_fp32"):
            lines += ["", "bf16 vs fp32 perplexity (bar: within 1%):", ""]
            for label, cmp in doc["bf16_vs_fp32"].items():
                verdict = "within 1%" if cmp["within_1pct"] else "OUTSIDE 1%"
                lines.append(f"- {label}: {cmp['change_pct']:+.3f}% ({verdict})")
        lines += [
            "",
            "| stage | wall s | peak RSS MiB | RSS at start MiB | load avg at end |",
            "|---|---:|---:|---:|---|",
        ]
        for s in doc["stages"]:
            lines.append(
                f"| {s['stage']} | {s['wall_s']:.1f} | {s['peak_rss_mib']:.0f} | {s['rss_start_mib']:.0f} | "
                f"{', '.join(f'{x:.2f}' for x in s['load_average_end'])} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated, from float32,bfloat16")
    parser.add_argument("--auto", action="store_true", help="also the default method auto (calibrates)")
    parser.add_argument("--calibration-tokens", type=int, default=512)
    parser.add_argument(
        "--cast-bf16", action="store_true", help="one fp32 load, then cast to bf16 in place (no second load)"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scale_real"))
    args = parser.parse_args()
    args.dtypes = tuple(d.strip() for d in args.dtypes.split(",") if d.strip())
    unknown = [d for d in args.dtypes if d not in DTYPES]
    if unknown:
        parser.error(f"unknown dtype {unknown[0]!r}; valid: {', '.join(DTYPES)}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    json_path, md_path = args.out.with_suffix(".json"), args.out.with_suffix(".md")
    runs: dict[str, dict[str, Any]] = json.loads(json_path.read_text())["runs"] if json_path.exists() else {}

    def checkpoint(doc: dict[str, Any]) -> None:
        """Write after every variant, so an interrupted run still leaves its numbers."""
        runs[args.model] = doc
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({"format": "acttail.scale_real", "runs": runs}, indent=1) + "\n")
        md_path.write_text(render(runs))

    global SAVE
    SAVE = checkpoint
    from acttail.errors import ActTailError

    try:
        checkpoint(run(args))
    except ActTailError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    log(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
