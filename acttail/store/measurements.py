"""Measured results as benchmark rows: the one mapping the workers and the CLI share.

A benchmark row is (kind, metric, value, settings), and its natural key hashes the settings
(``save_benchmark``). A service job and ``acttail run`` that measured the same thing must build
identical settings, or they would store two rows for one number; so both build them here. Inputs
are the science results' ``to_dict()`` documents (``PerplexityResult``, ``ZeroShotReport``), so
this module never imports the science core.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from acttail.store.orm import Model
from acttail.store.results import save_benchmark


@dataclass(frozen=True)
class Measurement:
    """One number about to become a benchmark row.

    ``settings`` say what was measured and form the row's natural key; ``run_facts`` say how this
    run went (peak memory) and are stored beside the versions, so a re-run replaces them instead
    of adding a row.
    """

    kind: str  # perplexity | zeroshot | speed
    metric: str  # ppl | mean_accuracy | <task>/acc | <task>/acc_norm | ...
    value: float
    settings: dict[str, Any]
    run_facts: dict[str, Any] = field(default_factory=dict)


#: Result fields that describe one run, not what was measured (``acttail.evaluate.memory``).
RUN_FACT_PREFIX = "peak_memory_"


def _run_facts(document: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in document.items() if k.startswith(RUN_FACT_PREFIX)}


def perplexity_measurements(
    result: Mapping[str, Any], *, mode: str, extra: Mapping[str, Any] | None = None
) -> list[Measurement]:
    """``PerplexityResult.to_dict()`` -> one ``perplexity/ppl`` row.

    ``extra`` adds settings that change the number beyond the protocol (threshold calibration);
    without it the settings are exactly the ones the workers have always written.
    """
    settings = {
        "dataset": result["dataset"], "split": result["split"], "seqlen": result["seqlen"],
        "max_tokens": result["max_tokens"], "mode": mode, **(extra or {}),
    }  # fmt: skip
    settings["tokens_scored"] = result["tokens_scored"]
    return [Measurement("perplexity", "ppl", float(result["ppl"]), settings, _run_facts(result))]


#: Benchmark kind of the per-window NLL rows beside a ``perplexity/ppl`` row.
WINDOW_KIND = "perplexity_window"


def window_measurements(ppl: Measurement, window_nlls: Iterable[float]) -> list[Measurement]:
    """One ``perplexity_window/nll/<w>`` row per window, with the settings of the ``ppl`` row they make up.

    Two rows on the same windows then compare with a paired standard error
    (``acttail.evaluate.paired``) straight from the database.
    """
    return [
        Measurement(WINDOW_KIND, f"nll/{w:04d}", float(nll), dict(ppl.settings)) for w, nll in enumerate(window_nlls)
    ]


#: Benchmark kind of the realised-sparsity row beside a ``perplexity/ppl`` row.
REALISED_KIND = "sparsity"


def realised_measurement(ppl: Measurement, realised: float) -> Measurement:
    """``sparsity/realised``: the parameter-weighted share of input entries zeroed while ``ppl`` was measured.

    Threshold mode only approximates its target on new text, so a perplexity is read beside the
    sparsity it actually ran at; same settings as the ``ppl`` row, so the two pair up by key.
    """
    return Measurement(REALISED_KIND, "realised", float(realised), dict(ppl.settings))


def zeroshot_measurements(
    report: Mapping[str, Any], *, mode: str, extra: Mapping[str, Any] | None = None
) -> list[Measurement]:
    """``ZeroShotReport.to_dict()`` -> ``zeroshot/mean_accuracy`` plus ``<task>/acc`` and ``<task>/acc_norm`` rows.

    A report that is one task of a cell measured task by task (``benchmarks/leaderboard.py``) has no
    mean yet (None: no row, as a mean over fewer tasks would pass for the cell's), and the last such
    report carries the cell's mean over every task (``mean_over``) beside its own task.
    """
    tasks: Mapping[str, Mapping[str, Any]] = report["tasks"]
    facts = _run_facts(report["settings"])
    protocol = {k: v for k, v in report["settings"].items() if k not in facts}
    settings = {"limit": report["limit"], "mode": mode, **protocol, **(extra or {})}
    out = []
    if report["mean_accuracy"] is not None:
        mean_over = sorted(report.get("mean_over") or tasks)
        out.append(Measurement("zeroshot", "mean_accuracy", float(report["mean_accuracy"]),
                               {**settings, "tasks": mean_over}, facts))  # fmt: skip
    for task, result in tasks.items():
        task_settings = {**settings, "task": task, "n": result["n"]}
        out.append(Measurement("zeroshot", f"{task}/acc", float(result["acc"]), task_settings, facts))
        if result.get("acc_norm") is not None:
            out.append(Measurement("zeroshot", f"{task}/acc_norm", float(result["acc_norm"]), task_settings, facts))
    return out


def speed_measurements(speed: Mapping[str, Any]) -> list[Measurement]:
    """The pipeline's speed dict (``settings`` + tokens/s, dense and sparse, and their ratio) -> ``speed/*`` rows."""
    metrics = ("dense_tokens_per_s", "sparse_tokens_per_s", "speedup")
    settings = dict(speed["settings"])
    return [Measurement("speed", m, float(speed[m]), settings) for m in metrics if speed.get(m) is not None]


def save_measurements(
    measurements: Iterable[Measurement],
    *,
    model: Model,
    allocation_id: int | None,
    versions: Mapping[str, Any],
    team_id: int,
    db_session: Session,
    shared: bool = False,
) -> list[int]:
    """Upsert each measurement as a benchmark row of ``model`` (dense when ``allocation_id`` is None); row IDs."""
    ids: list[int] = []
    for m in measurements:
        row, _ = save_benchmark(
            model=model, kind=m.kind, metric=m.metric, value=m.value, settings=m.settings,
            versions={**versions, **m.run_facts},
            allocation_id=allocation_id, team_id=team_id, shared=shared, db_session=db_session,
        )  # fmt: skip
        ids.append(row.id)
    return ids
