"""Jobs: the database is the source of truth for their state.

Transitions are compare-and-set UPDATEs (``WHERE status IN (...)``), so a cancel racing a
finishing worker has exactly one winner::

    queued --mark_running--> running --finish_job--> succeeded | failed
       \\                       \\
        +------cancel_job-------+--> cancelled   (the worker checks between stages)

``active_key`` equals ``request_hash`` while a job is queued or running and is NULL afterwards;
a unique (team_id, active_key) constraint makes "identical request while one is running returns
the running job" race-free.

Liveness (``api.reaper``, ``workers.heartbeat``). A worker claims a job with a :class:`Claim`
(its delivery's ID) and beats ``heartbeat_at`` while it runs. A job is **dead** when it is

* ``failed``;
* ``running`` and its last beat (else its start) is older than ``job_stale_after_s``: the process
  running it died (a SIGKILLed worker, a lost machine);
* ``queued``, handed to the broker more than ``job_stale_after_s`` ago, and the broker no longer
  holds its message (Redis restarted without persistence, or was flushed).

The reaper re-enqueues dead running and queued jobs (``requeue_dead``; after
``job_max_attempts`` dispatches it fails them instead, ``give_up``); resubmitting the request of
a dead job, failed ones included, restarts it with a fresh budget. Every such transition is a
compare-and-set on the state the caller saw, so several API processes never enqueue one job twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, CursorResult, and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
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
        "dispatched_at": utcnow(),  # the caller hands it to the broker right after the commit
        "dispatches": 1,
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
    return _changed(db_session, stmt)


def _changed(db_session: Session, stmt: Any) -> bool:
    """Execute an UPDATE; True if it changed a row (the compare-and-set won)."""
    result = db_session.execute(stmt)
    assert isinstance(result, CursorResult)  # an UPDATE always yields one; only it carries rowcount
    return bool(result.rowcount)


@dataclass(frozen=True)
class Claim:
    """Who runs a job: a delivery's ID (the Celery task ID, the same across redeliveries and retries
    of one message; a new one for every dispatch) and how long its heartbeat may be silent."""

    token: str
    stale_after_s: float


def mark_running(job_id: str, *, db_session: Session, claim: Claim | None = None) -> Job | None:
    """Claim the job for execution; None when it must not run (cancelled, finished, unknown, or
    another live delivery runs it).

    A queued job is always claimed. A ``running`` one is claimed again by the same delivery (a dead
    pool child's message redelivered, a Celery retry) or when its heartbeat is stale (its worker
    died); a second message for a job another worker is running (a reaper or broker duplicate) is
    refused. The attempt counter counts claims. Without ``claim`` any active job is claimed.
    """
    now = utcnow()
    values: dict[str, Any] = {
        "status": JobStatus.RUNNING, "stage": "starting", "started_at": now, "attempts": Job.attempts + 1,
        "heartbeat_at": now, "claimed_by": None if claim is None else claim.token[:64],
    }  # fmt: skip
    condition: ColumnElement[bool] = Job.status.in_([str(s) for s in ACTIVE])
    if claim is not None:
        stale = now - timedelta(seconds=claim.stale_after_s)
        condition = or_(
            Job.status == JobStatus.QUEUED,
            and_(Job.status == JobStatus.RUNNING, or_(Job.claimed_by == claim.token[:64], _last_beat() < stale)),
        )
    stmt = (
        update(Job)
        .where(Job.id == job_id, condition)
        .values(**values, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    ok = _changed(db_session, stmt)
    return get_job(job_id, db_session=db_session) if ok else None


def beat(job_id: str, token: str, *, db_session: Session) -> bool:
    """Record that the delivery ``token`` still runs the job; False once it no longer owns it."""
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING, Job.claimed_by == token[:64])
        .values(heartbeat_at=utcnow(), updated_at=Job.updated_at)  # a beat is not a change of state
        .execution_options(synchronize_session=False)
    )
    return _changed(db_session, stmt)


def _last_beat() -> ColumnElement[Any]:
    return func.coalesce(Job.heartbeat_at, Job.started_at, Job.updated_at)


def _dead(status: str, stale_before: datetime) -> ColumnElement[bool]:
    """The SQL form of "dead" for a job in ``status`` (the broker check of queued jobs is the caller's)."""
    if status == JobStatus.RUNNING:
        return and_(Job.status == JobStatus.RUNNING, _last_beat() < stale_before)
    if status == JobStatus.QUEUED:
        return and_(Job.status == JobStatus.QUEUED, func.coalesce(Job.dispatched_at, Job.created_at) < stale_before)
    if status == JobStatus.FAILED:
        return Job.status == JobStatus.FAILED
    raise ValueError(f"a {status} job is never dead")


def stale_before(stale_after_s: float, now: datetime | None = None) -> datetime:
    return (now or utcnow()) - timedelta(seconds=stale_after_s)


def dead_candidates(status: JobStatus, *, stale_before: datetime, db_session: Session, limit: int = 100) -> list[Job]:
    """Running jobs without a recent heartbeat, or queued jobs dispatched before ``stale_before``
    (dead unless the broker still holds them), oldest first."""
    stmt = select(Job).where(_dead(status, stale_before)).order_by(Job.updated_at, Job.id).limit(limit)
    return list(db_session.scalars(stmt.execution_options(populate_existing=True)))


def requeue_dead(job: Job, *, stale_before: datetime, db_session: Session, fresh_budget: bool = False) -> bool:
    """Put a dead job back to ``queued`` for one more dispatch; False if it is no longer as seen.

    Compare-and-set on (status, dispatches) as seen plus the dead predicate, so of several API
    processes exactly one wins and publishes. ``fresh_budget`` (a user's resubmission) restarts the
    dispatch count at 1; the reaper adds one. False also when reviving a failed job would collide
    with an identical active job (unique active key).
    """
    values: dict[str, Any] = {
        "status": JobStatus.QUEUED, "stage": "requeued", "progress": 0.0, "error": None, "finished_at": None,
        "active_key": job.request_hash, "claimed_by": None, "heartbeat_at": None, "dispatched_at": utcnow(),
        "dispatches": 1 if fresh_budget else Job.dispatches + 1, "updated_at": utcnow(),
    }  # fmt: skip
    try:
        with db_session.begin_nested():
            return _settle_dead(job, values, stale_before=stale_before, db_session=db_session)
    except IntegrityError:  # an identical request is queued or running already
        return False


def _settle_dead(job: Job, values: dict[str, Any], *, stale_before: datetime, db_session: Session) -> bool:
    """Compare-and-set a dead job: still as seen (status, dispatches) and still dead."""
    stmt = (
        update(Job)
        .where(Job.id == job.id, Job.dispatches == job.dispatches, _dead(job.status, stale_before))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return _changed(db_session, stmt)


def uncount_dispatch(job_id: str, dispatches: int, *, db_session: Session) -> bool:
    """The broker refused the message of dispatch number ``dispatches``: it does not count against
    the budget (the job stays queued, and the reaper publishes it once the broker is back)."""
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED, Job.dispatches == dispatches, Job.dispatches > 1)
        .values(dispatches=Job.dispatches - 1)
        .execution_options(synchronize_session=False)
    )
    return _changed(db_session, stmt)


def give_up(job: Job, reason: str, *, stale_before: datetime, db_session: Session) -> bool:
    """Fail a dead job that used up its dispatches (compare-and-set like :func:`requeue_dead`)."""
    values: dict[str, Any] = {
        "status": JobStatus.FAILED, "stage": "failed", "error": reason[:10_000], "finished_at": utcnow(),
        "active_key": None, "updated_at": utcnow(),
    }  # fmt: skip
    return _settle_dead(job, values, stale_before=stale_before, db_session=db_session)


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
