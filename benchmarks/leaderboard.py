"""The leaderboard: every allocation method x scoring rule x sparsity mode, side by side, in the results DB.

For each model and target (default 30/50/70%) it evaluates uniform, the paper's rule (``acttail``),
``acttail-reverse``, ``acttail-per-type``, ``teal-greedy``, ``auto`` and the calibration-free
``htsr-spectral``, each with |x| and WINA scoring (``acttail.scoring``), in TopK and threshold mode,
plus CATS (``acttail.cats``) where its budget is reachable, and the dense model: WikiText-2 *test*
perplexity with per-window NLLs (paired standard errors against uniform TopK |x|), through the
project's own pipeline functions (``acttail.methods.build_allocations``,
``acttail.pipeline.evaluate_variants``, ``acttail.store.pipeline_results.save_pipeline_result``).

Every cell is stored as soon as it is measured, as benchmark rows with settings ``suite:
leaderboard``; a rerun reads what is stored and measures only what is missing, so the grid runs
in parts (``--models``, ``--targets``, ``--methods``, ``--modes``, ``--scorings`` select one);
zero-shot cells are stored task by task, so a part cut short resumes at the task it was on.
Calibrated methods (auto, teal-greedy), thresholds and CATS see WikiText-2 *validation* only.
The default DB is the committed SQLite file ``benchmarks/results/leaderboard/leaderboard.db``: every
row the report and docs/science.md cite is in it, and a run on a fresh machine resumes from it.

    nice -n 10 .venv/bin/python benchmarks/leaderboard.py run --models smollm2-135m --test-tokens 2048
    nice -n 10 .venv/bin/python benchmarks/leaderboard.py zeroshot --models smollm2-135m --limit 100
    .venv/bin/python benchmarks/leaderboard.py report     # leaderboard.md / .json / plots from the DB

To see how far another machine's rounding moves the numbers, measure cells again into a second DB
with the same allocations (``run --db sqlite:///other.db --allocations-from <the first DB>``: no
greedy search again) and set them beside the stored ones (``report --rerun sqlite:///other.db LABEL``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
import time
from collections.abc import Collection, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from acttail.esd import ESDReport, analyze_source
from acttail.models import resolve_model

ESD_CACHE = Path("/tmp/acttail_study")
#: The committed leaderboard DB (SQLite): the record behind every cited row, and where a run resumes.
DEFAULT_DB = Path(__file__).resolve().parent / "results" / "leaderboard" / "leaderboard.db"
SUITE = "leaderboard"
METHODS = ("uniform", "acttail", "acttail-reverse", "acttail-per-type", "teal-greedy", "auto", "htsr-spectral")
ALPHA_ONLY = ("uniform", "acttail", "acttail-reverse", "acttail-per-type", "htsr-spectral")
# Cheapest and most asked-for first, so a run cut short still leaves the main comparison.
COMBOS = (("topk", "magnitude"), ("topk", "wina"), ("threshold", "magnitude"), ("threshold", "wina"))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def load_esd_report(alias: str, estimator: str = "ks", cache: Path | None = None) -> ESDReport:
    """The model's ESD report (every projection's spectral statistics), computed once and cached as JSON."""
    cache = cache or ESD_CACHE
    path = cache / f"esd_{alias.replace('/', '_')}_{estimator}.json"
    if path.exists():
        return ESDReport.from_dict(json.loads(path.read_text()))
    report = analyze_source(resolve_model(alias), estimator, progress=False)
    cache.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_dict()))
    return report


def _cell(method: str, target: float, mode: str, scoring: str) -> tuple[str, float, str, str]:
    return (method, round(target, 4), mode, scoring)


class Store:
    """The results DB as the leaderboard sees it: which cells exist, and writing new ones."""

    def __init__(self, db: str | None) -> None:
        from acttail.cli.results_store import open_results_store

        self.store = open_results_store(db, command="leaderboard")
        log(f"results database {self.store.shown_url}")

    def checkpoint(self) -> None:
        """Fold SQLite's write-ahead log into the DB file, so the committed file holds every row."""
        from sqlalchemy import text

        if self.store.engine.url.get_backend_name() == "sqlite":
            with self.store.engine.connect() as conn:
                conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))

    def session(self) -> Any:
        from acttail.store.db import session_scope

        return session_scope(self.store.session_factory)

    def done(
        self, fingerprint: str, seqlen: int, max_tokens: int
    ) -> tuple[dict[tuple[str, float, str, str], Any], set[tuple[str, float, str, str]]]:  # fmt: skip
        """Stored leaderboard cells of the model under this protocol -> their allocation (None = dense),
        and the stale ones: threshold cells stored without the sparsity they realised, to measure again
        (TopK meets its target by construction). A re-measured cell keeps its row IDs (upsert by key).
        """
        from acttail.allocate import Allocation
        from acttail.store.leaderboard import group_key, suite_rows
        from acttail.store.measurements import REALISED_KIND

        out: dict[tuple[str, float, str, str], Any] = {}
        stale: set[tuple[str, float, str, str]] = set()
        with self.session() as db:
            rows = suite_rows(db, team_id=self.store.team_id, fingerprint=fingerprint, suite=SUITE,
                              kinds=("perplexity", REALISED_KIND))  # fmt: skip
            realised = {group_key(r) for r in rows if r.kind == REALISED_KIND}
            for row in rows:
                s = row.settings
                if row.kind != "perplexity" or s.get("seqlen") != seqlen or s.get("max_tokens") != max_tokens:
                    continue
                alloc = None if row.allocation is None else Allocation.from_dict(row.allocation.document)
                method = "dense" if alloc is None else alloc.method
                target = 0.0 if alloc is None else alloc.target
                cell = _cell(method, target, s["mode"], s.get("scoring", "magnitude"))
                out[cell] = alloc
                if s["mode"] == "threshold" and group_key(row) not in realised:
                    stale.add(cell)
        return out, stale

    def save(self, document: dict[str, Any], esd: ESDReport | None = None) -> None:
        from acttail.store.pipeline_results import save_pipeline_result

        with self.session() as db:
            save_pipeline_result(document, team_id=self.store.team_id, db_session=db, esd_report=esd,
                                 meta={"origin": "benchmarks/leaderboard.py"})  # fmt: skip


def _document(description: dict[str, Any], config: Any, variants: Sequence[Any], began: float) -> dict[str, Any]:
    from acttail.environment import environment
    from acttail.pipeline import PipelineResult

    result = PipelineResult(
        model=description, config=config, variants=tuple(variants), alphas=None,
        versions={**environment(), "device": "cpu"}, elapsed_s=time.perf_counter() - began,
    )  # fmt: skip
    doc = result.to_dict()
    doc["protocol"].update(suite=SUITE, window_rows=True, realised_rows=True)
    return doc


def run_model(alias: str, args: argparse.Namespace, store: Store) -> None:
    import torch

    from acttail.methods import build_allocations, calibration_set, greedy_trace
    from acttail.pipeline import PipelineConfig, evaluate_variants
    from acttail.store.requests import PerplexitySpec

    began = time.perf_counter()
    source = resolve_model(alias)
    description = source.describe().as_dict()
    report = load_esd_report(alias)
    test_tokens = args.test_tokens_for.get(alias, args.test_tokens)
    cal_tokens = args.cal_tokens_for.get(alias, args.cal_tokens)
    done, stale = store.done(description["fingerprint"], args.seqlen, test_tokens)
    log(
        f"{alias}: {len(done)} cells stored ({len(stale)} to measure again); test {test_tokens} tokens, "
        f"calibration {cal_tokens}, seqlen {args.seqlen}"
    )
    stored = dict(done)
    for cell in stale:  # measured again below, with the stored allocation
        done.pop(cell)
    targets = [t for t in args.targets]
    combos = [(m, s) for m, s in COMBOS if m in args.modes and s in args.scorings]
    wanted = [_cell(m, t, mode, sc) for mode, sc in combos for m in args.methods for t in targets]
    missing = [c for c in wanted if c not in done]
    need_dense = args.dense and _cell("dense", 0.0, "topk", "magnitude") not in done
    need_cats = args.cats and "threshold" in args.modes
    if not missing and not need_dense and not need_cats:
        log(f"{alias}: nothing to do")
        return
    lm, tokenizer = source.load_causal_lm()
    torch.set_num_threads(args.threads)
    # The allocations: stored ones are reused (same document, same allocation row).
    allocations: dict[tuple[str, float], Any] = {}
    for (method, target, _m, _s), alloc in stored.items():
        if alloc is not None:
            allocations[(method, target)] = alloc
    if args.allocations_from:  # a rerun elsewhere measures the very allocations stored there
        theirs, _ = Store(args.allocations_from).done(description["fingerprint"], args.seqlen, test_tokens)
        if not theirs:
            raise SystemExit(f"{alias}: {args.allocations_from} holds no cells of this model at seqlen {args.seqlen}, "
                             f"{test_tokens} test tokens")  # fmt: skip
        for (method, target, _m, _s), alloc in theirs.items():
            if alloc is not None:
                allocations.setdefault((method, target), alloc)
    config0 = PipelineConfig(targets=tuple(targets), methods=(), calibration_tokens=cal_tokens,
                             perplexity=PerplexitySpec(seqlen=args.seqlen, max_tokens=test_tokens))  # fmt: skip

    measured: dict[tuple[Any, ...], Any] = {}  # identical sparsities (auto = teal-greedy) are measured once

    def evaluate(allocs: list[Any], mode: str, scoring: str) -> None:
        config = replace(config0, mode=mode, scoring=scoring)
        for alloc in allocs:
            key = _cell(
                "dense" if alloc is None else alloc.method, 0.0 if alloc is None else alloc.target, mode, scoring
            )
            if key in done:
                continue
            t0 = time.perf_counter()
            same = None if alloc is None else (tuple(round(v, 9) for v in alloc.sparsities.values()), mode, scoring)
            if same in measured:
                variants = (
                    replace(
                        measured[same], allocation=alloc, method=alloc.method, label=f"{alloc.method}@{alloc.target:g}"
                    ),
                )
            else:
                variants = evaluate_variants((lm, tokenizer), [(None, alloc)], config)
                if same is not None:
                    measured[same] = variants[0]
            store.save(_document(description, config, variants, t0), esd=report if not done else None)
            done[key] = alloc
            log(f"{alias}: {key} ppl {variants[0].ppl:.3f} ({time.perf_counter() - t0:.0f} s)")

    if need_dense:
        evaluate([None], "topk", "magnitude")

    state: dict[str, Any] = {}  # the calibration set and the greedy trace, built once when first needed

    def allocation(method: str, target: float) -> Any:
        key = (method, round(target, 4))
        if key not in allocations:
            knobs: dict[str, Any] = {}
            if method in ("teal-greedy", "auto"):
                if "trace" not in state:
                    state["cal"] = calibration_set(tokenizer, max_tokens=cal_tokens, seqlen=args.seqlen)
                    t0 = time.perf_counter()
                    state["trace"] = greedy_trace(lm, state["cal"], max_target=max(targets), step=args.greedy_step,
                                                  max_tokens=args.greedy_tokens)  # fmt: skip
                    log(
                        f"{alias}: greedy trace on {args.greedy_tokens} validation tokens: {time.perf_counter() - t0:.0f} s"
                    )
                knobs = {"model": lm, "calibration": state["cal"], "trace": state["trace"]}
            t0 = time.perf_counter()
            allocations[key] = build_allocations([method], report=report, targets=[target], **knobs)[0]
            if knobs:
                log(f"{alias}: built {method}@{target:g} in {time.perf_counter() - t0:.0f} s")
        return allocations[key]

    # Target-major in the order asked for, so a run cut short has every method at the first target.
    for i, (mode, scoring) in enumerate(combos):
        for target in targets:
            for method in args.methods:
                evaluate([allocation(method, target)], mode, scoring)
        if i == 0:
            log(f"{alias}: first combo done at {time.perf_counter() - began:.0f} s")
    if need_cats:
        run_cats(alias, lm, tokenizer, description, report, targets, args, test_tokens, cal_tokens, store, done)
    log(f"{alias}: done in {time.perf_counter() - began:.0f} s, load average {os.getloadavg()}")


def run_cats(alias, lm, tokenizer, description, report, targets, args, test_tokens, cal_tokens, store, done) -> None:
    """CATS at each target it can reach (gate sparsity = target / MLP share of the weights)."""
    from acttail.cats import apply_cats, calibrate_cats, cats_allocation, gate_sparsity
    from acttail.errors import AllocationError
    from acttail.evaluate.perplexity import evaluate_perplexity, tokenize_split
    from acttail.pipeline import PipelineConfig, VariantResult
    from acttail.store.requests import PerplexitySpec

    counts = report.param_counts()
    config = PipelineConfig(targets=tuple(targets), methods=(), mode="threshold", calibration_tokens=cal_tokens,
                            perplexity=PerplexitySpec(seqlen=args.seqlen, max_tokens=test_tokens))  # fmt: skip
    for target in targets:
        if _cell("cats", target, "threshold", "magnitude") in done:
            continue
        try:
            gate = gate_sparsity(target, counts)
        except AllocationError as exc:
            log(f"{alias}: {exc}")
            continue
        t0 = time.perf_counter()
        thresholds = calibrate_cats(lm, tokenize_split(tokenizer, "validation"), gate, max_tokens=cal_tokens,
                                    seqlen=args.seqlen)  # fmt: skip
        record = cats_allocation(counts, gate, model_id=description["model_id"], fingerprint=description["fingerprint"])
        with apply_cats(lm, thresholds) as handle:
            ppl = evaluate_perplexity(lm, token_ids=tokenize_split(tokenizer, "test", test_tokens), seqlen=args.seqlen,
                                      max_tokens=test_tokens, progress=False)  # fmt: skip
            effective = handle.effective_sparsity()
        variant = VariantResult(
            label=f"cats@{target:g}", method="cats", target=record.target, perplexity=ppl, zeroshot=None,
            mean_accuracy=None, realised_sparsity=effective, realised_per_projection=None, allocation=record,
            elapsed_s=time.perf_counter() - t0,
        )  # fmt: skip
        store.save(_document(description, config, [variant], t0))
        done[_cell("cats", target, "threshold", "magnitude")] = record
        log(f"{alias}: cats@{target} (gate {gate:.3f}, effective {effective:.3f}) ppl {ppl.ppl:.3f}")


def _scored(row: dict[str, Any], limit: int, tasks: Collection[str]) -> bool:
    """Whether the cell already has a zero-shot mean over ``tasks`` at this many items per task (0 = whole sets)."""
    z = row.get("zeroshot") or {}
    stored = z.get("limit")
    return (
        z.get("mean_accuracy") is not None
        and set(tasks) <= set(z.get("mean_tasks") or ())
        and stored is not None
        and (stored == 0 or (limit != 0 and stored >= limit))
    )


def zeroshot_picks(
    rows: Sequence[dict[str, Any]], targets: Sequence[float], *, best: int, limit: int, tasks: Collection[str],
    dense: bool = True, ranks: Collection[int] | None = None,
) -> list[tuple[dict[str, Any] | None, str, str]]:  # fmt: skip
    """What to score: dense (unless ``dense`` is False: another process scores it), and the ``best``
    lowest-perplexity cells per target, as (allocation, mode, scoring).

    Cells that sparsify identically (``auto`` when it picked ``teal-greedy``, say) count once, so the
    best three are three different sparsity patterns; cells already scored at ``limit`` are left out.
    ``ranks`` (1 = lowest perplexity) keeps only those of the best, so parallel processes can split a target.
    """
    picks: list[tuple[dict[str, Any] | None, str, str]] = []
    if dense and not any(r["method"] == "dense" and _scored(r, limit, tasks) for r in rows):
        picks.append((None, "topk", "magnitude"))
    for target in targets:
        cands = [r for r in rows if r["method"] not in ("dense", "cats") and math.isclose(r["target"], target)]
        seen: set[tuple[Any, ...]] = set()
        for r in sorted(cands, key=lambda r: r["ppl"]):
            pattern = (tuple(round(v, 9) for v in r["allocation"]["sparsities"].values()), r["mode"], r["scoring"])
            if pattern in seen:
                continue
            seen.add(pattern)
            if not _scored(r, limit, tasks) and (ranks is None or len(seen) in ranks):
                picks.append((r["allocation"], r["mode"], r["scoring"]))
            if len(seen) == best:
                break
    return picks


def stored_tasks(
    rows: Sequence[dict[str, Any]], pick: tuple[dict[str, Any] | None, str, str], limit: int
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """The pick's tasks already scored at exactly ``limit`` items: a cell cut short resumes after them."""
    allocation, mode, scoring = pick
    for r in rows:
        z = r.get("zeroshot") or {}
        if (r.get("allocation"), r["mode"], r["scoring"]) == (allocation, mode, scoring) and z.get("limit") == limit:
            return dict(z["tasks"])
    return {}


def cell_report(report: dict[str, Any], stored: dict[str, dict[str, Any]], tasks: Sequence[str]) -> dict[str, Any]:
    """One task's zero-shot report as a part of its cell: with the cell's mean over ``tasks`` once this
    task completes them (``stored`` holds the others), else with none, so no partial mean is stored."""
    from acttail.evaluate.zeroshot import TaskResult, ZeroShotReport

    results = {t: TaskResult(t, r["acc"], r.get("acc_norm"), r["n"], None) for t, r in stored.items()}
    results.update((t, TaskResult(**r)) for t, r in report["tasks"].items())
    if any(t not in results for t in tasks):
        return {**report, "mean_accuracy": None}
    cell = ZeroShotReport(tuple(results[t] for t in tasks), report["limit"], report["add_bos_token"]).to_dict()
    return {**report, "mean_accuracy": cell["mean_accuracy"], "mean_over": cell["mean_over"]}


def zeroshot_model(alias: str, args: argparse.Namespace, store: Store) -> None:
    """Zero-shot accuracy of dense and the best ``--best`` cells per target (``zeroshot_picks``).

    Each cell is scored one task at a time and every task is stored as it finishes (a 1.5B cell
    takes hours), so a part that is cut short resumes at the task it was on; the cell's mean is
    stored with its last task.
    """
    import torch

    from acttail.allocate import Allocation
    from acttail.pipeline import PipelineConfig, ThresholdsCache, evaluate_variants
    from acttail.store.leaderboard import leaderboard_table
    from acttail.store.requests import ZeroShotSpec

    source = resolve_model(alias)
    description = source.describe().as_dict()
    test_tokens = args.test_tokens_for.get(alias, args.test_tokens)

    def open_picks() -> list[tuple[tuple[dict[str, Any] | None, str, str], dict[str, dict[str, Any]]]]:
        """The cells still to score, each with its tasks already stored."""
        with store.session() as db:
            table = leaderboard_table(db, team_id=store.store.team_id, model=description["model_id"],
                                      with_allocations=True)  # fmt: skip
        rows = [r for r in table["rows"] if r["seqlen"] == args.seqlen and r["max_tokens"] == test_tokens]
        if table["rows"] and not rows:  # picks rank the grid's cells, so the protocol must match (no picks: said once)
            stored = sorted({(r["seqlen"], r["max_tokens"]) for r in table["rows"]})
            log(
                f"{alias}: no cells at seqlen {args.seqlen} with {test_tokens} test tokens; stored (seqlen, tokens): "
                f"{stored} (see --seqlen, --test-tokens-for)"
            )
        picks = zeroshot_picks(rows, args.targets, best=args.best, limit=args.limit, tasks=args.tasks,
                               dense=args.dense, ranks=args.ranks)  # fmt: skip
        return [(pick, stored_tasks(rows, pick, args.limit)) for pick in picks]

    picks = open_picks()
    log(f"{alias}: zero-shot for {len(picks)} cells, {args.limit} items per task of {', '.join(args.tasks)}")
    for pick, stored in picks:
        if stored:
            log(f"{alias}: {_pick_label(pick)} resumes: {', '.join(sorted(stored))} stored")
    if not picks:  # loading the 1.5B alone takes minutes
        return
    lm, tokenizer = source.load_causal_lm()
    torch.set_num_threads(args.threads)
    for pick, _ in picks:
        doc, mode, scoring = pick
        alloc = None if doc is None else Allocation.from_dict(doc)
        thresholds: ThresholdsCache = {}  # a threshold cell calibrates once, not once per task
        for task in args.tasks:
            # Read again before each task: another process may have scored it (a task costs minutes to an hour).
            stored = next((s for p, s in open_picks() if p == pick), None)
            if stored is None:  # the cell's mean is stored
                break
            if task in stored:
                continue
            # No perplexity here: the grid's stored perplexity rows stay as measured (a rerun would upsert
            # over them). Thresholds calibrate in windows of the grid's seqlen, as the grid's did.
            config = PipelineConfig(targets=(), methods=(), mode=mode, scoring=scoring, perplexity=None,
                                    zeroshot=ZeroShotSpec(tasks=[task], limit=args.limit),
                                    calibration_tokens=args.cal_tokens_for.get(alias, args.cal_tokens),
                                    calibration_seqlen=args.seqlen)  # fmt: skip
            t0 = time.perf_counter()
            (variant,) = evaluate_variants((lm, tokenizer), [(None, alloc)], config, thresholds_cache=thresholds)
            assert variant.zeroshot is not None
            report = cell_report(variant.zeroshot, stored, args.tasks)
            variant = replace(variant, zeroshot=report, mean_accuracy=report["mean_accuracy"])
            store.save(_document(description, config, [variant], t0))
            done = sum(t in stored or t == task for t in args.tasks)
            log(f"{alias}: zero-shot {_pick_label(pick)}: {task} acc {report['tasks'][task]['acc']:.4f} "
                f"({time.perf_counter() - t0:.0f} s; {done} of {len(args.tasks)} tasks)")  # fmt: skip
            if report["mean_accuracy"] is not None:
                log(f"{alias}: zero-shot {_pick_label(pick)}: mean acc {report['mean_accuracy']:.4f}")


def _pick_label(pick: tuple[dict[str, Any] | None, str, str]) -> str:
    doc, mode, scoring = pick
    return "dense" if doc is None else f"{doc['method']}@{doc['target']:g} {mode}/{scoring}"


def _sqlite_file_exists(url: str) -> bool:
    """Whether a DB URL to read from exists (always True for server databases, which cannot be checked here)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return parsed.get_backend_name() != "sqlite" or Path(parsed.database or "").is_file()


def _per_model(values: Sequence[str]) -> dict[str, int]:
    out = {}
    for item in values:
        name, _, n = item.partition("=")
        out[name] = int(n)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=("run", "zeroshot", "report"))
    parser.add_argument("--models", default="smollm2-135m,gemma3-270m,qwen2.5-coder-0.5b,qwen2.5-coder-1.5b")
    parser.add_argument("--targets", default="0.5,0.3,0.7")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--modes", default="topk,threshold")
    parser.add_argument("--scorings", default="magnitude,wina")
    parser.add_argument("--no-cats", dest="cats", action="store_false")
    parser.add_argument("--no-dense", dest="dense", action="store_false", help="leave the dense cell to another part")
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--test-tokens", type=int, default=2048)
    parser.add_argument("--test-tokens-for", nargs="*", default=[], help="per model: alias=N")
    parser.add_argument("--cal-tokens", type=int, default=1024, help="validation tokens: auto's grid, thresholds, CATS")
    parser.add_argument("--cal-tokens-for", nargs="*", default=[], help="per model: alias=N")
    parser.add_argument("--greedy-tokens", type=int, default=256)
    parser.add_argument("--greedy-step", type=float, default=0.1)
    parser.add_argument("--tasks", default="arc_easy,arc_challenge,piqa,winogrande,hellaswag,boolq")
    parser.add_argument("--limit", type=int, default=500, help="zero-shot items per task")
    parser.add_argument("--best", type=int, default=3, help="zero-shot: best cells per target")
    parser.add_argument("--ranks", help="zero-shot: only these of the best, e.g. 3 or 2,3 (1 = lowest PPL)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--db", default=f"sqlite:///{DEFAULT_DB}", help="results DB URL (default: the committed one)")
    parser.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--note", action="append", default=[], help="report: a line on the run's conditions (load)")
    parser.add_argument("--allocations-from", metavar="DB",
                        help="run: take the allocations stored in this results DB instead of building them")  # fmt: skip
    parser.add_argument("--rerun", nargs=2, action="append", default=[], metavar=("DB", "LABEL"),
                        help="report: set the cells of another results DB (a rerun elsewhere) beside the stored ones")  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    args.targets = [float(t) for t in args.targets.split(",")]
    if args.ranks is not None:
        try:
            args.ranks = {int(r) for r in args.ranks.split(",") if r}
        except ValueError:
            parser.error(f"--ranks takes ranks like 3 or 2,3, not {args.ranks!r}")
        if not args.ranks or not all(1 <= r <= args.best for r in args.ranks):
            parser.error(f"--ranks must lie in 1..{args.best} (--best)")
    for name in ("methods", "modes", "scorings", "tasks"):
        setattr(args, name, [v for v in getattr(args, name).split(",") if v])
    args.test_tokens_for = _per_model(args.test_tokens_for)
    args.cal_tokens_for = _per_model(args.cal_tokens_for)
    for source in [args.allocations_from, *(url for url, _ in args.rerun)]:
        if source and not _sqlite_file_exists(source):  # opening it would create an empty DB and read nothing
            parser.error(f"no results database at {source}")
    store = Store(args.db)
    if args.part == "report":
        from leaderboard_report import write_report

        write_report(store, args)
        store.checkpoint()
        return
    log(f"load average {os.getloadavg()}, {platform.machine()}")
    for alias in [m for m in args.models.split(",") if m]:
        (run_model if args.part == "run" else zeroshot_model)(alias, args, store)


if __name__ == "__main__":
    main()
