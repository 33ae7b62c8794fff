"""Render the README's example plots from real data (bundled SmolLM2-135M, offline).

    .venv/bin/python docs/img/render_examples.py                      # ESD, alphas, allocation
    .venv/bin/python docs/img/render_examples.py --sweep [--zeroshot] # + evaluate the sparsity sweep
    .venv/bin/python docs/img/render_examples.py --report esd.json    # reuse a saved ESD report

The ESD report (``acttail.esd.analyze_source``, estimator ks) takes ~1-12 min on a 2-core CPU
depending on load. The sweep evaluates WikiText-2 perplexity on a short token budget (and,
with --zeroshot, a zero-shot subset) for dense and for uniform/ActTail allocations (TopK, KS
alphas, epsilon 0.1), writing ``sweep_smollm2-135m.json`` after each configuration so a rerun
resumes. The committed sweep took 4-9 min per configuration on a shared 2-core CPU, hence only
two targets and 4096 tokens: an illustration of the plot, not the paper's protocol. (The dense
and uniform-50% rows were copied from the log of a first run that was stopped, same settings.)
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
SWEEP_TARGETS = (0.5, 0.8)
SWEEP_SEQLEN = 512
SWEEP_MAX_TOKENS = 4_096
ZEROSHOT_TASKS = ("arc_easy", "piqa", "hellaswag")
ZEROSHOT_LIMIT = 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    plots.save_figure(plots.plot_allocation(allocation), OUT / "allocation_smollm2-135m_70.png")

    row = next(p for p in report.projections if p.name == ESD_PROJECTION)
    weight = next(w for info, w in source.iter_projection_weights() if info.name == ESD_PROJECTION)
    title = f"{model_id} · layer {row.layer} {row.kind}_proj · W {row.shape[0]}×{row.shape[1]}"
    plots.save_figure(
        plots.plot_esd(eigenvalues(weight), row, title=title),
        OUT / "esd_smollm2-135m_down14.png",
    )

    sweep_json = OUT / "sweep_smollm2-135m.json"
    if args.sweep:
        sweep(source, report, sweep_json, zeroshot=args.zeroshot)
    if sweep_json.exists():
        rows = json.loads(sweep_json.read_text())
        settings = rows[-1].get("settings", {})
        title = f"{model_id} · WikiText-2 test, first {settings.get('max_tokens', '?')} tokens, seqlen {settings.get('seqlen', '?')}"
        plots.save_figure(plots.plot_sweep(rows, title=title), OUT / "sweep_smollm2-135m.png")


def sweep(source, report: ESDReport, path: Path, *, zeroshot: bool) -> None:
    """Dense, then uniform and ActTail at each target: perplexity (and mean zero-shot accuracy).

    Rows go to ``path`` after every measurement; a rerun skips rows already there with the
    same settings (a 2-core machine shared with other jobs needs minutes per configuration).
    """
    from acttail.evaluate.perplexity import evaluate_perplexity, tokenize_split
    from acttail.evaluate.zeroshot import evaluate_zeroshot
    from acttail.sparsity import apply_sparsity

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
    rows = json.loads(path.read_text()) if path.exists() else []
    rows = [row for row in rows if row.get("settings") == settings]
    done = {(row["method"], row["target"]) for row in rows}
    plan = [("dense", 0.0)] + [(m, t) for t in SWEEP_TARGETS for m in ("uniform", "acttail")]
    if all(key in done for key in plan):
        return
    model, tokenizer = source.load_causal_lm()
    model.eval()
    ids = tokenize_split(tokenizer, "test")
    for method, target in plan:
        if (method, target) in done:
            continue
        handle = None
        if method != "dense":
            allocation = allocate(report.alphas(), report.param_counts(), target, method=method)
            handle = apply_sparsity(model, allocation, track=False)
        start = time.perf_counter()
        try:
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
                    model,
                    tokenizer,
                    ZEROSHOT_TASKS,
                    limit=ZEROSHOT_LIMIT,
                    progress=False,
                ).mean_accuracy
        finally:
            if handle is not None:
                handle.remove()
        elapsed = time.perf_counter() - start
        print(
            f"{method} {target:.0%}: ppl {ppl:.3f}, acc {acc} ({elapsed:.0f} s)",
            flush=True,
        )
        rows.append(
            {
                "method": method,
                "dense": method == "dense",
                "target": target,
                "perplexity": ppl,
                "mean_accuracy": acc,
                "settings": settings,
            }
        )
        path.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
