"""A pipeline run written into the results database, as it goes: the sink of every door.

``StoreSink`` is what ``acttail.pipeline.run_pipeline`` hands its results to when they are stored,
from ``acttail run`` / ``acttail evaluate`` (team ``default``) and from service jobs
(``workers.runner``, with the job's ID so the rows are linked to it). So a CLI run and a job that
measured the same thing build the same rows through the same functions: the model by fingerprint,
the ESD run of (model, estimator) reused when stored (one computation per model, serialised by
``acttail.store.locks.esd_lock``), one allocation row per allocation, and benchmark rows from
``variant_measurements``. Every write is an upsert on a natural key, so running again adds no row.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session, sessionmaker

from acttail.store.catalog import get_esd_run, get_esd_run_by_id, get_or_create_model, save_esd_run
from acttail.store.db import session_scope
from acttail.store.jobs import link_results
from acttail.store.locks import esd_lock
from acttail.store.measurements import (
    Measurement,
    perplexity_measurements,
    realised_measurement,
    save_measurements,
    speed_measurements,
    window_measurements,
    zeroshot_measurements,
)
from acttail.store.orm import Model
from acttail.store.results import save_allocation

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from acttail.allocate import Allocation
    from acttail.esd import ESDReport
    from acttail.methods import AlphaReport
    from acttail.models.base import ModelDescription
    from acttail.pipeline import VariantResult

#: A dense measurement does not depend on the sparsity mode: every run's dense rows are labelled
#: with this one, whichever mode the run used, so they meet in one row.
DENSE_MODE = "topk"


def _stores_realised(mode: str, protocol: Mapping[str, Any]) -> bool:
    """Whether a sparse perplexity gets its ``sparsity/realised`` row.

    Always in threshold mode, whose calibrated thresholds only approximate their target on new text;
    TopK meets its target by construction, so its row is stored only where a suite asks for every
    cell's (``realised_rows``: the leaderboard's column).
    """
    return mode == "threshold" or bool(protocol.get("realised_rows"))


def variant_measurements(
    variant: Mapping[str, Any], protocol: Mapping[str, Any], environment: Mapping[str, Any]
) -> list[Measurement]:
    """Benchmark rows of one evaluated variant (``VariantResult.to_dict()``) under the run's protocol.

    The dtype the model ran in (``environment``) is part of the settings: bf16 and fp32 are two measurements.
    """
    dense = variant.get("allocation") is None
    mode = DENSE_MODE if dense else str(protocol["mode"])
    calibration = None if dense else protocol.get("calibration")
    extra: dict[str, Any] = {"dtype": environment["dtype"]} if environment.get("dtype") else {}
    if calibration:
        extra["calibration"] = calibration  # threshold mode: what the thresholds saw
    scoring = protocol.get("scoring", "magnitude")
    if not dense and scoring != "magnitude":  # magnitude rows keep the settings they always had
        extra["scoring"] = scoring
    if protocol.get("suite"):  # a named benchmark suite (benchmarks/leaderboard.py) keeps its rows apart
        extra["suite"] = protocol["suite"]
    out: list[Measurement] = []
    if variant.get("perplexity"):
        out += perplexity_measurements(variant["perplexity"], mode=mode, extra=extra)
        ppl = out[-1]
        if protocol.get("window_rows"):  # per-window NLLs, for paired standard errors between rows
            out += window_measurements(ppl, variant["perplexity"].get("window_nlls") or ())
        if _stores_realised(mode, protocol) and not dense and variant.get("realised_sparsity") is not None:
            out.append(realised_measurement(ppl, variant["realised_sparsity"]))
    if variant.get("zeroshot"):
        out += zeroshot_measurements(variant["zeroshot"], mode=mode, extra=extra)
    if variant.get("speed"):
        out += speed_measurements(variant["speed"])
    return out


@dataclass
class StoreSink:
    """``acttail.pipeline.ResultSink`` over the results database (one session per write)."""

    session_factory: sessionmaker[Session]
    team_id: int
    shared: bool = False
    job_id: str | None = None  # a service job: link every row to it
    meta: Mapping[str, Any] = field(default_factory=dict)  # stored with a computed ESD run (its origin)
    model_pk: int | None = None
    esd_run_id: int | None = None
    allocation_ids: list[int] = field(default_factory=list)
    benchmark_ids: list[int] = field(default_factory=list)
    _description: ModelDescription | None = None

    def _model(self, db: Session) -> Model:
        assert self._description is not None, "model() comes first"
        return get_or_create_model(self._description, db_session=db)

    def _link(self, db: Session, **ids: Any) -> None:
        if self.job_id is not None:
            link_results(self.job_id, db_session=db, **ids)

    def model(self, description: ModelDescription) -> None:
        self._description = description
        with session_scope(self.session_factory) as db:
            self.model_pk = self._model(db).id
            self._link(db, model_pk=self.model_pk)

    def alphas(
        self, description: ModelDescription, estimator: str, compute: Callable[[], tuple[ESDReport, dict[str, Any]]],
        environment: Mapping[str, Any],
    ) -> AlphaReport:  # fmt: skip
        """The stored run of (fingerprint, estimator), else ``compute()`` stored; read back from its rows.

        Two writers racing on one model serialise on the lock (a PostgreSQL advisory lock across
        machines): the second waits, then finds the first one's run; the unique constraint on
        (model, estimator) is the backstop.
        """
        with esd_lock(self.session_factory, f"esd:{description.fingerprint}:{estimator}"):
            with session_scope(self.session_factory) as db:
                run = get_esd_run(description.fingerprint, estimator, db_session=db)
                if run is not None:
                    log.info("reusing ESD run %d (%s, %d projections)", run.id, estimator, len(run.projections))
                    self.esd_run_id = run.id
                    self._link(db, esd_run_id=run.id)
                    return _alpha_table(description, estimator, run.projections)
            report, spectra = compute()
            with session_scope(self.session_factory) as db:
                run, created = save_esd_run(
                    self._model(db), report.estimator, report.projections, elapsed_s=report.elapsed_s,
                    meta={**self.meta, "device": environment.get("device"), "versions": dict(environment)},
                    team_id=self.team_id, eigenvalues=spectra, db_session=db,
                )  # fmt: skip
                log.info("%s ESD run %d", "stored" if created else "another writer stored", run.id)
                self.esd_run_id = run.id
        with session_scope(self.session_factory) as db:
            run = get_esd_run_by_id(self.esd_run_id, db_session=db)
            self._link(db, esd_run_id=run.id)
            return _alpha_table(description, estimator, run.projections)

    def allocations(self, allocations: Sequence[Allocation]) -> list[int | None]:
        with session_scope(self.session_factory) as db:
            model = self._model(db)
            ids = [
                save_allocation(a, model=model, team_id=self.team_id, shared=self.shared, db_session=db)[0].id
                for a in allocations
            ]
            self._link(db, allocation_ids=ids)
        self.allocation_ids += ids
        return list(ids)

    def variant(
        self, variant: VariantResult, allocation_id: int | None, protocol: Mapping[str, Any],
        environment: Mapping[str, Any],
    ) -> None:  # fmt: skip
        rows = variant_measurements(variant.to_dict(), protocol, environment)
        with session_scope(self.session_factory) as db:
            ids = save_measurements(
                rows, model=self._model(db), allocation_id=allocation_id, versions=environment,
                team_id=self.team_id, shared=self.shared, db_session=db,
            )  # fmt: skip
            self._link(db, benchmark_ids=ids)
        self.benchmark_ids += ids


def _alpha_table(description: ModelDescription, estimator: str, rows: Iterable[Any]) -> AlphaReport:
    """Alphas and parameter counts as stored (NaN where the fit failed): what every door allocates from."""
    from acttail.methods import AlphaTable

    rows = list(rows)
    alphas = {row.name: (float("nan") if row.alpha is None else float(row.alpha)) for row in rows}
    counts = {row.name: int(row.param_count) for row in rows}
    return AlphaTable(description.as_dict(), estimator, alphas, counts)


def save_pipeline_result(
    document: Mapping[str, Any],
    *,
    team_id: int,
    db_session: Session,
    esd_report: Any | None = None,
    meta: Mapping[str, Any] | None = None,
    shared: bool = False,
) -> list[int]:
    """Upsert a result document (``PipelineResult.to_dict()``) a benchmark script assembled itself.

    The rows ``StoreSink`` would have written for the same variants (``variant_measurements``, the
    document's ``versions`` as the environment); ``esd_report`` is stored as the model's ESD run
    unless one exists. Returns the benchmark row IDs.
    """
    if document.get("format") != "acttail.pipeline_result":
        raise ValueError(f"not a pipeline result document (format {document.get('format')!r})")
    model = get_or_create_model(document["model"], db_session=db_session)
    versions = dict(document.get("versions") or {})
    if esd_report is not None:
        save_esd_run(
            model, esd_report.estimator, esd_report.projections, elapsed_s=esd_report.elapsed_s,
            meta={**dict(meta or {}), "device": versions.get("device"), "versions": versions}, team_id=team_id,
            db_session=db_session,
        )  # fmt: skip
    ids: list[int] = []
    for variant in document["variants"]:
        allocation_id = None
        if variant.get("allocation") is not None:
            allocation_id = save_allocation(
                variant["allocation"], model=model, team_id=team_id, shared=shared, db_session=db_session
            )[0].id
        ids += save_measurements(
            variant_measurements(variant, document["protocol"], versions), model=model, allocation_id=allocation_id,
            versions=versions, team_id=team_id, shared=shared, db_session=db_session,
        )  # fmt: skip
    return ids
