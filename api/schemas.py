"""Response schemas (request schemas: acttail.store.requests.JobRequest, shared with the workers)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, Field, field_serializer

from acttail.store.catalog import is_verified
from acttail.store.orm import AllocationRow, Benchmark, EsdProjection, EsdRun, Job, Model
from acttail.store.requests import JobRequest

__all__ = ["JobRequest"]

T = TypeVar("T")
MAX_PAGE = 200
MAX_ID = 2**31 - 1  # integer primary keys


def _utc(value: datetime | None) -> datetime | None:
    # SQLite hands datetimes back naive; every stored time is UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


class _Out(BaseModel):
    @field_serializer("*", when_used="json", check_fields=False)
    def _times(self, value: Any) -> Any:
        return _utc(value) if isinstance(value, datetime) else value


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int
    next_offset: int | None = Field(description="offset of the next page, or null on the last page")

    @classmethod
    def of(cls, items: list[T], total: int, limit: int, offset: int) -> Page[T]:
        nxt = offset + len(items)
        return cls(items=items, total=total, limit=limit, offset=offset, next_offset=nxt if nxt < total else None)


class JobCreated(BaseModel):
    id: str
    url: str
    status: str
    created: bool = Field(description="false when an identical running job or the Idempotency-Key matched")
    restarted: bool = Field(False, description="true when the matched job was dead (failed or stranded) and runs again")


class JobLinks(BaseModel):
    model: str | None = None
    alphas: str | None = None
    esd_run_id: int | None = None
    allocations: list[str] = []
    benchmarks: str | None = None


class JobOut(_Out):
    id: str
    url: str
    status: str
    stage: str
    progress: float
    error: str | None
    model_id: str
    queue: str
    shared: bool
    attempts: int
    dispatches: int = Field(description="times the job was handed to the broker (the reaper adds one per recovery)")
    heartbeat_at: datetime | None = Field(description="last heartbeat of the worker running it")
    request: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    allocation_ids: list[int]
    benchmark_ids: list[int]
    links: JobLinks

    @classmethod
    def of(cls, job: Job, model: Model | None = None) -> JobOut:
        estimator = job.request.get("estimator", "ks")
        links = JobLinks(
            model=model.model_id if model is not None else None,
            # By fingerprint: unambiguous, and a local-path model ID would not make a clean URL.
            alphas=f"/v1/models/{model.fingerprint}/alphas?estimator={estimator}" if model is not None else None,
            esd_run_id=job.esd_run_id,
            allocations=[f"/v1/allocations/{i}" for i in job.allocation_ids or []],
            benchmarks=f"/v1/benchmarks?job={job.id}" if job.benchmark_ids else None,
        )
        return cls(
            id=job.id, url=f"/v1/jobs/{job.id}", status=job.status, stage=job.stage, progress=job.progress,
            error=job.error, model_id=job.model_id, queue=job.queue, shared=job.shared, attempts=job.attempts,
            dispatches=job.dispatches, heartbeat_at=job.heartbeat_at,
            request=job.request, created_at=job.created_at, started_at=job.started_at,
            finished_at=job.finished_at, allocation_ids=list(job.allocation_ids or []),
            benchmark_ids=list(job.benchmark_ids or []), links=links,
        )  # fmt: skip


class ModelOut(_Out):
    model_id: str
    fingerprint: str
    source: str
    revision: str | None
    architecture: str
    num_layers: int
    projection_params: int
    created_at: datetime

    @classmethod
    def of(cls, model: Model) -> ModelOut:
        return cls.model_validate(model, from_attributes=True)


class ProjectionOut(BaseModel):
    name: str
    layer: int
    kind: str
    d_out: int
    d_in: int
    param_count: int
    alpha: float | None
    xmin: float | None
    ks_distance: float | None
    num_tail: int | None
    spectral_norm: float | None
    log_frobenius_norm: float | None
    stable_rank: float | None
    alpha_weighted: float | None

    @classmethod
    def of(cls, row: EsdProjection) -> ProjectionOut:
        return cls.model_validate(row, from_attributes=True)


class EsdRunOut(_Out):
    id: int
    estimator: str
    elapsed_s: float
    meta: dict[str, Any]
    created_at: datetime


class AlphasOut(BaseModel):
    model: ModelOut
    run: EsdRunOut
    alphas: dict[str, float | None]
    projections: list[ProjectionOut]

    @classmethod
    def of(cls, run: EsdRun) -> AlphasOut:
        projections = [ProjectionOut.of(p) for p in run.projections]
        return cls(
            model=ModelOut.of(run.model),
            run=EsdRunOut.model_validate(run, from_attributes=True),
            alphas={p.name: p.alpha for p in projections},
            projections=projections,
        )


class AllocationSummary(_Out):
    id: int
    url: str
    model_id: str = Field(
        description="the model's ID; for weights no job has loaded yet (model_verified false), the uploader's claim"
    )
    model_verified: bool = Field(description="false when only an upload names this fingerprint so far")
    fingerprint: str
    method: str
    target: float
    estimator: str
    params: dict[str, Any]
    shared: bool
    own: bool = Field(description="true when the caller's team wrote it")
    created_at: datetime

    @classmethod
    def of(cls, row: AllocationRow, team_id: int) -> AllocationSummary:
        verified = is_verified(row.model)
        model_id = row.model.model_id if verified else str(row.document.get("model_id", ""))
        return cls(
            id=row.id, url=f"/v1/allocations/{row.id}", model_id=model_id, model_verified=verified,
            fingerprint=row.model.fingerprint, method=row.method, target=row.target, estimator=row.estimator,
            params=row.params, shared=row.shared, own=row.team_id == team_id, created_at=row.created_at,
        )  # fmt: skip


class AllocationCreated(BaseModel):
    id: int
    url: str
    created: bool


class BenchmarkOut(_Out):
    id: int
    model_id: str
    fingerprint: str
    allocation_id: int | None
    method: str | None = Field(description="allocation method; null for the dense model")
    target: float | None = Field(description="allocation target sparsity; null for the dense model")
    kind: str
    metric: str
    value: float
    settings: dict[str, Any]
    versions: dict[str, Any]
    shared: bool
    own: bool
    created_at: datetime

    @classmethod
    def of(cls, row: Benchmark, team_id: int) -> BenchmarkOut:
        return cls(
            id=row.id, model_id=row.model.model_id, fingerprint=row.model.fingerprint, allocation_id=row.allocation_id,
            method=row.allocation.method if row.allocation is not None else None,
            target=row.allocation.target if row.allocation is not None else None,
            kind=row.kind, metric=row.metric, value=row.value, settings=row.settings, versions=row.versions,
            shared=row.shared, own=row.team_id == team_id, created_at=row.created_at,
        )  # fmt: skip


class Health(BaseModel):
    status: str
    checks: dict[str, str] = {}
