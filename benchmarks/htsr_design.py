"""Design study of the calibration-free ``htsr-spectral`` rule, on WikiText-2 *validation* text only.

Scores each (metric, eps) candidate of ``acttail.methods.spectral`` against uniform TopK on the
validation windows that the calibrated methods choose on, on the design models (SmolLM2-135M,
Gemma-3-270M). The winner (lowest mean log-PPL ratio to uniform over models and targets) becomes
``DEFAULT_METRIC`` / ``DEFAULT_EPSILON``; the test split and the Qwen models are never looked at.

    nice -n 10 .venv/bin/python benchmarks/htsr_design.py --model smollm2-135m
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from acttail.methods import build_allocation, calibration_set
from acttail.methods.calibration import calibration_perplexity
from acttail.methods.spectral import METRICS, allocate_spectral
from acttail.models import resolve_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from leaderboard import load_esd_report


def window_nlls(model, calibration, allocation) -> list[float]:
    return list(calibration_perplexity(model, calibration, allocation).window_nlls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--targets", default="0.5,0.7")
    parser.add_argument("--epsilons", default="0.2,0.4")
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    began = time.perf_counter()
    report = load_esd_report(args.model)
    model, tokenizer = resolve_model(args.model).load_causal_lm()
    cal = calibration_set(tokenizer, max_tokens=args.tokens, seqlen=args.seqlen)
    rows = []
    for target in [float(t) for t in args.targets.split(",")]:
        base = window_nlls(model, cal, build_allocation("uniform", report=report, target=target))
        rows.append({"target": target, "metric": "uniform", "epsilon": 0.0, "ppl": math.exp(sum(base) / len(base))})
        for metric in METRICS:
            for eps in [float(e) for e in args.epsilons.split(",")]:
                nll = window_nlls(model, cal, allocate_spectral(report, target, metric=metric, epsilon=eps))
                ratio = sum(nll) / len(nll) - sum(base) / len(base)
                rows.append(
                    {
                        "target": target,
                        "metric": metric,
                        "epsilon": eps,
                        "ppl": math.exp(sum(nll) / len(nll)),
                        "log_ratio_vs_uniform": ratio,
                    }
                )
                print(f"{args.model} {target} {metric} eps={eps}: {rows[-1]['ppl']:.3f} ({ratio:+.4f})", flush=True)
    doc = {
        "model": args.model,
        "calibration": cal.describe(),
        "rows": rows,
        "elapsed_s": time.perf_counter() - began,
        "load_average": os.getloadavg(),
        "command": "python " + " ".join(sys.argv),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"htsr_design_{args.model}.json").write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
