"""Dense zero-shot accuracy of SmolLM2-135M on the seven bundled tasks.

Reproduce (the committed results):
    .venv/bin/python benchmarks/zeroshot_dense.py --limit 50 --tasks arc_easy,piqa,hellaswag,lambada_openai,arc_challenge,winogrande,boolq --out benchmarks/results/zeroshot_dense

``--limit N`` scores the first N items of each task (file order); ``--limit 0`` means the full
sets (about 27k items, hours on 2 CPU cores). Writes ``OUT.json`` and ``OUT.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import torch
from _machine import busy_note

from acttail.evaluate.tasks import ALL_TASKS, TASKS
from acttail.evaluate.zeroshot import ZeroShotReport, evaluate_zeroshot
from acttail.models import resolve_model

# SmolLM2-135M (base) model card, lm-eval style, for orientation only: our model is the
# *Instruct* variant quantised to Q4_1, scored on the first --limit items.
MODEL_CARD = {"hellaswag": 42.1, "arc_avg": 43.9, "piqa": 68.4, "winogrande": 51.3, "boolq": 60.3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--limit", type=int, default=100, help="items per task (0 = all)")
    parser.add_argument("--tasks", default=",".join(ALL_TASKS))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/zeroshot_dense"))
    args = parser.parse_args()
    busy = busy_note()  # before the model load adds to the load
    torch.set_num_threads(args.threads)
    limit = args.limit or None
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]

    source = resolve_model(args.model)
    t0 = time.perf_counter()
    model, tokenizer = source.load_causal_lm()
    load_s = time.perf_counter() - t0

    per_task: dict[str, float] = {}
    results = []
    doc: dict = {}
    for task in tasks:  # one task at a time: per-task timing, and results survive an interrupted run
        t0 = time.perf_counter()
        report = evaluate_zeroshot(model, tokenizer, [task], limit=limit, batch_size=args.batch_size)
        per_task[task] = time.perf_counter() - t0
        results.extend(report.results)
        r = report.results[0]
        print(f"{task:15s} n={r.n:5d} acc={r.acc:.4f} acc_norm={r.acc_norm} ({per_task[task]:.0f} s)", flush=True)
        full = ZeroShotReport(
            results=tuple(results), limit=limit, add_bos_token=report.add_bos_token, settings=report.settings
        )
        doc = {
            "command": "python " + " ".join(sys.argv),
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "model": source.describe().as_dict(),
            "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads; {busy}",
            "versions": {p: version(p) for p in ("torch", "transformers", "acttail")}
            | {"python": platform.python_version()},
            "load_seconds": round(load_s, 1),
            "seconds_per_task": {k: round(v, 1) for k, v in per_task.items()},
            "chance": {t: TASKS[t].chance for t in per_task},
            "model_card_reference": MODEL_CARD,
            "report": full.to_dict(),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        args.out.with_suffix(".md").write_text(render_markdown(doc), encoding="utf-8")
    print(render_markdown(doc))


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def render_markdown(doc: dict) -> str:
    rep = doc["report"]
    lines = [
        "# Dense zero-shot accuracy",
        "",
        f"Command: `{doc['command']}`  ",
        f"Model: `{doc['model']['model_id']}` ({doc['model']['architecture']}, fingerprint `{doc['model']['fingerprint'][:16]}…`)  ",
        f"Items per task: first {rep['limit'] or 'all'} (file order); engine: {rep['engine']}  ",
        f"Machine: {doc['machine']}  ",
        f"Versions: {', '.join(f'{k} {v}' for k, v in doc['versions'].items())}",
        "",
        "| task | n | acc % | ± | acc_norm % | ± | chance % | other | time s |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for task, r in rep["tasks"].items():
        other = f"ppl {r['perplexity']:.2f}" if r.get("perplexity") is not None else ""
        lines.append(
            f"| {task} | {r['n']} | {_pct(r['acc'])} | {_pct(r['stderr'])} | {_pct(r['acc_norm'])} | "
            f"{_pct(r['acc_norm_stderr'])} | {100 * doc['chance'][task]:.0f} | {other} | {doc['seconds_per_task'][task]:.0f} |"
        )
    lines += [
        "",
        f"Mean accuracy ({rep['mean_accuracy_metric']}): **{_pct(rep['mean_accuracy'])}%**",
        "",
        "Reference, SmolLM2-135M *base* model card (lm-eval, full sets): "
        + ", ".join(f"{k} {v}" for k, v in doc["model_card_reference"].items())
        + ". Ours is the Instruct model quantised to Q4_1 (dequantised to fp32), on the first "
        f"{rep['limit'] or 'all'} items, so only rough agreement is expected.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
