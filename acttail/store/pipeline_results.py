"""A finished ``acttail run`` / ``acttail evaluate`` recorded in the results database.

The input is the result document the CLI writes as JSON (``PipelineResult.to_dict()``), plus the
ESD report whose alphas it used. The rows are the ones a service job writes
(``workers/runner.py``), through the same functions: the model by fingerprint, the ESD run of
(model, estimator), one allocation row per evaluated allocation, and benchmark rows built by
``acttail.store.measurements``. Every write is an upsert on a natural key, so recording the same
run again adds no row, and a CLI run and a job that measured the same thing share one row.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from acttail.store.catalog import get_or_create_model, save_esd_run
from acttail.store.measurements import (
    Measurement,
    perplexity_measurements,
    save_measurements,
    window_measurements,
    zeroshot_measurements,
)
from acttail.store.results import save_allocation

#: A dense measurement does not depend on the sparsity mode. The workers label dense rows
#: ``topk``, so every run's dense rows converge on theirs, whichever mode the run used.
DENSE_MODE = "topk"


@dataclass(frozen=True)
class RecordedRun:
    """Row IDs a recorded run wrote or found (the same IDs when it is recorded again)."""

    model_pk: int
    esd_run_id: int | None
    allocation_ids: tuple[int, ...]
    benchmark_ids: tuple[int, ...]


def variant_measurements(variant: Mapping[str, Any], protocol: Mapping[str, Any]) -> list[Measurement]:
    """Benchmark rows of one evaluated variant (``VariantResult.to_dict()``) under the run's protocol."""
    dense = variant.get("allocation") is None
    mode = DENSE_MODE if dense else str(protocol["mode"])
    calibration = None if dense else protocol.get("calibration")
    extra: dict[str, Any] = (
        {"calibration": calibration} if calibration else {}
    )  # threshold mode: what the thresholds saw
    scoring = protocol.get("scoring", "magnitude")
    if not dense and scoring != "magnitude":  # magnitude rows keep the settings they always had
        extra["scoring"] = scoring
    if protocol.get("suite"):  # a named benchmark suite (benchmarks/leaderboard.py) keeps its rows apart
        extra["suite"] = protocol["suite"]
    out: list[Measurement] = []
    if variant.get("perplexity"):
        out += perplexity_measurements(variant["perplexity"], mode=mode, extra=extra or None)
        if protocol.get("window_rows"):  # per-window NLLs, for paired standard errors between rows
            out += window_measurements(out[-1], variant["perplexity"].get("window_nlls") or ())
    if variant.get("zeroshot"):
        out += zeroshot_measurements(variant["zeroshot"], mode=mode, extra=extra or None)
    return out


def save_pipeline_result(
    document: Mapping[str, Any],
    *,
    team_id: int,
    db_session: Session,
    esd_report: Any | None = None,
    eigenvalues: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
    shared: bool = False,
) -> RecordedRun:
    """Upsert everything ``document`` (format ``acttail.pipeline_result``) measured; returns the row IDs.

    ``esd_report`` (an ``acttail.esd.ESDReport``: ``estimator``, ``projections``, ``elapsed_s``)
    is stored as the model's ESD run unless one exists for that estimator (ESD runs are shared
    facts about weights, computed once), with ``eigenvalues`` (projection name → all its
    eigenvalues) for the ESD plot. ``meta`` is stored with the ESD run (e.g. its origin).
    Allocations are the pipeline's own, valid by construction.
    """
    if document.get("format") != "acttail.pipeline_result":
        raise ValueError(f"not a pipeline result document (format {document.get('format')!r})")
    model = get_or_create_model(document["model"], db_session=db_session)
    versions = dict(document.get("versions") or {})
    esd_run_id = None
    if esd_report is not None:
        run, _ = save_esd_run(
            model, esd_report.estimator, esd_report.projections, elapsed_s=esd_report.elapsed_s,
            meta={**dict(meta or {}), "device": versions.get("device"), "versions": versions}, team_id=team_id,
            eigenvalues=eigenvalues, db_session=db_session,
        )  # fmt: skip
        esd_run_id = run.id
    allocation_ids: list[int] = []
    benchmark_ids: list[int] = []
    for variant in document["variants"]:
        allocation_id = None
        if variant.get("allocation") is not None:
            row, _ = save_allocation(
                variant["allocation"], model=model, team_id=team_id, shared=shared, db_session=db_session
            )
            allocation_id = row.id
            allocation_ids.append(row.id)
        benchmark_ids += save_measurements(
            variant_measurements(variant, document["protocol"]), model=model, allocation_id=allocation_id,
            versions=versions, team_id=team_id, shared=shared, db_session=db_session,
        )  # fmt: skip
    return RecordedRun(model.id, esd_run_id, tuple(allocation_ids), tuple(benchmark_ids))
