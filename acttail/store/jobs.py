"""Jobs: the database is the source of truth for their state.

Transitions are compare-and-set UPDATEs (``WHERE status IN (...)``), so a cancel racing a
finishing worker has exactly one winner::

    queued --mark_running--> running --finish_job--> succeeded | failed
       \\                       \\
        +------cancel_job-------+--> cancelled   (the worker checks between stages)

``active_key`` equals ``request_hash`` while a job is queued or running and is NULL afterwards;
a unique (team_id, active_key) constraint makes "identical request while one is running returns
the running job" race-free.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import CursorResult, func, or_, select, update
from sqlalchemy.orm import Session

from acttail.store.errors import ConflictError, IdempotencyKeyReusedError, InvalidStateError, NotFoundError
from acttail.store.orm import Job, JobStatus, utcnow
from acttail.store.upsert import insert_ignore

ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)


def create_job(
    request: Mapping[str, Any],
    *,
    team_id: int,
    request_hash: str,
    db_session: Session,
    queue: str = "cpu",
    idempotency_key: str | None = None,
) -> tuple[Job, bool]:
    """Insert a queued job, or return the job this request duplicates; returns (job, created).

    Duplicates: the same Idempotency-Key for this team (any status), or the same request hash
    while a job is still queued or running. A key reused with a different request is a ConflictError.
    """
    job_id = str(uuid.uuid4())
    values: dict[str, Any] = {
        "id": job_id,
        "team_id": team_id,
        "request": dict(request),
        "request_hash": request_hash,
        "model_id": str(request["model_id"]),
        "queue": queue,
        "shared": bool(request.get("shared", False)),
        "status": JobStatus.QUEUED,
        "stage": "queued",
        "progress": 0.0,
        "attempts": 0,
        "idempotency_key": idempotency_key,
        "active_key": request_hash,
        "allocation_ids": [],
        "benchmark_ids": [],
        "created_at": utcnow(),
        "updated_at": utcnow(),
    }
    if insert_ignore(db_session, Job.__table__, values):
        return get_job(job_id, db_session=db_session), True
    conditions = [Job.active_key == request_hash]
    if idempotency_key is not None:
        conditions.append(Job.idempotency_key == idempotency_key)
    existing = db_session.scalars(select(Job).where(Job.team_id == team_id, or_(*conditions))).all()
    by_key = [job for job in existing if idempotency_key is not None and job.idempotency_key == idempotency_key]
    job = by_key[0] if by_key else (existing[0] if existing else None)
    if job is None:  # the conflicting job finished between our INSERT and SELECT: try once more
        retry_id = str(uuid.uuid4())
        if insert_ignore(db_session, Job.__table__, {**values, "id": retry_id}):
            return get_job(retry_id, db_session=db_session), True
        raise ConflictError("a concurrent identical request is being created; retry")
    if job.request_hash != request_hash:
        raise IdempotencyKeyReusedError("Idempotency-Key was already used for a different request")
    return job, False


def get_job(job_id: str, *, db_session: Session, team_id: int | None = None) -> Job:
    """The job; with ``team_id``, only that team's job (others get NotFoundError, never 403)."""
    stmt = select(Job).where(Job.id == job_id).execution_options(populate_existing=True)
    if team_id is not None:
        stmt = stmt.where(Job.team_id == team_id)
    job = db_session.scalar(stmt)
    if job is None:
        raise NotFoundError(f"no job {job_id}")
    return job


def list_jobs(
    *,
    team_id: int,
    db_session: Session,
    status: str | None = None,
    model: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[Job], int]:
    """The team's jobs, newest first, and the total matching the filters."""
    stmt = select(Job).where(Job.team_id == team_id)
    if status is not None:
        stmt = stmt.where(Job.status == status)
    if model is not None:
        stmt = stmt.where(Job.model_id == model)
    total = int(db_session.scalar(select(func.count()).select_from(stmt.subquery())) or 0)
    rows = db_session.scalars(stmt.order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset))
    return list(rows), total


def _transition(job_id: str, allowed: Iterable[JobStatus], values: dict[str, Any], *, db_session: Session) -> bool:
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.status.in_([str(s) for s in allowed]))
        .values(**values, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    result = db_session.execute(stmt)
    assert isinstance(result, CursorResult)  # an UPDATE always yields one; only it carries rowcount
    return bool(result.rowcount)


def mark_running(job_id: str, *, db_session: Session) -> Job | None:
    """Claim the job for execution; None when it must not run (cancelled, finished, or unknown).

    A job already ``running`` is claimed again: that is a redelivery after a worker died
    (acks_late), and the attempt counter says so.
    """
    ok = _transition(
        job_id,
        ACTIVE,
        {"status": JobStatus.RUNNING, "stage": "starting", "started_at": utcnow(), "attempts": Job.attempts + 1},
        db_session=db_session,
    )
    return get_job(job_id, db_session=db_session) if ok else None


def update_progress(job_id: str, stage: str, progress: float, *, db_session: Session) -> JobStatus:
    """Record (stage, fraction in [0, 1]) on a running job; returns the job's current status.

    A worker that gets back anything but RUNNING stops (the job was cancelled).
    """
    progress = min(max(float(progress), 0.0), 1.0)
    _transition(job_id, [JobStatus.RUNNING], {"stage": stage[:64], "progress": progress}, db_session=db_session)
    return job_status(job_id, db_session=db_session)


def job_status(job_id: str, *, db_session: Session) -> JobStatus:
    status = db_session.scalar(select(Job.status).where(Job.id == job_id))
    if status is None:
        raise NotFoundError(f"no job {job_id}")
    return JobStatus(status)


def is_cancelled(job_id: str, *, db_session: Session) -> bool:
    return job_status(job_id, db_session=db_session) is JobStatus.CANCELLED


def link_results(
    job_id: str,
    *,
    db_session: Session,
    model_pk: int | None = None,
    esd_run_id: int | None = None,
    allocation_ids: Iterable[int] = (),
    benchmark_ids: Iterable[int] = (),
) -> Job:
    """Attach result rows to the job (ids are merged, never duplicated)."""
    job = get_job(job_id, db_session=db_session)
    if model_pk is not None:
        job.model_pk = model_pk
    if esd_run_id is not None:
        job.esd_run_id = esd_run_id
    job.allocation_ids = sorted(set(job.allocation_ids or []) | set(allocation_ids))
    job.benchmark_ids = sorted(set(job.benchmark_ids or []) | set(benchmark_ids))
    db_session.flush()
    return job


def finish_job(job_id: str, status: JobStatus, *, db_session: Session, error: str | None = None) -> bool:
    """End a running (or queued) job as succeeded or failed; False if it already ended (e.g. cancelled)."""
    if status not in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        raise ValueError(f"finish_job takes succeeded or failed, not {status}")
    values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "active_key": None, "error": error}
    values["stage"] = "done" if status is JobStatus.SUCCEEDED else "failed"
    if status is JobStatus.SUCCEEDED:
        values["progress"] = 1.0
    return _transition(job_id, ACTIVE, values, db_session=db_session)


def mark_succeeded(job_id: str, *, db_session: Session) -> bool:
    return finish_job(job_id, JobStatus.SUCCEEDED, db_session=db_session)


def mark_failed(job_id: str, error: str, *, db_session: Session) -> bool:
    return finish_job(job_id, JobStatus.FAILED, db_session=db_session, error=error[:10_000])


def cancel_job(job_id: str, *, team_id: int, db_session: Session) -> Job:
    """Cancel a queued or running job (idempotent on cancelled; InvalidStateError once finished)."""
    job = get_job(job_id, team_id=team_id, db_session=db_session)
    values = {"status": JobStatus.CANCELLED, "stage": "cancelled", "finished_at": utcnow(), "active_key": None}
    if not _transition(job_id, ACTIVE, values, db_session=db_session):
        job = get_job(job_id, team_id=team_id, db_session=db_session)
        if job.status != JobStatus.CANCELLED:
            raise InvalidStateError(f"job {job_id} already {job.status}; only queued or running jobs can be cancelled")
    return get_job(job_id, team_id=team_id, db_session=db_session)


def delete_job(job_id: str, *, db_session: Session) -> None:
    """Remove a job that was never dispatched (the broker refused it): the client may simply retry."""
    job = db_session.get(Job, job_id)
    if job is not None:
        db_session.delete(job)
        db_session.flush()


def requeue_interrupted(*, db_session: Session, older_than: datetime | None = None) -> list[str]:
    """Embedded mode start-up: jobs left running by a dead process go back to queued; returns all queued ids."""
    stmt = update(Job).where(Job.status == JobStatus.RUNNING).values(status=JobStatus.QUEUED, stage="requeued")
    if older_than is not None:
        stmt = stmt.where(Job.updated_at < older_than)
    db_session.execute(stmt.execution_options(synchronize_session=False))
    return list(db_session.scalars(select(Job.id).where(Job.status == JobStatus.QUEUED).order_by(Job.created_at)))
