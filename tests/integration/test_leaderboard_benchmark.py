"""``benchmarks/leaderboard.py`` stores each cell once, resumes from what is stored, and reports every row.

A tiny random Llama (tests/tiny_models.py) runs through the real benchmark into a temporary SQLite
database: a first part, the same part again (must measure nothing), a wider part (must measure only
the new cell and reuse the stored allocations), then the report, whose table must name every row.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from acttail.store.db import make_engine, make_session_factory, session_scope
from acttail.store.leaderboard import leaderboard_table
from acttail.store.orm import AllocationRow, Benchmark
from tests.tiny_models import save_tiny_model

pytestmark = pytest.mark.integration

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
QUICK = ["--targets", "0.5", "--modes", "topk", "--scorings", "magnitude", "--no-cats", "--seqlen", "64",
         "--test-tokens", "256", "--cal-tokens", "256", "--threads", "1"]  # fmt: skip


@pytest.fixture
def leaderboard(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, acttail_home: Path) -> ModuleType:
    """The benchmark module, importable as its script is, with its ESD cache under tmp_path."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import leaderboard as module

    monkeypatch.setattr(module, "ESD_CACHE", tmp_path / "esd-cache")
    return module


def read_table(db_url: str) -> dict[str, Any]:
    """The leaderboard table as team ``default`` (id 1) sees it."""
    engine = make_engine(db_url)
    try:
        with session_scope(make_session_factory(engine)) as db:
            return leaderboard_table(db, team_id=1, with_allocations=True)
    finally:
        engine.dispose()


def counts(db_url: str) -> tuple[int, int, list[int]]:
    """(allocation rows, benchmark rows, perplexity row IDs of the leaderboard table)."""
    engine = make_engine(db_url)
    try:
        with session_scope(make_session_factory(engine)) as db:
            n_alloc = db.query(AllocationRow).count()
            n_bench = db.query(Benchmark).count()
            table = leaderboard_table(db, team_id=1)
    finally:
        engine.dispose()
    return n_alloc, n_bench, sorted(e["row_id"] for e in table["rows"])


def test_runs_in_parts_resumes_and_reports_every_row(
    leaderboard: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:  # fmt: skip
    model = str(save_tiny_model(tmp_path / "models" / "tiny-llama"))
    db_url = f"sqlite:///{tmp_path / 'leaderboard.db'}"
    base = ["--models", model, "--db", db_url, *QUICK]

    leaderboard.main(["run", *base, "--methods", "uniform,acttail"])
    allocs, benches, rows = counts(db_url)
    assert (allocs, len(rows)) == (2, 3)  # uniform and acttail at 50%, and dense

    capsys.readouterr()
    leaderboard.main(["run", *base, "--methods", "uniform,acttail"])
    assert "nothing to do" in capsys.readouterr().err
    assert counts(db_url) == (allocs, benches, rows)

    leaderboard.main(["run", *base, "--methods", "uniform,acttail,acttail-reverse"])
    allocs2, benches2, rows2 = counts(db_url)
    assert allocs2 == 3 and len(rows2) == 4 and rows2[:3] == rows  # one new cell, the stored ones untouched
    assert benches2 > benches

    before = {(e["method"], e["row_id"]): (e["ppl"], e["realised_sparsity"]) for e in read_table(db_url)["rows"]}
    leaderboard.main(["zeroshot", *base, "--best", "1", "--tasks", "arc_easy", "--limit", "4"])
    table = read_table(db_url)
    after = {(e["method"], e["row_id"]): (e["ppl"], e["realised_sparsity"]) for e in table["rows"]}
    assert after == before  # zero-shot adds accuracy rows; the grid's perplexities stay as measured
    realised = {e["method"]: e["realised_sparsity"] for e in table["rows"]}
    assert realised["dense"] is None  # every sparse cell is stored beside the sparsity it ran at
    assert all(v == pytest.approx(0.5, abs=0.02) for m, v in realised.items() if m != "dense"), realised
    scored = {e["method"] for e in table["rows"] if e["mean_accuracy"] is not None}
    best = min((e for e in table["rows"] if e["method"] != "dense"), key=lambda e: e["ppl"])
    assert scored == {"dense", best["method"]}
    assert all(e["zeroshot"]["limit"] == 4 for e in table["rows"] if e["zeroshot"])

    # Two processes split the rest: while this one scores the second best, another takes the third
    # (--ranks 3); this one must then see it stored and not score it again.
    import acttail.pipeline

    evaluate, calls = acttail.pipeline.evaluate_variants, []

    def evaluate_while_another_process_runs(*a: Any, **kw: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            leaderboard.main(["zeroshot", *zs, "--ranks", "3"])
        return evaluate(*a, **kw)

    zs = [*base, "--best", "3", "--no-dense", "--tasks", "arc_easy", "--limit", "4"]
    monkeypatch.setattr(acttail.pipeline, "evaluate_variants", evaluate_while_another_process_runs)
    leaderboard.main(["zeroshot", *zs])
    assert len(calls) == 2  # the second best here, the third there; not the third again
    assert all(e["mean_accuracy"] is not None for e in read_table(db_url)["rows"])

    # With every pick scored, a part does not even load the model (the 1.5B's load alone takes minutes).
    resolve = leaderboard.resolve_model

    def resolve_without_loading(alias: str) -> Any:
        source = resolve(alias)
        source.load_causal_lm = lambda *a, **kw: pytest.fail("loaded a model with nothing to score")
        return source

    capsys.readouterr()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(leaderboard, "resolve_model", resolve_without_loading)
        leaderboard.main(["zeroshot", *zs])
        assert "zero-shot for 0 cells" in capsys.readouterr().err
        leaderboard.main(["zeroshot", *zs, "--test-tokens", "128"])  # a budget the grid was not run at
        assert (
            "no cells at seqlen 64 with 128 test tokens; stored (seqlen, tokens): [(64, 256)]"
            in capsys.readouterr().err
        )

    out = tmp_path / "report"
    leaderboard.main(["report", "--db", db_url, "--out-dir", str(out), "--note", "test run"])
    text = (out / "leaderboard.md").read_text()
    assert "test run" in text
    for row_id in rows2:
        cited = re.search(rf"\| {row_id} \|$", text, re.MULTILINE) or f"(row {row_id})" in text
        assert cited, f"row {row_id} missing from leaderboard.md"
    stored = json.loads((out / "leaderboard.json").read_text())
    assert sorted(r["row_id"] for r in stored["rows"]) == rows2

    rerun_url = f"sqlite:///{tmp_path / 'rerun.db'}"
    leaderboard.main(["run", "--models", model, "--db", rerun_url, *QUICK, "--methods", "acttail", "--no-dense",
                      "--allocations-from", db_url])  # fmt: skip
    first, again = (next(e for e in read_table(url)["rows"] if e["method"] == "acttail") for url in (db_url, rerun_url))
    assert again["allocation"] == first["allocation"]  # taken over, created_at included, not built again
    leaderboard.main(["report", "--db", db_url, "--out-dir", str(out), "--rerun", rerun_url, "same machine"])
    section = (out / "leaderboard.md").read_text().split("## Rerun on another machine (same machine)")[1]
    cells = [line for line in section.split("\n## ")[0].splitlines() if line.startswith("| ") and "---" not in line]
    assert len(cells) == 2  # the header and the one cell both DBs hold
    assert "acttail TopK" in cells[1] and "| +0.00% |" in cells[1]  # same machine, same rounding


TASKS = ["arc_easy", "piqa"]


def _scores(limit: int, tasks: list[str] = TASKS, mean: bool = True) -> dict[str, Any]:
    """A cell's zero-shot entry as ``leaderboard_table`` gives it: with a mean once every task is stored."""
    z: dict[str, Any] = {"limit": limit, "tasks": {t: {"acc": 0.5, "n": limit} for t in tasks}}
    return {**z, "mean_accuracy": 0.5, "mean_tasks": sorted(tasks)} if mean else z


def _row(method: str, mode: str, ppl: float, pattern: float, scored_limit: int | None = None) -> dict:
    allocation = None if method == "dense" else {"method": method, "sparsities": {"q": pattern, "up": 1 - pattern}}
    return {"method": method, "target": 0.0 if method == "dense" else 0.5, "mode": mode, "scoring": "magnitude",
            "ppl": ppl, "allocation": allocation,
            "zeroshot": None if scored_limit is None else _scores(scored_limit)}  # fmt: skip


def test_zeroshot_picks_three_distinct_patterns_and_skips_scored_cells(leaderboard: ModuleType) -> None:
    rows = [
        _row("dense", "topk", 40.0, 0.0),
        _row("auto", "threshold", 50.0, 0.4),  # = teal-greedy's pattern: one of the three, not two
        _row("teal-greedy", "threshold", 50.0, 0.4),
        _row("uniform", "threshold", 55.0, 0.5, scored_limit=100),  # scored, but on fewer items
        _row("teal-greedy", "topk", 56.0, 0.4),  # same pattern, other mode: a different cell
        _row("acttail", "topk", 70.0, 0.6),
    ]
    picks = leaderboard.zeroshot_picks(rows, [0.5], best=3, limit=500, tasks=TASKS)
    assert [(a and a["method"], mode) for a, mode, _ in picks] == [
        (None, "topk"), ("auto", "threshold"), ("uniform", "threshold"), ("teal-greedy", "topk"),
    ]  # fmt: skip
    assert leaderboard.zeroshot_picks(rows, [0.5], best=3, limit=500, tasks=TASKS, dense=False) == picks[1:]

    rows[0]["zeroshot"] = _scores(500)
    rows[3]["zeroshot"] = _scores(500)  # already scored at this size: counts among the best, not re-run
    rows[1]["zeroshot"] = _scores(500, TASKS[:1], mean=False)  # cut short after one task: still to finish
    picks = leaderboard.zeroshot_picks(rows, [0.5], best=3, limit=500, tasks=TASKS)
    assert [(a["method"], mode) for a, mode, _ in picks] == [("auto", "threshold"), ("teal-greedy", "topk")]
    assert leaderboard.stored_tasks(rows, picks[0], 500) == {"arc_easy": {"acc": 0.5, "n": 500}}
    assert leaderboard.stored_tasks(rows, picks[0], 100) == {}  # another size is another run
    third = leaderboard.zeroshot_picks(rows, [0.5], best=3, limit=500, tasks=TASKS, ranks={3})
    assert [(a["method"], mode) for a, mode, _ in third] == [("teal-greedy", "topk")]  # the rest to another process
    assert leaderboard.zeroshot_picks(rows, [0.5], best=3, limit=500, tasks=TASKS, ranks={2}) == []  # rank 2 scored
    more = leaderboard.zeroshot_picks(rows, [0.5], best=3, limit=500, tasks=[*TASKS, "boolq"])
    assert len(more) == 4  # a mean over fewer tasks does not count for more


def test_zeroshot_cut_short_resumes_at_its_task_and_stores_the_mean_with_the_last(
    leaderboard: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:  # fmt: skip
    import acttail.pipeline
    from acttail.store.measurements import zeroshot_measurements

    model = str(save_tiny_model(tmp_path / "models" / "tiny-llama-zs", seed=5))
    db_url = f"sqlite:///{tmp_path / 'leaderboard.db'}"
    base = ["--models", model, "--db", db_url, *QUICK]
    leaderboard.main(["run", *base, "--methods", "uniform"])
    zs = ["zeroshot", *base, "--best", "1", "--tasks", "arc_easy,arc_challenge,winogrande"]
    leaderboard.main([*zs, "--limit", "2"])  # an earlier run on fewer items, whole

    evaluate, calls, cut_at = acttail.pipeline.evaluate_variants, [], [3]

    def evaluate_until_the_machine_goes(*a: Any, **kw: Any) -> Any:
        calls.append(a[2].zeroshot.tasks)
        if len(calls) in cut_at:
            raise RuntimeError("session over")
        return evaluate(*a, **kw)

    monkeypatch.setattr(acttail.pipeline, "evaluate_variants", evaluate_until_the_machine_goes)
    with pytest.raises(RuntimeError, match="session over"):
        leaderboard.main([*zs, "--limit", "4"])
    dense = next(e for e in read_table(db_url)["rows"] if e["method"] == "dense")
    assert dense["zeroshot"]["limit"] == 4 and sorted(dense["zeroshot"]["tasks"]) == ["arc_challenge", "arc_easy"]
    assert dense["mean_accuracy"] is None  # no mean over two of three tasks is stored as the cell's
    leaderboard.main(["report", "--db", db_url, "--out-dir", str(tmp_path / "report")])
    under_way = (tmp_path / "report" / "leaderboard.md").read_text().split("Zero-shot cells under way")[1]
    assert under_way.splitlines()[2].endswith(" dense, 4 items per task: arc_challenge, arc_easy")

    def task_rows() -> dict[tuple[int | None, str, Any], tuple[int, float, Any]]:
        engine = make_engine(db_url)
        try:
            with session_scope(make_session_factory(engine)) as db:
                return {(b.allocation_id, b.metric, b.settings["limit"]): (b.id, b.value, b.created_at)
                        for b in db.query(Benchmark).filter(Benchmark.kind == "zeroshot")}  # fmt: skip
        finally:
            engine.dispose()

    before = task_rows()
    calls.clear()
    cut_at.clear()
    capsys.readouterr()
    leaderboard.main([*zs, "--limit", "4"])
    assert "dense resumes: arc_challenge, arc_easy stored" in capsys.readouterr().err
    dense_rest, sparse_cell = [["winogrande"]], [["arc_easy"], ["arc_challenge"], ["winogrande"]]
    assert calls == dense_rest + sparse_cell
    after = task_rows()
    assert all(after[k] == v for k, v in before.items())  # stored tasks kept as measured: same rows, same time
    table = read_table(db_url)
    for entry in table["rows"]:
        z = entry["zeroshot"]
        assert z["limit"] == 4 and z["mean_tasks"] == ["arc_challenge", "arc_easy", "winogrande"]
        headline = [task.get("acc_norm", task["acc"]) for task in z["tasks"].values()]
        assert entry["mean_accuracy"] == pytest.approx(statistics.mean(headline))
    means = [k for k in after if k[1] == "mean_accuracy"]
    assert sorted(k[2] for k in means) == [2, 2, 4, 4]  # one mean per cell and size, none over part of a cell

    report = zeroshot_measurements({"tasks": {"boolq": {"acc": 0.5, "n": 4}}, "settings": {}, "limit": 4,
                                    "mean_accuracy": None}, mode="topk")  # fmt: skip
    assert [m.metric for m in report] == ["boolq/acc"]


def test_a_threshold_cell_scored_task_by_task_calibrates_once(
    leaderboard: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # fmt: skip
    import acttail.sparsity

    model = str(save_tiny_model(tmp_path / "models" / "tiny-llama-thr", seed=6))
    db_url = f"sqlite:///{tmp_path / 'leaderboard.db'}"
    base = ["--models", model, "--db", db_url, *QUICK, "--modes", "threshold"]
    leaderboard.main(["run", *base, "--methods", "uniform"])

    calibrate, calibrated = acttail.sparsity.calibrate_thresholds, []

    def counted(*a: Any, **kw: Any) -> Any:
        calibrated.append(calibrate(*a, **kw))
        return calibrated[-1]

    monkeypatch.setattr(acttail.sparsity, "calibrate_thresholds", counted)
    tasks = ["arc_easy", "arc_challenge", "winogrande"]
    leaderboard.main(["zeroshot", *base, "--no-dense", "--best", "1", "--tasks", ",".join(tasks), "--limit", "2"])
    (cell,) = [e for e in read_table(db_url)["rows"] if e["method"] == "uniform"]
    assert cell["mode"] == "threshold" and sorted(cell["zeroshot"]["tasks"]) == sorted(tasks)
    assert cell["mean_accuracy"] is not None
    assert len(calibrated) == 1  # three tasks, one calibration


@pytest.mark.parametrize("ranks", ["x", "4", "0", ","])
def test_ranks_outside_the_best_are_refused(
    leaderboard: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str], ranks: str
) -> None:  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        leaderboard.main(["zeroshot", "--db", f"sqlite:///{tmp_path / 'lb.db'}", "--best", "3", "--ranks", ranks])
    assert exc.value.code == 2 and "--ranks" in capsys.readouterr().err.splitlines()[-1]


def _windowed(method: str, mode: str, scoring: str, nlls: list[float], target: float = 0.5) -> dict[str, Any]:
    return {"model_id": "m", "method": method, "target": target, "mode": mode, "scoring": scoring,
            "window_nlls": nlls}  # fmt: skip


def test_twin_changes_pair_cells_that_differ_in_one_knob(leaderboard: ModuleType) -> None:
    import leaderboard_report

    rows = [
        _windowed("uniform", "topk", "magnitude", [3.0, 3.2, 3.4]),
        _windowed("uniform", "topk", "wina", [3.1, 3.2, 3.5]),
        _windowed("uniform", "threshold", "magnitude", [2.9, 3.0, 3.3]),
        _windowed("acttail", "topk", "wina", [3.0, 3.0, 3.0]),  # its |x| twin is missing: no pair
        _windowed("auto", "topk", "magnitude", [3.0, 3.2, 3.4]),  # repeats another method: left out
        _windowed("auto", "topk", "wina", [3.1, 3.2, 3.5]),
        _windowed("uniform", "topk", "wina", [3.0, 3.0], target=0.3),  # other target, no |x| twin
    ]
    wina = leaderboard_report.twin_changes(rows, "scoring", "magnitude", "wina")
    assert [(p["base"]["method"], p["base"]["mode"], p["other"]["scoring"]) for p in wina] == [
        ("uniform", "topk", "wina")
    ]
    mean_diff = (0.1 + 0.0 + 0.1) / 3  # paired over the same windows
    assert wina[0]["change_pct"] == pytest.approx(100 * (math.exp(mean_diff) - 1))
    assert wina[0]["se_pct"] == pytest.approx(100 * statistics.stdev([0.1, 0.0, 0.1]) / math.sqrt(3))
    mode = leaderboard_report.twin_changes(rows, "mode", "topk", "threshold")
    assert [(p["base"]["mode"], p["other"]["mode"]) for p in mode] == [("topk", "threshold")]
    assert mode[0]["change_pct"] < 0  # thresholds lower every window's NLL here


def test_rerun_changes_pair_the_same_cell_under_the_same_protocol(leaderboard: ModuleType) -> None:
    import leaderboard_report

    def cell(method: str, ppl: float, max_tokens: int = 2048) -> dict[str, Any]:
        return {"model_id": "m", "method": method, "target": 0.5, "mode": "topk", "scoring": "magnitude",
                "seqlen": 256, "max_tokens": max_tokens, "ppl": ppl}  # fmt: skip

    stored = [cell("uniform", 200.0), cell("acttail", 180.0), cell("dense", 100.0)]
    rerun = [cell("uniform", 204.0), cell("acttail", 170.0, max_tokens=1024), cell("htsr-spectral", 150.0)]
    pairs = leaderboard_report.rerun_changes(stored, rerun)
    assert [(p["stored"]["method"], p["rerun"]["ppl"]) for p in pairs] == [("uniform", 204.0)]
    assert pairs[0]["change_pct"] == pytest.approx(2.0)


def test_gain_spread_lists_cells_measured_in_every_run(leaderboard: ModuleType) -> None:
    import leaderboard_report

    def cell(method: str, mode: str, change: float | None) -> dict[str, Any]:
        return {"model_id": "m", "method": method, "target": 0.5, "mode": mode, "scoring": "magnitude", "seqlen": 256,
                "max_tokens": 2048, "ppl": 50.0, "change_vs_uniform_pct": change, "se_pct": 1.0}  # fmt: skip

    stored = [cell("uniform", "topk", None), cell("uniform", "threshold", -4.8), cell("acttail", "topk", -2.0)]
    rerun = [cell("uniform", "topk", None), cell("uniform", "threshold", 0.6)]  # acttail not measured again
    pairs = leaderboard_report.rerun_changes(stored, rerun)
    lines = leaderboard_report._gain_spread_lines(stored, [("elsewhere", pairs)])
    cells = [line for line in lines if line.startswith("| m |")]
    assert cells == ["| m | uniform thr \\|x\\| | 50% | -4.8% ± 1.0 | +0.6% ± 1.0 | 5.4 |"]


def test_databases_to_read_from_must_exist_and_hold_the_model(
    leaderboard: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:  # fmt: skip
    missing = tmp_path / "typo.db"
    with pytest.raises(SystemExit) as exc:
        leaderboard.main(["report", "--db", f"sqlite:///{tmp_path / 'lb.db'}", "--rerun", f"sqlite:///{missing}", "x"])
    assert exc.value.code == 2 and f"no results database at sqlite:///{missing}" in capsys.readouterr().err
    assert not missing.exists()  # nothing created in its place

    model = str(save_tiny_model(tmp_path / "models" / "tiny-llama-from"))
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    leaderboard.Store(empty)  # an existing DB with no cells
    with pytest.raises(SystemExit, match="holds no cells of this model"):
        leaderboard.main(["run", "--models", model, "--db", f"sqlite:///{tmp_path / 'lb.db'}", *QUICK,
                          "--methods", "acttail", "--no-dense", "--allocations-from", empty])  # fmt: skip


def test_threshold_cell_without_realised_sparsity_is_measured_again_in_place(
    leaderboard: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:  # fmt: skip
    from sqlalchemy import delete

    from acttail.store.measurements import REALISED_KIND

    model = str(save_tiny_model(tmp_path / "models" / "tiny-llama-thr", seed=3))
    db_url = f"sqlite:///{tmp_path / 'leaderboard.db'}"
    part = ["run", "--models", model, "--db", db_url, *QUICK, "--modes", "threshold", "--methods", "uniform"]
    leaderboard.main(part)
    _, benches, rows = counts(db_url)
    engine = make_engine(db_url)
    try:  # as a cell stored before realised-sparsity rows existed
        with session_scope(make_session_factory(engine)) as db:
            assert db.execute(delete(Benchmark).where(Benchmark.kind == REALISED_KIND)).rowcount == 1
    finally:
        engine.dispose()

    capsys.readouterr()
    leaderboard.main(part)
    assert "(1 to measure again)" in capsys.readouterr().err
    _, benches_again, rows_again = counts(db_url)
    assert (benches_again, rows_again) == (benches, rows)  # same rows, updated in place, realised row back
    table = read_table(db_url)
    cell = next(e for e in table["rows"] if e["mode"] == "threshold")
    assert 0.3 < cell["realised_sparsity"] < 0.7  # calibrated on validation, realised on test
