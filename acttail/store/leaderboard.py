"""The leaderboard read back from benchmark rows: one entry per (model, method, target, mode, scoring).

``benchmarks/leaderboard.py`` stores every cell through ``save_pipeline_result`` with settings
``suite: leaderboard``: a ``perplexity/ppl`` row, one ``perplexity_window/nll/<w>`` row per test
window, and, for the cells it scored, ``zeroshot`` rows. This module turns those rows into the
table the API, the dashboard and ``benchmarks/results/leaderboard.md`` show: perplexity, the change
against uniform TopK |x| at the same target with its paired standard error over windows (the same
windows for every cell of a model), and the mean zero-shot accuracy. Nothing here recomputes a
measurement; every number comes from a row, and each entry names its row's ID.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from acttail.evaluate.paired import paired_change
from acttail.store.measurements import REALISED_KIND, WINDOW_KIND
from acttail.store.orm import Benchmark, Model
from acttail.store.results import visible_to
from acttail.store.upsert import canonical_hash

SUITE = "leaderboard"
#: The baseline every cell is compared with: uniform sparsity, TopK by |x| (TEAL's / ActTail's uniform).
BASELINE = ("uniform", "topk", "magnitude")


def _most_items(runs: dict[Any, dict[str, Any]]) -> dict[str, Any] | None:
    """A cell's zero-shot run on the most items per task (limit 0/None: whole sets), whole or not yet:
    a cell scored task by task shows its tasks so far, and its mean once every task is stored."""
    return runs[max(runs, key=lambda limit: limit or math.inf)] if runs else None


def suite_rows(
    db: Session, *, team_id: int, suite: str = SUITE, fingerprint: str | None = None, model: str | None = None,
    kinds: Iterable[str] = ("perplexity",),
) -> list[Benchmark]:  # fmt: skip
    """Visible benchmark rows of ``kinds`` whose settings carry ``suite`` (optionally of one model)."""
    stmt = (
        select(Benchmark)
        .join(Model, Benchmark.model_pk == Model.id)
        .where(visible_to(Benchmark, team_id), Benchmark.kind.in_(list(kinds)))
    )
    if fingerprint is not None:
        stmt = stmt.where(Model.fingerprint == fingerprint)
    if model is not None:
        stmt = stmt.where(Model.model_id == model)
    rows = db.scalars(stmt.order_by(Benchmark.id))
    return [r for r in rows if (r.settings or {}).get("suite") == suite]


def group_key(row: Benchmark) -> tuple[int, int | None, str]:
    """The rows that make up one cell (its ppl, per-window NLLs, realised sparsity) share this key."""
    return (row.model_pk, row.allocation_id, canonical_hash(row.settings))


def _identity(row: Benchmark) -> dict[str, Any]:
    alloc = row.allocation
    s = row.settings
    return {
        "model_id": row.model.model_id,
        "fingerprint": row.model.fingerprint,
        "projection_params": row.model.projection_params,
        "method": "dense" if alloc is None else alloc.method,
        "target": 0.0 if alloc is None else round(float(alloc.target), 4),
        "mode": s.get("mode", "topk"),
        "scoring": s.get("scoring", "magnitude"),
    }


def leaderboard_table(
    db: Session, *, team_id: int, model: str | None = None, target: float | None = None,
    with_allocations: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Every stored leaderboard cell, with its change against uniform TopK |x| (paired SE over windows).

    ``model`` (model_id) and ``target`` filter the entries; the baseline is looked up among all
    cells of the same model, protocol (seqlen, test tokens) and target, so a filtered table still
    shows gains.
    """
    rows = suite_rows(db, team_id=team_id, model=model, kinds=("perplexity", WINDOW_KIND, REALISED_KIND, "zeroshot"))
    windows: dict[tuple[int, int | None, str], dict[str, float]] = defaultdict(dict)
    realised: dict[tuple[int, int | None, str], float] = {}
    zeroshot: dict[tuple[int, int | None, str, str], dict[Any, dict[str, Any]]] = defaultdict(dict)  # by limit
    entries: list[dict[str, Any]] = []
    for row in rows:
        if row.kind == WINDOW_KIND:
            windows[group_key(row)][row.metric] = row.value
        elif row.kind == REALISED_KIND:
            realised[group_key(row)] = row.value
        elif row.kind == "zeroshot":
            s = row.settings
            key = (row.model_pk, row.allocation_id, s.get("mode", "topk"), s.get("scoring", "magnitude"))
            z = zeroshot[key].setdefault(s.get("limit"), {"tasks": {}, "limit": s.get("limit")})
            if row.metric == "mean_accuracy":
                if len(s.get("tasks") or ()) >= len(z.get("mean_tasks") or ()):  # the mean over the most tasks
                    z.update(mean_accuracy=row.value, mean_accuracy_row=row.id, mean_tasks=s.get("tasks"))
            else:  # <task>/acc, <task>/acc_norm
                task, _, metric = row.metric.partition("/")
                z["tasks"].setdefault(task, {"n": s.get("n")})[metric] = row.value
    for row in rows:
        if row.kind != "perplexity" or row.metric != "ppl":
            continue
        entry = _identity(row)
        s = row.settings
        per_window = windows.get(group_key(row), {})
        entry.update(
            ppl=row.value,
            row_id=row.id,
            allocation_id=row.allocation_id,
            seqlen=s.get("seqlen"),
            max_tokens=s.get("max_tokens"),
            tokens_scored=s.get("tokens_scored"),
            window_nlls=[per_window[k] for k in sorted(per_window)],
            realised_sparsity=realised.get(group_key(row)),
            created_at=row.created_at.isoformat() if row.created_at else None,
            # Sparse cells move with the CPU's rounding (docs/science.md), so a row says which kernels ran it.
            cpu_capability=(row.versions or {}).get("cpu_capability"),
        )
        alloc = row.allocation
        entry["chose"] = entry["gate_sparsity"] = entry["rule"] = None
        if alloc is not None:
            params = (alloc.document or {}).get("params") or {}
            choice = params.get("choice")
            entry["chose"] = choice.get("label") if isinstance(choice, dict) else None
            entry["gate_sparsity"] = params.get("gate_sparsity")
            if alloc.method == "htsr-spectral":  # the rule's own knobs: its defaults changed once (docs/science.md)
                entry["rule"] = f"{params.get('metric')}, eps {params.get('epsilon')}"
            if with_allocations:
                entry["allocation"] = alloc.document
        scored = _most_items(zeroshot.get((row.model_pk, row.allocation_id, entry["mode"], entry["scoring"]), {}))
        entry["zeroshot"] = scored
        entry["mean_accuracy"] = None if scored is None else scored.get("mean_accuracy")
        entries.append(entry)
    _add_gains(entries)
    if target is not None:
        entries = [e for e in entries if e["method"] == "dense" or math.isclose(e["target"], target, abs_tol=1e-4)]
    if not with_allocations:  # the detail view keeps the per-window NLLs too
        for e in entries:
            e.pop("window_nlls", None)
    models = sorted({(e["model_id"], e["projection_params"]) for e in entries}, key=lambda m: m[1])
    return {
        "suite": SUITE,
        "baseline": "-".join(BASELINE),
        "models": [{"model_id": m, "projection_params": p} for m, p in models],
        "rows": sorted(entries, key=lambda e: (e["projection_params"], e["model_id"], e["target"], e["ppl"])),
    }


def _add_gains(entries: list[dict[str, Any]]) -> None:
    """``change_vs_uniform_pct`` / ``se_pct``: against uniform TopK |x| of the same model, protocol and target."""
    base: dict[tuple[str, Any, Any, float], dict[str, Any]] = {}
    for e in entries:
        if (e["method"], e["mode"], e["scoring"]) == BASELINE:
            base[(e["fingerprint"], e["seqlen"], e["max_tokens"], e["target"])] = e
    for e in entries:
        b = base.get((e["fingerprint"], e["seqlen"], e["max_tokens"], e["target"]))
        e["change_vs_uniform_pct"] = e["se_pct"] = None
        if b is None or e["method"] == "dense":
            continue
        if e["window_nlls"] and len(e["window_nlls"]) == len(b["window_nlls"]):
            pct, se = paired_change(b["window_nlls"], e["window_nlls"])
            e["change_vs_uniform_pct"], e["se_pct"] = pct, (None if math.isnan(se) else se)
        else:
            e["change_vs_uniform_pct"] = 100.0 * (e["ppl"] / b["ppl"] - 1.0)


def sweep_points(
    table: dict[str, Any], model_id: str, *, mode: str = "topk", scoring: str = "magnitude"
) -> list[dict[str, Any]]:
    """``acttail.plots.plot_sweep`` rows of one model: dense and every method under (mode, scoring)."""
    out: list[dict[str, Any]] = []
    for e in table["rows"]:
        if e["model_id"] != model_id:
            continue
        if e["method"] == "dense" or (e["mode"] == mode and e["scoring"] == scoring) or e["method"] == "cats":
            if e["method"] == "cats" and mode != "threshold":
                continue
            out.append({"method": e["method"], "target": e["target"], "perplexity": e["ppl"],
                        "mean_accuracy": e.get("mean_accuracy")})  # fmt: skip
    dense = [p for p in out if p["method"] == "dense"]
    return [p for p in out if p["method"] != "dense"] + dense[:1]


#: The three series of the scaling plot: the best cell of each model, the paper's rule, the new rule.
SCALING_SERIES = {
    "paper's rule (acttail)": ("acttail", "topk", "magnitude"),
    "htsr-spectral (new, no calibration)": ("htsr-spectral", "topk", "magnitude"),
}


def scaling_points(table: dict[str, Any], target: float) -> list[dict[str, Any]]:
    """``acttail.plots.plot_gain_scaling`` points at ``target``: gain = -change vs uniform TopK |x|."""
    out: list[dict[str, Any]] = []
    for m in table["models"]:
        cells = [
            e for e in table["rows"]
            if e["model_id"] == m["model_id"] and e["method"] != "dense" and e["change_vs_uniform_pct"] is not None
            and math.isclose(e["target"], target, abs_tol=1e-4)
        ]  # fmt: skip
        if not cells:
            continue
        best = min(cells, key=lambda e: e["ppl"])
        picks: list[tuple[str, dict[str, Any], str | None]] = [
            ("best cell", best, f"{best['method']} {best['mode']}/{best['scoring']}")
        ]
        for name, (method, mode, scoring) in SCALING_SERIES.items():
            hit = [e for e in cells if (e["method"], e["mode"], e["scoring"]) == (method, mode, scoring)]
            if hit:
                picks.append((name, hit[0], None))
        for name, e, label in picks:
            out.append({"series": name, "params": m["projection_params"], "gain_pct": -e["change_vs_uniform_pct"],
                        "se_pct": e["se_pct"], "label": label, "model_id": m["model_id"]})  # fmt: skip
    return out
