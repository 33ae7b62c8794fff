"""``benchmarks/leaderboard.py report``: leaderboard.md / .json and the plots, from the stored rows only.

Every number printed here is read back from the results DB through ``acttail.store.leaderboard``
(the same table the API serves); each table row names its benchmark row ID, so a claim in
docs/science.md can cite it. Cells the grid asked for and the DB lacks are listed as not run.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

LABELS = {"topk": "TopK", "threshold": "thr", "magnitude": r"\|x\|", "wina": "WINA"}


def _fmt_change(e: dict[str, Any]) -> str:
    if (e["method"], e["mode"], e["scoring"]) == ("uniform", "topk", "magnitude"):
        return "baseline"
    pct, se = e.get("change_vs_uniform_pct"), e.get("se_pct")
    if pct is None:
        return "—"
    return f"{pct:+.1f}%" + (f" ± {se:.1f}" if se is not None else "")


def _file_stem(model_id: str) -> str:
    """A model ID as one file name (hub IDs and local paths carry slashes)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model_id).strip("_")


def _cell_name(e: dict[str, Any]) -> str:
    return f"{e['method']} {LABELS[e['mode']]} {LABELS[e['scoring']]}"


def _find(rows: Sequence[dict[str, Any]], method: str, mode: str = "topk", scoring: str = "magnitude") -> Any:
    return next((e for e in rows if (e["method"], e["mode"], e["scoring"]) == (method, mode, scoring)), None)


#: Twin comparisons, cells that differ in one knob only: (title, knob, base -> other, the other knob held at).
TWINS = (
    (r"WINA vs \|x\| (TopK)", "scoring", ("magnitude", "wina"), ("mode", "topk")),
    (r"WINA vs \|x\| (thr)", "scoring", ("magnitude", "wina"), ("mode", "threshold")),
    (r"thr vs TopK (\|x\|)", "mode", ("topk", "threshold"), ("scoring", "magnitude")),
)
_CELL_KNOBS = ("model_id", "method", "target", "mode", "scoring")


def twin_changes(rows: Sequence[dict[str, Any]], knob: str, base: str, other: str) -> list[dict[str, Any]]:
    """Every pair of cells that differ only in ``knob`` (``base`` -> ``other``), with the paired change.

    ``auto`` and CATS are left out: auto repeats another method's sparsity pattern, CATS has no twin.
    The change is of ``other`` against ``base`` on the same test windows (``acttail.evaluate.paired``).
    """
    from acttail.evaluate.paired import paired_change

    def key(e: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(round(e[k], 4) if k == "target" else e[k] for k in _CELL_KNOBS if k != knob)

    cells = [e for e in rows if e["method"] not in ("dense", "auto", "cats") and e.get("window_nlls")]
    bases = {key(e): e for e in cells if e[knob] == base}
    out = []
    for e in cells:
        twin = bases.get(key(e)) if e[knob] == other else None
        if twin is not None and len(twin["window_nlls"]) == len(e["window_nlls"]):
            pct, se = paired_change(twin["window_nlls"], e["window_nlls"])
            out.append({"base": twin, "other": e, "change_pct": pct, "se_pct": se})
    return out


def _twin_lines(rows: Sequence[dict[str, Any]], models: Sequence[str]) -> list[str]:
    """One line per model, target and twin comparison: uniform's pair, and how the other methods' pairs fall."""
    lines = ["## One knob at a time (paired, each cell against its twin)", "",
             "Each cell against the cell that differs only in the named knob (same model, method, target and the other",
             "knob; `auto` left out, it repeats another method's pattern). `better`/`worse` count methods whose change is",
             "beyond one paired SE; the median is over all methods.", "",
             "| model | target | comparison | uniform (rows) | better / within / worse | median change |",
             "|---|---:|---|---|---|---:|"]  # fmt: skip
    pairs = {title: twin_changes(rows, knob, *values) for title, knob, values, _ in TWINS}
    for model in models:
        for target in sorted(
            {round(e["target"], 4) for e in rows if e["model_id"] == model and e["method"] != "dense"}
        ):
            for title, _, _, (held, at) in TWINS:
                found = [p for p in pairs[title] if p["other"]["model_id"] == model
                         and round(p["other"]["target"], 4) == target and p["other"][held] == at]  # fmt: skip
                if not found:
                    continue
                uni = next((p for p in found if p["other"]["method"] == "uniform"), None)
                uni_text = (f"{uni['change_pct']:+.1f}% ± {uni['se_pct']:.1f} ({uni['base']['row_id']} -> "
                            f"{uni['other']['row_id']})") if uni else "—"  # fmt: skip
                better = sum(p["change_pct"] < -p["se_pct"] for p in found)
                worse = sum(p["change_pct"] > p["se_pct"] for p in found)
                median = statistics.median(p["change_pct"] for p in found)
                lines.append(f"| {model} | {target:.0%} | {title} | {uni_text} | {better} / {len(found) - better - worse}"
                             f" / {worse} | {median:+.1f}% |")  # fmt: skip
    return [*lines, ""]


def _run_cell_key(e: dict[str, Any]) -> tuple[Any, ...]:
    """One cell under one protocol: what a rerun must share with a stored row to be paired with it."""
    return (*(round(e[k], 4) if k == "target" else e[k] for k in _CELL_KNOBS), e["seqlen"], e["max_tokens"])


def rerun_changes(rows: Sequence[dict[str, Any]], rerun: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every cell measured in both tables (same model, cell and protocol): the rerun's PPL against the stored one.

    A rerun on another machine differs only in floating-point rounding (another CPU's kernels), which
    TopK and thresholds amplify; this puts a number on it next to the paired SEs that compare cells.
    """
    stored = {_run_cell_key(e): e for e in rows}
    out = []
    for e in rerun:
        first = stored.get(_run_cell_key(e))
        if first is not None:
            out.append({"stored": first, "rerun": e, "change_pct": 100.0 * (e["ppl"] / first["ppl"] - 1.0)})
    return out


def _rerun_lines(pairs: Sequence[dict[str, Any]], label: str) -> list[str]:
    lines = [f"## Rerun on another machine ({label})", "",
             "The same cells (same allocations) measured again in a fresh process on another machine, same code,",
             "protocol and windows: only floating-point rounding differs (docs/science.md, \"Reproducibility\").",
             "`vs uniform` is each run's own change against its own uniform TopK |x|, +- the paired SE.", "",
             "| model | cell | target | stored PPL (row) | rerun PPL | rerun vs stored | vs uniform, stored | vs uniform, rerun |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for p in sorted(pairs, key=lambda p: (p["stored"]["model_id"], p["stored"]["target"], _cell_name(p["stored"]))):
        e, again = p["stored"], p["rerun"]
        gains = " | ".join("—" if x["method"] == "dense" else _fmt_change(x) for x in (e, again))
        lines.append(f"| {e['model_id']} | {_cell_name(e)} | {e['target']:.0%} | {e['ppl']:.3f} ({e['row_id']}) | "
                     f"{again['ppl']:.3f} | {p['change_pct']:+.2f}% | {gains} |")  # fmt: skip
    return [*lines, ""]


def _gain_spread_lines(
    rows: Sequence[dict[str, Any]], reruns: Sequence[tuple[str, Sequence[dict[str, Any]]]]
) -> list[str]:
    """Each cell measured in every run: its change vs uniform TopK |x| in each, and the range between them.

    ``reruns`` holds (label, ``rerun_changes`` pairs) per rerun.
    """
    again = [{_run_cell_key(p["stored"]): p["rerun"] for p in pairs} for _, pairs in reruns]
    lines = ["## Gains across runs", "",
             "Change vs uniform TopK |x| of each cell in the stored run and in every rerun (each against its own",
             "run's uniform cell, +- its paired SE); `range` is max - min over the runs. A gain smaller than its",
             "range is not a property of the method but of the machine it ran on.", "",
             "| model | cell | target | stored | " + " | ".join(label for label, _ in reruns) + " | range |",
             "|---|---|---:|---:|" + "---:|" * len(reruns) + "---:|"]  # fmt: skip
    for e in sorted(rows, key=lambda e: (e["model_id"], e["target"], _cell_name(e))):
        runs = [e, *(m.get(_run_cell_key(e)) for m in again)]
        if e["method"] == "dense" or any(r is None or r.get("change_vs_uniform_pct") is None for r in runs):
            continue
        if (e["method"], e["mode"], e["scoring"]) == ("uniform", "topk", "magnitude"):
            continue
        changes = [r["change_vs_uniform_pct"] for r in runs]
        lines.append(f"| {e['model_id']} | {_cell_name(e)} | {e['target']:.0%} | "
                     + " | ".join(_fmt_change(r) for r in runs) + f" | {max(changes) - min(changes):.1f} |")  # fmt: skip
    return [*lines, ""]


def write_report(store: Any, args: Any) -> None:
    from acttail import plots
    from acttail.store.leaderboard import leaderboard_table, scaling_points, sweep_points

    with store.session() as db:
        table = leaderboard_table(db, team_id=store.store.team_id, with_allocations=True)
    out = args.out_dir
    (out / "leaderboard").mkdir(parents=True, exist_ok=True)
    rows = table["rows"]
    models = [m["model_id"] for m in table["models"]]
    lines = [
        "# Leaderboard: allocation x scoring x mode on four model sizes (WikiText-2 test perplexity)",
        "",
        "Generated by `python benchmarks/leaderboard.py report` from the results DB rows (settings `suite: leaderboard`);",
        "the `row` column is the benchmark row ID of each perplexity. Change is against **uniform TopK |x|** at the same",
        "target and protocol, +- one paired standard error over the test windows (negative = better; with few windows",
        "the SE itself is rough: read anything under ~2 SE as noise). `realised sparsity` is the parameter-weighted share",
        "of input entries zeroed on the test text (`sparsity/realised` row): calibrated thresholds only approximate their",
        "target on new text; TopK keeps a fixed count per token, so it meets its target up to rounding (— where a cell",
        "was stored before these rows existed).",
        "",
        f"Report written {datetime.now(UTC).isoformat(timespec='seconds')}, load average {os.getloadavg()[0]:.1f}.",
        *args.note,  # what this run's conditions were (load, budget), as the person who ran it recorded them
        "",
    ]
    json_rows = []
    for e in rows:
        slim = {k: v for k, v in e.items() if k not in ("allocation", "window_nlls")}
        slim["window_nlls"] = e.get("window_nlls")
        json_rows.append(slim)
    summary = [r"## Summary per model and target (TopK \|x\| unless named)", "",
               "| model | target | uniform PPL | best cell | best vs uniform | paper's rule (acttail) | new rule (htsr-spectral) | auto (chose) |",
               "|---|---:|---:|---|---:|---:|---:|---|"]  # fmt: skip
    auto_check = []
    details: list[str] = []
    for model in models:
        mrows = [e for e in rows if e["model_id"] == model]
        dense = next((e for e in mrows if e["method"] == "dense"), None)
        proto = mrows[0]
        stamps = sorted(e["created_at"] for e in mrows if e.get("created_at"))
        span = f" Cells stored {stamps[0][:16]} to {stamps[-1][:16]} (UTC)." if stamps else ""
        details += [f"## {model}", "",
                    f"Protocol: seqlen {proto['seqlen']}, {proto['max_tokens']} test tokens "
                    f"({proto['tokens_scored']} scored). Dense PPL: "
                    + (f"**{dense['ppl']:.3f}** (row {dense['row_id']})." if dense else "not measured.") + span, ""]  # fmt: skip
        for target in sorted({e["target"] for e in mrows if e["method"] != "dense"}):
            cells = sorted((e for e in mrows if math.isclose(e["target"], target) and e["method"] != "dense"),
                           key=lambda e: e["ppl"])  # fmt: skip
            details += [f"### {model} at {target:.0%}", "",
                        r"| rank | method | mode | scoring | PPL | vs uniform TopK \|x\| | realised sparsity | zero-shot mean acc | row |",
                        "|---:|---|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
            for i, e in enumerate(cells, 1):
                name = e["method"] + (f" ({e['chose']})" if e.get("chose") else "")
                name += f" ({e['rule']})" if e.get("rule") else ""
                if e["method"] == "cats":
                    name += f" (gate sparsity {e['gate_sparsity']:.2f})"
                acc = "—" if e.get("mean_accuracy") is None else f"{100 * e['mean_accuracy']:.1f}%"
                real = "—" if e.get("realised_sparsity") is None else f"{100 * e['realised_sparsity']:.1f}%"
                details.append(
                    f"| {i} | {name} | {e['mode']} | {e['scoring']} | {e['ppl']:.3f} | {_fmt_change(e)} | {real} | {acc} "
                    f"| {e['row_id']} |"
                )
            details.append("")
            uni = _find(cells, "uniform")
            best = cells[0] if cells else None
            paper, new, auto = _find(cells, "acttail"), _find(cells, "htsr-spectral"), _find(cells, "auto")
            summary.append(
                f"| {model} | {target:.0%} | {uni['ppl']:.3f} (row {uni['row_id']}) | {_cell_name(best)} (row {best['row_id']}) | "
                f"{_fmt_change(best)} | {_fmt_change(paper) if paper else 'not run'} | {_fmt_change(new) if new else 'not run'} | "
                f"{(_fmt_change(auto) + ' (' + str(auto.get('chose')) + ')') if auto else 'not run'} |"
                if uni and best else f"| {model} | {target:.0%} | not run | | | | | |"
            )  # fmt: skip
            if auto and auto["change_vs_uniform_pct"] is not None:
                se = auto["se_pct"] or 0.0
                worse = auto["change_vs_uniform_pct"] > se
                auto_check.append(f"- {model} {target:.0%}: auto {_fmt_change(auto)} (row {auto['row_id']}) -> "
                                  + ("**worse than uniform beyond one SE**" if worse else "not worse beyond one SE"))  # fmt: skip
        missing = _missing(mrows, args)
        if missing:
            details += [f"Not run for {model} (asked for by the grid, absent from the DB): " + "; ".join(missing), ""]
    lines += [*summary, ""]
    lines += (
        ["## auto against uniform TopK |x| (issue 13, item 5)", ""] + (auto_check or ["- no auto cell stored"]) + [""]
    )
    lines += _twin_lines(rows, models)
    reruns = [(label, rerun_changes(rows, _table_of(url)["rows"])) for url, label in getattr(args, "rerun", [])]
    for label, pairs in reruns:
        lines += _rerun_lines(pairs, label)
    if reruns:
        lines += _gain_spread_lines(rows, reruns)
    zs = [e for e in rows if e.get("mean_accuracy") is not None]
    if zs:
        lines += ["## Zero-shot (mean accuracy over the tasks scored)", "",
                  "| model | cell | target | mean acc | items/task | tasks | row |", "|---|---|---:|---:|---:|---|---:|"]  # fmt: skip
        for e in zs:
            z = e["zeroshot"]
            lines.append(f"| {e['model_id']} | {_cell_name(e)} | {e['target']:.0%} | {100 * e['mean_accuracy']:.2f}% | "
                         f"{z.get('limit')} | {', '.join(sorted(z['tasks']))} | {z.get('mean_accuracy_row')} |")  # fmt: skip
        lines.append("")
    else:
        lines += ["## Zero-shot", "", "No zero-shot cell was run (see docs/science.md for why).", ""]
    partial = [e for e in rows if e.get("zeroshot") and e.get("mean_accuracy") is None]
    if partial:  # scored task by task: the mean comes with the last task
        lines += ["Zero-shot cells under way (tasks stored so far; no mean until every task is):", ""]
        for e in partial:
            cell = "dense" if e["method"] == "dense" else f"{_cell_name(e)} at {e['target']:.0%}"
            z = e["zeroshot"]
            lines.append(f"- {e['model_id']} {cell}, {z['limit']} items per task: {', '.join(sorted(z['tasks']))}")
        lines.append("")
    lines += details
    # plots
    figures = []
    for model in models:
        pts = sweep_points(table, model)
        if any(p["method"] != "dense" for p in pts):
            fig = plots.plot_sweep(pts, title=f"{model} · WikiText-2 test · TopK |x|")
            name = f"leaderboard/sweep_{_file_stem(model)}.png"
            (out / name).write_bytes(plots.render_bytes(fig, "png"))
            figures.append(name)
    for target in sorted({e["target"] for e in rows if e["method"] != "dense"}):
        pts = scaling_points(table, target)
        if pts:
            fig = plots.plot_gain_scaling(pts, title=f"gain vs uniform TopK at {target:.0%}")
            name = f"leaderboard/scaling_{round(100 * target)}.png"
            (out / name).write_bytes(plots.render_bytes(fig, "png"))
            figures.append(name)
    lines += ["## Plots", ""] + [f"![{f}]({f})" for f in figures] + [""]
    (out / "leaderboard.md").write_text("\n".join(lines) + "\n")
    (out / "leaderboard.json").write_text(json.dumps({"suite": table["suite"], "baseline": table["baseline"],
                                                      "models": table["models"], "rows": json_rows}, indent=1) + "\n")  # fmt: skip


def _table_of(url: str) -> dict[str, Any]:
    """The leaderboard table of another results DB (a rerun's)."""
    from leaderboard import Store

    from acttail.store.leaderboard import leaderboard_table

    other = Store(url)
    with other.session() as db:
        return leaderboard_table(db, team_id=other.store.team_id)


def _missing(mrows: Sequence[dict[str, Any]], args: Any) -> list[str]:
    from leaderboard import COMBOS, METHODS

    have = {(e["method"], round(e["target"], 4), e["mode"], e["scoring"]) for e in mrows}
    out = []
    for mode, scoring in COMBOS:
        absent = [f"{m}@{t:g}" for t in args.targets for m in METHODS if (m, round(t, 4), mode, scoring) not in have]
        if absent:
            out.append(
                f"{mode}/{scoring}: " + (", ".join(absent) if len(absent) < len(METHODS) * len(args.targets) else "all")
            )
    return out
