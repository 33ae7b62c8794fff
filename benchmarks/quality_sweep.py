"""Quality sweep: dense vs uniform vs ActTail (TopK activation sparsity) on WikiText-2.

Reproduce (SmolLM2-135M, then Gemma-3-270M):

    .venv/bin/python benchmarks/quality_sweep.py --model smollm2-135m --max-tokens 16384 \
        --targets 0.5,0.7,0.8,0.3,0.9 --epsilons 0.1,0.2,0.3,0.05 --out benchmarks/results/quality_smollm2-135m
    .venv/bin/python benchmarks/quality_sweep.py --model gemma3-270m --max-tokens 4096 \
        --targets 0.5,0.7,0.8 --epsilons 0.1 --out benchmarks/results/quality_gemma3-270m
    .venv/bin/python benchmarks/quality_sweep.py --model smollm2-135m --dense-only \
        --out benchmarks/results/quality_smollm2-135m_dense_full     # full test split, dense only

Protocol: WikiText-2 raw test, rows joined with "\\n\\n", tokenised once, non-overlapping windows
of --seqlen (2048), the first --max-tokens tokens only (a documented budget, not the full split);
every variant is scored on the *same* windows, so differences between variants are paired.
Allocations: parameter-weighted budget (acttail.allocate), alphas from acttail.esd (--estimator).
"gain" = 100 * (ppl_uniform - ppl) / ppl_uniform at the same target: positive = ActTail better.
Variants run in priority order (targets as given; for each target: uniform, then every
(epsilon, direction, granularity)), and results are rewritten after every variant, so a run cut
short still leaves a valid table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from _machine import busy_note

from acttail.allocate import AllocationParams, Direction, Granularity, allocate
from acttail.environment import environment
from acttail.esd import analyze_source
from acttail.evaluate.perplexity import evaluate_perplexity, tokenize_split
from acttail.models import resolve_model
from acttail.sparsity import apply_sparsity


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--targets", default="0.5,0.7,0.8,0.3,0.9")
    p.add_argument("--epsilons", default="0.1,0.2,0.3,0.05")
    p.add_argument("--directions", default="higher_alpha_sparser,lower_alpha_sparser")
    p.add_argument("--granularities", default="projection")
    p.add_argument("--estimator", default="ks")
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--max-tokens", type=int, default=16384)
    p.add_argument("--dense-only", action="store_true", help="Only the dense model (use without --max-tokens cap).")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--esd-json", help="Reuse a stored ESDReport (acttail.esd to_dict JSON) of the same model.")
    p.add_argument("--resume", action="store_true", help="Keep rows already in <out>.json (same settings), skip them.")
    p.add_argument("--out", required=True, help="Output prefix: writes <out>.json and <out>.md")
    return p.parse_args()


def machine(busy: str) -> str:
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs visible, "
        f"torch threads {torch.get_num_threads()}; {busy} (load average at start {os.getloadavg()[0]:.1f})"
    )


def write(out: Path, doc: dict) -> None:
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    rows = doc["rows"]
    uniform = {r["target"]: r["ppl"] for r in rows if r["method"] == "uniform"}
    lines = [
        f"# Quality sweep: {doc['model']['model_id']} ({doc['model']['architecture']})",
        "",
        f"Command: `{doc['command']}`",
        "",
        f"WikiText-2 raw test, seqlen {doc['seqlen']}, {doc['windows']} windows = {doc['tokens_scored']} tokens "
        f"scored (first {doc['max_tokens'] or 'all'} tokens of {doc['corpus_tokens']}); mode topk; "
        f"estimator {doc['estimator']}; fingerprint `{doc['model']['fingerprint'][:16]}`.",
        f"Machine: {doc['machine']}.",
        "gain = 100·(ppl_uniform − ppl)/ppl_uniform at the same target (positive = lower perplexity than uniform).",
        "",
        "| target | method | epsilon | direction | granularity | ppl | gain vs uniform | realised | s (min–max) | time (s) |",
        "|---:|---|---:|---|---|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        base = uniform.get(r["target"])
        gain = "" if r["method"] != "acttail" or base is None else f"{100 * (base - r['ppl']) / base:+.1f}%"
        lines.append(
            f"| {r['target']:.0%} | {r['method']} | {r.get('epsilon', '')} | {r.get('direction', '')} | "
            f"{r.get('granularity', '')} | {r['ppl']:.3f} | {gain} | {r['realised']:.3f} | "
            f"{r['s_min']:.2f}–{r['s_max']:.2f} | {r['seconds']:.0f} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    args = parse_args()
    busy = busy_note()  # before the model load adds to the load
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    source = resolve_model(args.model)
    description = source.describe().as_dict()
    model, tokenizer = source.load_causal_lm()
    ids = tokenize_split(tokenizer, "test")
    max_tokens = None if args.dense_only and args.max_tokens <= 0 else args.max_tokens
    doc = {
        "command": "python benchmarks/quality_sweep.py " + " ".join(os.sys.argv[1:]),
        "model": description,
        "seqlen": args.seqlen,
        "max_tokens": max_tokens,
        "corpus_tokens": int(ids.numel()),
        "estimator": args.estimator,
        "machine": machine(busy),
        "versions": environment(),
        "rows": [],
    }

    if args.resume and out.with_suffix(".json").exists():
        previous = json.loads(out.with_suffix(".json").read_text())
        if previous["model"]["fingerprint"] == description["fingerprint"] and previous["max_tokens"] == max_tokens:
            doc["rows"] = previous["rows"]
            doc.update({k: previous[k] for k in ("windows", "tokens_scored") if k in previous})

    def done(method: str, target: float, extra: dict) -> bool:
        return any(
            r["method"] == method and r["target"] == target and all(r.get(k) == v for k, v in extra.items())
            for r in doc["rows"]
        )

    def record(method: str, target: float, alloc=None, **extra) -> None:
        if done(method, target, extra):
            return
        began = time.perf_counter()
        handle = apply_sparsity(model, alloc) if alloc is not None else None
        try:
            result = evaluate_perplexity(
                model, token_ids=ids, seqlen=args.seqlen, max_tokens=max_tokens, progress=False
            )
            realised = handle.realised_sparsity().total if handle else 0.0
        finally:
            if handle:
                handle.remove()
        values = list(alloc.sparsities.values()) if alloc is not None else [0.0]
        doc.update(windows=result.windows, tokens_scored=result.tokens_scored)
        doc["rows"].append(
            dict(
                method=method,
                target=target,
                ppl=result.ppl,
                nll=result.nll,
                realised=realised,
                s_min=min(values),
                s_max=max(values),
                seconds=time.perf_counter() - began,
                **extra,
            )
        )
        write(out, doc)
        print(
            f"{method:8s} target={target:.2f} {extra} ppl={result.ppl:.3f} ({time.perf_counter() - began:.0f}s)",
            flush=True,
        )

    record("dense", 0.0)
    if args.dense_only:
        return
    if args.esd_json:
        from acttail.esd import ESDReport

        report = ESDReport.from_dict(json.loads(Path(args.esd_json).read_text()))
        if report.model.get("fingerprint") != description["fingerprint"] or report.estimator != args.estimator:
            raise SystemExit("--esd-json is for another model or estimator")
    else:
        report = analyze_source(source, estimator=args.estimator, progress=False)
    doc["alphas"] = report.alphas()
    alphas, counts = report.alphas(), report.param_counts()
    for target in (float(t) for t in args.targets.split(",")):
        record("uniform", target, allocate(alphas, counts, target, method="uniform"))
        for eps in (float(e) for e in args.epsilons.split(",")):
            for direction in args.directions.split(","):
                for granularity in args.granularities.split(","):
                    params = AllocationParams(
                        epsilon=eps, direction=Direction(direction), granularity=Granularity(granularity)
                    )
                    alloc = allocate(alphas, counts, target, method="acttail", params=params)
                    record("acttail", target, alloc, epsilon=eps, direction=direction, granularity=granularity)


if __name__ == "__main__":
    main()
