"""Allocations and benchmark results: written by a team, visible to it and (if shared) to all."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.orm import Session

from acttail.store.catalog import UNVERIFIED_SOURCE
from acttail.store.errors import ConflictError, NotFoundError
from acttail.store.orm import AllocationRow, Benchmark, Job, Model, utcnow
from acttail.store.upsert import canonical_hash, insert_for, insert_ignore

TARGET_TOLERANCE = 1e-9


def visible_to(entity: Any, team_id: int) -> Any:
    """SQL condition: the row is the team's own or shared."""
    return or_(entity.team_id == team_id, entity.shared.is_(True))


def _document(allocation: Any) -> dict[str, Any]:
    return dict(allocation.to_dict() if hasattr(allocation, "to_dict") else allocation)


def save_allocation(
    allocation: Any, *, model: Model, team_id: int, db_session: Session, shared: bool = False
) -> tuple[AllocationRow, bool]:
    """Upsert an allocation (an acttail.allocate.Allocation or its validated dict); returns (row, created).

    The caller validates the document (``Allocation.from_dict``); this layer does not import the
    science core. Saving the same (model, method, target, params, estimator) twice for a team
    keeps the first document; asking for ``shared=True`` later publishes the existing row.
    """
    doc = _document(allocation)
    params = dict(doc.get("params") or {})
    key = {
        "model_pk": model.id,
        "method": str(doc["method"]),
        "target": float(doc["target"]),
        "params_hash": canonical_hash(params),
        "estimator": doc.get("estimator") or "",
        "team_id": team_id,
    }
    created = insert_ignore(
        db_session,
        AllocationRow.__table__,
        {**key, "params": params, "document": doc, "shared": shared, "created_at": utcnow()},
    )
    row = db_session.scalar(select(AllocationRow).where(*(getattr(AllocationRow, k) == v for k, v in key.items())))
    assert row is not None
    if shared and not row.shared:
        row.shared = True
        db_session.flush()
    return row, created


def get_allocation(allocation_id: int, *, team_id: int, db_session: Session) -> AllocationRow:
    row = db_session.scalar(
        select(AllocationRow).where(AllocationRow.id == allocation_id, visible_to(AllocationRow, team_id))
    )
    if row is None:
        raise NotFoundError(f"no allocation {allocation_id}")
    return row


def delete_allocation(allocation_id: int, *, team_id: int, db_session: Session) -> None:
    """Delete the team's own allocation. NotFoundError for any other (shared ones included);
    ConflictError while a benchmark or one of the team's jobs refers to it (nothing else is lost)."""
    row = db_session.scalar(
        select(AllocationRow).where(AllocationRow.id == allocation_id, AllocationRow.team_id == team_id)
    )
    if row is None:
        raise NotFoundError(f"no allocation {allocation_id} of yours")
    measured = int(
        db_session.scalar(select(func.count()).select_from(Benchmark).where(Benchmark.allocation_id == row.id)) or 0
    )
    if measured:
        raise ConflictError(f"allocation {allocation_id} has {measured} benchmark result(s); it is kept")
    jobs = db_session.scalars(select(Job).where(Job.team_id == team_id, Job.model_pk == row.model_pk))
    referring = sorted(job.id for job in jobs if row.id in (job.allocation_ids or []))
    if referring:
        raise ConflictError(f"allocation {allocation_id} is a result of job {referring[0]}; it is kept")
    db_session.delete(row)
    db_session.flush()


def _model_filter(stmt: Select[Any], model: str | None, *, claims: bool = False) -> Select[Any]:
    """Rows of the model with this ID or fingerprint; with ``claims`` (allocations), also those
    whose own document claims that ID for weights no job loaded yet (``catalog.claim_model``)."""
    if model is None:
        return stmt
    named = [Model.model_id == model, Model.fingerprint == model]
    if claims:
        named.append(and_(Model.source == UNVERIFIED_SOURCE, AllocationRow.document["model_id"].as_string() == model))
    return stmt.join(Model).where(or_(*named))


def list_allocations(
    *,
    team_id: int,
    db_session: Session,
    model: str | None = None,
    target: float | None = None,
    method: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[AllocationRow], int]:
    """Visible allocations, newest first, and the total count matching the filters."""
    stmt = _model_filter(select(AllocationRow).where(visible_to(AllocationRow, team_id)), model, claims=True)
    if target is not None:
        stmt = stmt.where(func.abs(AllocationRow.target - target) < TARGET_TOLERANCE)
    if method is not None:
        stmt = stmt.where(AllocationRow.method == method)
    total = int(db_session.scalar(select(func.count()).select_from(stmt.subquery())) or 0)
    rows = db_session.scalars(stmt.order_by(AllocationRow.id.desc()).limit(limit).offset(offset))
    return list(rows), total


def save_benchmark(
    *,
    model: Model,
    kind: str,
    metric: str,
    value: float,
    team_id: int,
    db_session: Session,
    settings: Mapping[str, Any] | None = None,
    versions: Mapping[str, Any] | None = None,
    allocation_id: int | None = None,
    shared: bool = False,
) -> tuple[Benchmark, bool]:
    """Upsert one measured number; returns (row, created).

    The natural key is (model, kind, metric, team, hash of {allocation_id, settings}); measuring
    the same thing again replaces value and versions (a re-run after a crash never duplicates).
    """
    settings = dict(settings or {})
    key_hash = canonical_hash({"allocation_id": allocation_id, "settings": settings})
    key = {"model_pk": model.id, "kind": kind, "metric": metric, "key_hash": key_hash, "team_id": team_id}
    existing_id = db_session.scalar(select(Benchmark.id).where(*(getattr(Benchmark, k) == v for k, v in key.items())))
    values = {
        **key,
        "allocation_id": allocation_id,
        "value": float(value),
        "settings": settings,
        "versions": dict(versions or {}),
        "shared": shared,
        "created_at": utcnow(),
    }
    stmt = insert_for(db_session, Benchmark.__table__).values(**values)
    stmt = stmt.on_conflict_do_update(
        index_elements=list(key),
        set_={"value": stmt.excluded.value, "versions": stmt.excluded.versions, "created_at": stmt.excluded.created_at},
    )
    db_session.execute(stmt)
    row = db_session.scalar(
        select(Benchmark)
        .where(*(getattr(Benchmark, k) == v for k, v in key.items()))
        .execution_options(populate_existing=True)
    )
    assert row is not None
    if shared and not row.shared:
        row.shared = True
        db_session.flush()
    return row, existing_id is None


def get_benchmark(benchmark_id: int, *, team_id: int, db_session: Session) -> Benchmark:
    row = db_session.scalar(select(Benchmark).where(Benchmark.id == benchmark_id, visible_to(Benchmark, team_id)))
    if row is None:
        raise NotFoundError(f"no benchmark {benchmark_id}")
    return row


def list_benchmarks(
    *,
    team_id: int,
    db_session: Session,
    model: str | None = None,
    kind: str | None = None,
    metric: str | None = None,
    allocation_id: int | None = None,
    ids: Sequence[int] | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[Benchmark], int]:
    """Visible benchmark rows, newest first, and the total count matching the filters (``ids``: a job's rows)."""
    stmt = _model_filter(select(Benchmark).where(visible_to(Benchmark, team_id)), model)
    if ids is not None:
        stmt = stmt.where(Benchmark.id.in_(list(ids)))
    for column, value in ((Benchmark.kind, kind), (Benchmark.metric, metric), (Benchmark.allocation_id, allocation_id)):
        if value is not None:
            stmt = stmt.where(column == value)
    total = int(db_session.scalar(select(func.count()).select_from(stmt.subquery())) or 0)
    rows = db_session.scalars(stmt.order_by(Benchmark.id.desc()).limit(limit).offset(offset))
    return list(rows), total
