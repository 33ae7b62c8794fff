"""Models and ESD runs: facts about weights, keyed by fingerprint.

An ESD run is computed once per (weights, estimator) and reused by every team's jobs, but a team
sees a model, and so its ESD runs, only if it worked on it: its own job, or an allocation or
benchmark it can see (own or shared). Model IDs can be private (local paths, unreleased
fine-tunes), so another team's private job never shows its model (``visible_to_team``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Select, exists, insert, or_, select, update
from sqlalchemy.orm import Session, selectinload

from acttail.store.errors import NotFoundError
from acttail.store.orm import AllocationRow, Benchmark, EsdProjection, EsdRun, Job, Model, utcnow
from acttail.store.spectra import encode_eigenvalues
from acttail.store.upsert import insert_ignore

UNVERIFIED_SOURCE = "upload"  # a placeholder row: only uploads named these weights so far
MODEL_FIELDS = ("model_id", "source", "revision", "fingerprint", "architecture", "num_layers", "projection_params")
PROJECTION_FIELDS = (
    "name", "layer", "kind", "d_out", "d_in", "param_count", "alpha", "xmin", "ks_distance", "num_tail",
    "spectral_norm", "log_frobenius_norm", "stable_rank", "alpha_weighted",
)  # fmt: skip


def _as_mapping(obj: Any) -> Mapping[str, Any]:
    if isinstance(obj, Mapping):
        return obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    return {name: getattr(obj, name) for name in dir(obj) if not name.startswith("_")}


def get_or_create_model(description: Any, *, db_session: Session) -> Model:
    """The model row for a ModelDescription (or mapping with its fields); race-safe upsert on fingerprint.

    The description comes from loading the weights, so it is the truth: a placeholder row an
    upload created for these weights (``claim_model``) takes its facts now, while a row that
    already describes real weights is never changed.
    """
    data = _as_mapping(description)
    values = {name: data.get(name) for name in MODEL_FIELDS}
    if not values["fingerprint"]:
        raise ValueError("a model needs a non-empty fingerprint to be stored")
    if values["source"] == UNVERIFIED_SOURCE:
        raise ValueError(f"source {UNVERIFIED_SOURCE!r} is reserved for upload placeholders (claim_model)")
    values["architecture"] = values["architecture"] or ""
    values["num_layers"] = int(values["num_layers"] or 0)
    values["projection_params"] = int(values["projection_params"] or 0)
    if not insert_ignore(db_session, Model.__table__, {**values, "created_at": utcnow()}):
        db_session.execute(
            update(Model)
            .where(Model.fingerprint == values["fingerprint"], Model.source == UNVERIFIED_SOURCE)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
    model = db_session.scalar(
        select(Model).where(Model.fingerprint == values["fingerprint"]).execution_options(populate_existing=True)
    )
    assert model is not None  # inserted above or by a concurrent writer whose commit we now see
    return model


def claim_model(fingerprint: str, *, db_session: Session) -> Model:
    """The row for ``fingerprint``, creating a placeholder that names nothing when no weights with
    that fingerprint were ever loaded. An upload only *claims* which model its fingerprint is: the
    claim stays in the uploader's document, never in this shared row, so no team can rename or
    redefine a model another team's data or job refers to. The first job that loads the weights
    fills the placeholder in (``get_or_create_model``)."""
    placeholder = {
        "model_id": fingerprint, "source": UNVERIFIED_SOURCE, "revision": None, "fingerprint": fingerprint,
        "architecture": "", "num_layers": 0, "projection_params": 0, "created_at": utcnow(),
    }  # fmt: skip
    insert_ignore(db_session, Model.__table__, placeholder)
    model = db_session.scalar(select(Model).where(Model.fingerprint == fingerprint))
    assert model is not None
    return model


def is_verified(model: Model) -> bool:
    """True when the row describes loaded weights, False for an upload's placeholder."""
    return model.source != UNVERIFIED_SOURCE


def get_model_by_fingerprint(fingerprint: str, *, db_session: Session) -> Model | None:
    return db_session.scalar(select(Model).where(Model.fingerprint == fingerprint))


def find_models(model: str, *, db_session: Session) -> list[Model]:
    """Rows whose model_id or fingerprint equals ``model`` (one ID can name several revisions)."""
    return list(
        db_session.scalars(
            select(Model).where(or_(Model.model_id == model, Model.fingerprint == model)).order_by(Model.id.desc())
        )
    )


def _visible(column_team: Any, column_shared: Any, team_id: int) -> Any:
    return or_(column_team == team_id, column_shared.is_(True))


def visible_to_team(team_id: int) -> Any:
    """SQL condition on ``Model``: the team has its own job on the model, or an allocation or
    benchmark of it the team can see (own or shared). A shared ESD run alone does not count: it is
    a cache, and listing it would show every team which models the others analysed."""
    return or_(
        exists().where(Job.model_pk == Model.id, Job.team_id == team_id),
        exists().where(
            AllocationRow.model_pk == Model.id, _visible(AllocationRow.team_id, AllocationRow.shared, team_id)
        ),
        exists().where(Benchmark.model_pk == Model.id, _visible(Benchmark.team_id, Benchmark.shared, team_id)),
    )


def list_models(*, team_id: int, db_session: Session, limit: int = 100, offset: int = 0) -> list[Model]:
    """Models the team may see (``visible_to_team``), by model ID: ``GET /v1/models`` and the dashboard."""
    stmt = select(Model).where(visible_to_team(team_id)).order_by(Model.model_id, Model.id).limit(limit).offset(offset)
    return list(db_session.scalars(stmt))


def get_team_model(fingerprint: str, *, team_id: int, db_session: Session) -> Model:
    """The model with this fingerprint if the team may see it (``visible_to_team``), else NotFoundError."""
    model = db_session.scalar(select(Model).where(Model.fingerprint == fingerprint, visible_to_team(team_id)))
    if model is None:
        raise NotFoundError(f"no model with fingerprint {fingerprint!r}")
    return model


def list_esd_runs(model: Model, *, db_session: Session) -> list[EsdRun]:
    """The model's ESD runs (one per estimator), newest first, without their projections."""
    stmt = select(EsdRun).where(EsdRun.model_pk == model.id).order_by(EsdRun.created_at.desc(), EsdRun.id.desc())
    return list(db_session.scalars(stmt))


def _projection_values(item: Any) -> dict[str, Any]:
    data = dict(_as_mapping(item))
    if ("d_out" not in data or "d_in" not in data) and "shape" in data:
        data["d_out"], data["d_in"] = (int(x) for x in data["shape"])
    if "param_count" not in data or data["param_count"] is None:
        data["param_count"] = int(data["d_out"]) * int(data["d_in"])
    kind = data.get("kind")
    data["kind"] = str(getattr(kind, "value", kind))
    values = {name: data.get(name) for name in PROJECTION_FIELDS}
    for name in (
        "alpha",
        "xmin",
        "ks_distance",
        "spectral_norm",
        "log_frobenius_norm",
        "stable_rank",
        "alpha_weighted",
    ):
        value = values[name]
        # NaN/inf do not survive SQLite (stored as NULL) and are not JSON; store NULL everywhere.
        values[name] = (
            None if value is None or value != value or value in (float("inf"), float("-inf")) else float(value)
        )
    return values


def save_esd_run(
    model: Model,
    estimator: str,
    projections: Iterable[Any],
    *,
    db_session: Session,
    elapsed_s: float = 0.0,
    meta: Mapping[str, Any] | None = None,
    team_id: int | None = None,
    eigenvalues: Mapping[str, Any] | None = None,
) -> tuple[EsdRun, bool]:
    """Store one ESD run (one row per projection) unless (model, estimator) already has one.

    Returns (run, created). A concurrent writer that loses the race gets the winner's run; its own
    numbers are discarded (same weights and estimator give the same alphas, up to float noise).
    ``projections`` are acttail.esd.ProjectionESD objects or mappings with PROJECTION_FIELDS
    (``shape`` = (d_out, d_in) is accepted in place of d_out/d_in). ``eigenvalues`` maps
    projection names to all min(d_out, d_in) eigenvalues of their WᵀW (stored as float32 bytes,
    ``acttail.store.spectra``), for the ESD plot; projections without an entry store none.
    """
    rows = [_projection_values(item) for item in projections]
    spectra = dict(eigenvalues or {})
    unknown = sorted(set(spectra) - {row["name"] for row in rows})
    if unknown:
        raise ValueError(f"eigenvalues given for projections not in the run: {', '.join(unknown[:3])}")
    for row in rows:
        values = spectra.get(row["name"])
        expected = min(int(row["d_out"]), int(row["d_in"]))
        row["eigenvalues"] = None if values is None else encode_eigenvalues(values, expected=expected)
    created = insert_ignore(
        db_session,
        EsdRun.__table__,
        {
            "model_pk": model.id, "estimator": estimator, "elapsed_s": float(elapsed_s), "meta": dict(meta or {}),
            "team_id": team_id, "shared": True, "created_at": utcnow(),
        },
    )  # fmt: skip
    run = db_session.scalar(select(EsdRun).where(EsdRun.model_pk == model.id, EsdRun.estimator == estimator))
    assert run is not None
    if created and rows:
        # ORM-enabled bulk insert: keys are attribute names (xmin is stored in column x_min).
        db_session.execute(insert(EsdProjection), [{**row, "run_id": run.id} for row in rows])
        db_session.flush()
    return run, created


def _run_query() -> Select[EsdRun]:
    return select(EsdRun).options(selectinload(EsdRun.projections))


def get_esd_run(fingerprint: str, estimator: str, *, db_session: Session) -> EsdRun | None:
    """The ESD run of the weights with this fingerprint and estimator, with its projections, or None."""
    stmt = _run_query().join(Model).where(Model.fingerprint == fingerprint, EsdRun.estimator == estimator)
    return db_session.scalar(stmt)


def get_esd_run_by_id(run_id: int, *, db_session: Session) -> EsdRun:
    run = db_session.scalar(_run_query().where(EsdRun.id == run_id))
    if run is None:
        raise NotFoundError(f"no ESD run {run_id}")
    return run


def projection_eigenvalues(run_id: int, name: str, *, db_session: Session) -> bytes | None:
    """The stored eigenvalue bytes of one projection of a run (``acttail.store.spectra``), or None."""
    stmt = select(EsdProjection.eigenvalues).where(EsdProjection.run_id == run_id, EsdProjection.name == name)
    return db_session.scalar(stmt)


def projections_with_eigenvalues(run_id: int, *, db_session: Session) -> list[str]:
    """Names of the run's projections whose eigenvalues are stored, in the run's order."""
    stmt = (
        select(EsdProjection.name)
        .where(EsdProjection.run_id == run_id, EsdProjection.eigenvalues.is_not(None))
        .order_by(EsdProjection.id)
    )
    return list(db_session.scalars(stmt))


def latest_esd_run(model: str, *, team_id: int, db_session: Session, estimator: str | None = None) -> EsdRun:
    """The newest ESD run of a model named by ID or fingerprint (optionally for one estimator),
    among the models the team may see (``visible_to_team``). A model the team may not see gets
    the same NotFoundError as one that does not exist, so its ID does not leak."""
    named = or_(Model.model_id == model, Model.fingerprint == model)
    stmt = _run_query().join(Model).where(named, visible_to_team(team_id))
    if estimator is not None:
        stmt = stmt.where(EsdRun.estimator == estimator)
    run = db_session.scalar(stmt.order_by(EsdRun.created_at.desc(), EsdRun.id.desc()).limit(1))
    if run is None:
        suffix = f" with estimator {estimator!r}" if estimator else ""
        raise NotFoundError(f"no ESD run for model {model!r}{suffix}")
    return run
