"""Render the README's example plots from real data (bundled SmolLM2-135M, offline).

    .venv/bin/python docs/img/render_examples.py                      # ESD, alphas, allocation
    .venv/bin/python docs/img/render_examples.py --sweep [--zeroshot] # + evaluate the sparsity sweep
    .venv/bin/python docs/img/render_examples.py --report esd.json    # reuse a saved ESD report

The ESD report (``acttail.esd.analyze_source``, estimator ks) takes ~1-12 min on a 2-core CPU
depending on load; the sweep evaluates WikiText-2 perplexity on a short token budget and a
zero-shot subset for dense and for uniform/ActTail allocations at several targets (the numbers
are indicative of the method's shape, not the paper's full protocol: see the JSON for settings).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from acttail import plots
from acttail.allocate import allocate
from acttail.esd import ESDReport, analyze_source, eigenvalues
from acttail.models import resolve_model

OUT = Path(__file__).resolve().parent
MODEL = "smollm2-135m"
ESD_PROJECTION = "model.layers.14.mlp.down_proj"
ALLOCATION_TARGET = 0.7
SWEEP_TARGETS = (0.5, 0.7, 0.8, 0.9)
SWEEP_SEQLEN = 512
SWEEP_MAX_TOKENS = 4_096
ZEROSHOT_TASKS = ("arc_easy", "piqa", "hellaswag")
ZEROSHOT_LIMIT = 100


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--zeroshot",
        action="store_true",
        help="sweep: also mean zero-shot accuracy (slow)",
    )
    parser.add_argument(
        "--report",
        type=Path,
        help="ESD report JSON to reuse (written there if missing)",
    )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="(re)evaluate the sparsity sweep (else reuse its JSON)",
    )
    args = parser.parse_args()
    source = resolve_model(MODEL)

    if args.report is not None and args.report.exists():
        report = ESDReport.from_dict(json.loads(args.report.read_text()))
    else:
        report = analyze_source(source, "ks", progress=True)
        if args.report is not None:
            args.report.write_text(json.dumps(report.to_dict()))
    model_id = str(report.model.get("model_id", MODEL))

    plots.save_figure(plots.plot_alphas(report), OUT / "alphas_smollm2-135m.png")

    allocation = allocate(
        report.alphas(),
        report.param_counts(),
        ALLOCATION_TARGET,
        model_id=model_id,
        fingerprint=str(report.model.get("fingerprint", "")),
        estimator=report.estimator,
    )
    plots.save_figure(
        plots.plot_allocation(allocation), OUT / "allocation_smollm2-135m_70.png"
    )

    row = next(p for p in report.projections if p.name == ESD_PROJECTION)
    weight = next(
        w for info, w in source.iter_projection_weights() if info.name == ESD_PROJECTION
    )
    title = f"{model_id} · layer {row.layer} {row.kind}_proj · W {row.shape[0]}×{row.shape[1]}"
    plots.save_figure(
        plots.plot_esd(eigenvalues(weight), row, title=title),
        OUT / "esd_smollm2-135m_down14.png",
    )

    sweep_json = OUT / "sweep_smollm2-135m.json"
    if args.sweep:
        sweep_json.write_text(
            json.dumps(sweep(source, report, zeroshot=args.zeroshot), indent=2) + "\n"
        )
    if sweep_json.exists():
        rows = json.loads(sweep_json.read_text())
        settings = rows[-1].get("settings", {})
        title = f"{model_id} · WikiText-2 test, first {settings.get('max_tokens', '?')} tokens, seqlen {settings.get('seqlen', '?')}"
        plots.save_figure(
            plots.plot_sweep(rows, title=title), OUT / "sweep_smollm2-135m.png"
        )


def sweep(source, report: ESDReport, *, zeroshot: bool) -> list[dict[str, object]]:
    """Dense, then uniform and ActTail at each target: perplexity (and mean zero-shot accuracy)."""
    from acttail.evaluate.perplexity import evaluate_perplexity, tokenize_split
    from acttail.evaluate.zeroshot import evaluate_zeroshot
    from acttail.sparsity import apply_sparsity

    model, tokenizer = source.load_causal_lm()
    model.eval()
    ids = tokenize_split(tokenizer, "test")

    def measure(label: str) -> tuple[float, float | None]:
        start = time.perf_counter()
        ppl = evaluate_perplexity(
            model,
            token_ids=ids,
            seqlen=SWEEP_SEQLEN,
            max_tokens=SWEEP_MAX_TOKENS,
            progress=False,
        ).ppl
        acc = None
        if zeroshot:
            acc = evaluate_zeroshot(
                model, tokenizer, ZEROSHOT_TASKS, limit=ZEROSHOT_LIMIT, progress=False
            ).mean_accuracy
        print(
            f"{label}: ppl {ppl:.3f}, mean acc {acc} ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
        return ppl, acc

    settings: dict[str, object] = {
        "dataset": "wikitext-2-raw-v1 test",
        "seqlen": SWEEP_SEQLEN,
        "max_tokens": SWEEP_MAX_TOKENS,
        "mode": "topk",
        "estimator": report.estimator,
        "epsilon": 0.1,
    }
    if zeroshot:
        settings |= {"tasks": list(ZEROSHOT_TASKS), "limit": ZEROSHOT_LIMIT}
    ppl, acc = measure("dense")
    rows: list[dict[str, object]] = [
        {
            "method": "dense",
            "dense": True,
            "target": 0.0,
            "perplexity": ppl,
            "mean_accuracy": acc,
            "settings": settings,
        }
    ]
    for target in SWEEP_TARGETS:
        for method in ("uniform", "acttail"):
            allocation = allocate(
                report.alphas(), report.param_counts(), target, method=method
            )
            handle = apply_sparsity(model, allocation, track=False)
            try:
                ppl, acc = measure(f"{method} {target:.0%}")
            finally:
                handle.remove()
            rows.append(
                {
                    "method": method,
                    "target": target,
                    "perplexity": ppl,
                    "mean_accuracy": acc,
                    "settings": settings,
                }
            )
    return rows


if __name__ == "__main__":
    main()
