"""Allocation methods side by side: WikiText-2 *test* perplexity of dense, uniform, TEAL-greedy,
ActTail default (eps 0.1, higher-alpha-sparser, per projection) and auto, per target sparsity.

Reproduce (one model per process; the model is loaded once, alphas are reused from --esd-dir):

    .venv/bin/python benchmarks/method_sweep.py --model smollm2-135m --test-tokens 16384 --sensitivity
    .venv/bin/python benchmarks/method_sweep.py --model gemma3-270m --test-tokens 16384 --sensitivity

Calibration (auto's grid scores, TEAL's greedy search, the sensitivity study) uses WikiText-2 raw
*validation* only. Perplexity: non-overlapping windows of --seqlen over the first --test-tokens
tokens of the test split. "+-" is the paired standard error of the change against uniform over
windows (same windows for every method), so a change is beyond noise when it exceeds ~2 SE.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _machine import busy_note

from acttail.allocate import Allocation
from acttail.esd import ESDReport, analyze_source
from acttail.evaluate.perplexity import tokenize_split, window_nll
from acttail.methods import build_allocation, calibration_set
from acttail.methods.auto import auto_allocation
from acttail.methods.teal_greedy import allocation_from_trace, greedy_trace
from acttail.models import resolve_model
from acttail.registry import ESTIMATORS
from acttail.sparsity import apply_sparsity


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def load_reports(alias: str, esd_dir: Path, estimators: tuple[str, ...]) -> list[ESDReport]:
    reports = []
    for est in estimators:
        path = esd_dir / f"esd_{alias}_{est}.json"
        if path.exists():
            reports.append(ESDReport.from_dict(json.loads(path.read_text())))
        else:
            log(f"computing ESD ({est}) for {alias}")
            report = analyze_source(resolve_model(alias), est, progress=False)
            esd_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(report.to_dict()))
            reports.append(report)
    return reports


def window_nlls(
    model: torch.nn.Module,
    ids: torch.Tensor,
    seqlen: int,
    sparsities: Allocation | None,
) -> np.ndarray:
    """Mean NLL of each test window (every token after the first of its window is scored)."""
    handle = None if sparsities is None else apply_sparsity(model, sparsities, "topk", track=False)
    out = []
    try:
        with torch.inference_mode():
            for w in range(ids.numel() // seqlen):
                nll, count = window_nll(model, ids[w * seqlen : (w + 1) * seqlen].unsqueeze(0))
                out.append(nll / count)
    finally:
        if handle is not None:
            handle.remove()
    return np.array(out)


def change_vs(base: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """(% change of PPL vs base, paired standard error in %), windows have equal token counts."""
    diff = other - base
    pct = (math.exp(other.mean() - base.mean()) - 1.0) * 100.0
    se = float(diff.std(ddof=1) / math.sqrt(len(diff))) * 100.0 if len(diff) > 1 else float("nan")
    return pct, se


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--targets", default="0.3,0.5,0.7,0.8,0.9")
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--test-tokens", type=int, default=16384)
    parser.add_argument(
        "--cal-tokens",
        type=int,
        default=4096,
        help="auto's calibration tokens (validation)",
    )
    parser.add_argument("--greedy-tokens", type=int, default=512)
    parser.add_argument("--greedy-step", type=float, default=0.1)
    parser.add_argument("--sensitivity", action="store_true", help="also run the sensitivity study")
    parser.add_argument("--sens-tokens", type=int, default=2048)
    parser.add_argument("--sens-level", type=float, default=0.7)
    parser.add_argument("--esd-dir", type=Path, default=Path("/tmp/acttail_study"))
    parser.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    busy = busy_note()  # before the model load adds to the load
    torch.set_num_threads(args.threads)
    targets = [float(t) for t in args.targets.split(",")]
    started = time.perf_counter()
    reports = load_reports(args.model, args.esd_dir, ESTIMATORS)
    report = next(r for r in reports if r.estimator == "ks")
    model, tokenizer = resolve_model(args.model).load_causal_lm()
    test_ids = tokenize_split(tokenizer, "test")[: args.test_tokens]
    calibration = calibration_set(tokenizer, max_tokens=args.cal_tokens, seqlen=args.seqlen)
    log(f"loaded {args.model}; {test_ids.numel()} test tokens, {calibration.num_tokens} calibration tokens")
    stem = args.model.replace("/", "_")
    doc: dict = {
        "model": report.model,
        "command": "python " + " ".join(sys.argv),
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads of a 2-core VM; {busy}",
        "protocol": {
            "dataset": "wikitext-2-raw-v1 test",
            "seqlen": args.seqlen,
            "test_tokens": int(test_ids.numel()),
            "windows": int(test_ids.numel() // args.seqlen),
            "mode": "topk",
            "calibration": calibration.describe(),
            "greedy_tokens": args.greedy_tokens,
            "greedy_step": args.greedy_step,
            "estimator": "ks",
        },
        "rows": [],
    }
    if args.sensitivity:
        run_sensitivity(model, tokenizer, reports, args, stem)
    dense = window_nlls(model, test_ids, args.seqlen, None)
    doc["dense_ppl"] = math.exp(dense.mean())
    log(f"dense test PPL {doc['dense_ppl']:.3f}")
    trace_start = time.perf_counter()
    trace = greedy_trace(
        model,
        calibration,
        max_target=max(targets),
        step=args.greedy_step,
        max_tokens=args.greedy_tokens,
    )
    doc["greedy_seconds"] = time.perf_counter() - trace_start
    log(f"greedy trace in {doc['greedy_seconds']:.0f}s")
    for target in targets:  # in the given order: put the targets that matter most first
        doc["rows"].append(sweep_target(model, report, calibration, trace, test_ids, args.seqlen, target))
        doc["elapsed_s"] = time.perf_counter() - started
        write(doc, args.out_dir / f"method_sweep_{stem}")


def sweep_target(model, report, calibration, trace, test_ids, seqlen, target) -> dict:
    cache: dict[tuple[float, ...], np.ndarray] = {}

    def evaluate(alloc: Allocation) -> np.ndarray:
        key = tuple(round(alloc.sparsities[n], 12) for n in sorted(alloc.sparsities))
        if key not in cache:
            cache[key] = window_nlls(model, test_ids, seqlen, alloc)
        return cache[key]

    uniform = build_allocation("uniform", report=report, target=target)
    acttail = build_allocation("acttail", report=report, target=target)
    greedy = allocation_from_trace(trace, report.param_counts(), target)
    choice = auto_allocation(report, target, model, calibration, trace=trace)
    base = evaluate(uniform)
    row = {
        "target": target,
        "uniform_ppl": math.exp(base.mean()),
        "auto_choice": choice.labels[choice.chosen],
        "auto_best_on_calibration": choice.labels[choice.best],
        "auto_grid_calibration_ppl": dict(zip(choice.labels, choice.ppl, strict=True)),
    }
    for name, alloc in (
        ("teal_greedy", greedy),
        ("acttail", acttail),
        ("auto", choice.allocation),
    ):
        nlls = evaluate(alloc)
        pct, se = change_vs(base, nlls)
        row[f"{name}_ppl"], row[f"{name}_change_pct"], row[f"{name}_se_pct"] = (
            math.exp(nlls.mean()),
            pct,
            se,
        )
    log(
        f"target {target}: uniform {row['uniform_ppl']:.3f} greedy {row['teal_greedy_ppl']:.3f} "
        f"acttail {row['acttail_ppl']:.3f} auto {row['auto_ppl']:.3f} ({row['auto_choice']})"
    )
    return row


def write(doc: dict, prefix: Path) -> None:
    prefix.parent.mkdir(parents=True, exist_ok=True)
    prefix.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    p = doc["protocol"]
    lines = [
        f"# Allocation methods on {doc['model'].get('model_id')} (WikiText-2 test perplexity, TopK)",
        "",
        f"Command: `{doc['command']}`",
        "",
        f"Protocol: seqlen {p['seqlen']}, {p['test_tokens']} test tokens ({p['windows']} windows); calibration "
        f"{p['calibration']['tokens']} WikiText-2 *validation* tokens (auto's grid), greedy search on the first "
        f"{p['greedy_tokens']} of them (step {p['greedy_step']}); alpha estimator {p['estimator']}. "
        f"Machine: {doc['machine']}.",
        "",
        f"Dense PPL: **{doc['dense_ppl']:.3f}**. Changes are against uniform at the same parameter-weighted "
        "sparsity (negative = better), +- one paired standard error over windows.",
        "",
        "| target | uniform | TEAL-greedy | ActTail default | auto | auto's choice |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for r in sorted(doc["rows"], key=lambda r: r["target"]):
        cells = [
            f"{r[f'{m}_ppl']:.3f} ({r[f'{m}_change_pct']:+.1f}% +- {r[f'{m}_se_pct']:.1f})"
            for m in ("teal_greedy", "acttail", "auto")
        ]
        lines.append(
            f"| {r['target']:.0%} | {r['uniform_ppl']:.3f} | " + " | ".join(cells) + f" | {r['auto_choice']} |"
        )
    lines += ["", "auto's grid (calibration perplexity, validation split):", ""]
    for r in doc["rows"]:
        grid = ", ".join(f"{k}: {v:.3f}" for k, v in r["auto_grid_calibration_ppl"].items())
        lines.append(f"- {r['target']:.0%}: {grid}")
    lines.append(f"\nElapsed: {doc.get('elapsed_s', 0):.0f} s (greedy search {doc.get('greedy_seconds', 0):.0f} s).")
    prefix.with_suffix(".md").write_text("\n".join(lines) + "\n")


def run_sensitivity(model, tokenizer, reports, args, stem) -> None:
    from acttail.sensitivity import plot_sensitivity, predictor_table, sensitivity_study

    cal = calibration_set(tokenizer, max_tokens=args.sens_tokens, seqlen=args.seqlen)
    t = time.perf_counter()
    result = sensitivity_study(model, cal, reports, level=args.sens_level, groups=3, model_id=args.model)
    prefix = args.out_dir / f"sensitivity_{stem}"
    doc = result.to_dict()
    doc["command"] = "python " + " ".join(sys.argv)
    doc["elapsed_s"] = time.perf_counter() - t
    prefix.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    plot_sensitivity(result, prefix.with_suffix(".png"))
    kinds, mat = result.matrix("delta_nll")
    _, per = result.matrix("delta_nll_per_mparam")
    lines = [
        f"# Sensitivity of {args.model} (one kind x layer group at {result.level:g}, TopK)",
        "",
        f"Command: `{doc['command']}`",
        "",
        f"Calibration: {cal.num_tokens} WikiText-2 validation tokens, seqlen {cal.seqlen}; dense PPL "
        f"{result.dense_ppl:.3f}. Cell value: dNLL (nats/token) and, in brackets, dNLL per million weights "
        "skipped.",
        "",
        "| kind | " + " | ".join(f"L{c.layers[0]}-{c.layers[-1]}" for c in result.cells[: result.groups]) + " |",
        "|---|" + "---:|" * result.groups,
    ]
    for i, kind in enumerate(kinds):
        lines.append(
            f"| {kind} | " + " | ".join(f"{mat[i, g]:.4f} ({per[i, g]:.4f})" for g in range(result.groups)) + " |"
        )
    lines += [
        "",
        "Spearman rho of each predictor with sensitivity (21 cells; negative: higher value = less "
        "sensitive, which is what higher-alpha-sparser assumes for alpha):",
        "",
        "| predictor | rho vs dNLL | rho vs dNLL per M weights |",
        "|---|---:|---:|",
    ]
    lines += [f"| {k} | {a:+.2f} | {b:+.2f} |" for k, a, b in predictor_table(result)]
    prefix.with_suffix(".md").write_text("\n".join(lines) + "\n")
    log(f"sensitivity study in {doc['elapsed_s']:.0f}s")


if __name__ == "__main__":
    main()
