"""Sensitivity study: sparsify one projection kind in one layer group at a time (TopK at --level) and
rank-correlate the perplexity damage on WikiText-2 *validation* with alpha (ks, ks_peak, hill),
spectral norm, stable rank and input-activation statistics.

Reproduce:

    .venv/bin/python benchmarks/sensitivity_study.py --model smollm2-135m --seqlen 256 --tokens 512

Writes benchmarks/results/sensitivity_<model>.{md,json,png}. The same study is `acttail sensitivity MODEL`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from method_sweep import ESTIMATORS, load_reports, log, run_sensitivity

from acttail.models import resolve_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=512, help="calibration tokens (validation)")
    parser.add_argument("--level", type=float, default=0.7)
    parser.add_argument("--esd-dir", type=Path, default=Path("/tmp/acttail_study"))
    parser.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reports = load_reports(args.model, args.esd_dir, ESTIMATORS)
    model, tokenizer = resolve_model(args.model).load_causal_lm()
    log(f"loaded {args.model}")
    t = time.perf_counter()
    run_sensitivity(
        model,
        tokenizer,
        reports,
        argparse.Namespace(
            sens_tokens=args.tokens,
            seqlen=args.seqlen,
            sens_level=args.level,
            model=args.model,
            out_dir=args.out_dir,
        ),
        args.model.replace("/", "_"),
    )
    log(f"done in {time.perf_counter() - t:.0f}s")


if __name__ == "__main__":
    main()
