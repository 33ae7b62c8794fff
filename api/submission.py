"""Submitting a job, shared by ``POST /v1/jobs`` and the dashboard's form: validate, store, enqueue."""

from __future__ import annotations

from typing import NamedTuple

from sqlalchemy.orm import Session

from acttail.settings import Settings
from acttail.store import jobs
from acttail.store.orm import Job
from acttail.store.requests import JobRequest
from api.dispatch import BrokerUnavailableError, JobDispatcher
from api.reaper import restart_if_dead
from api.validation import check_model_id


class Submitted(NamedTuple):
    job: Job
    created: bool  # a new job row
    restarted: bool = False  # the request's existing job was dead and runs again


def submit(
    request: JobRequest,
    *,
    team_id: int,
    db_session: Session,
    settings: Settings,
    dispatcher: JobDispatcher,
    idempotency_key: str | None = None,
) -> Submitted:
    """Store and enqueue the job. A duplicate (same request while one is queued or running, or a
    repeated Idempotency-Key) returns the existing job, not enqueued again, unless that job is
    dead (failed, or stranded: ``acttail.store.jobs``): then it is restarted.

    If the broker is down the new row is deleted again and BrokerUnavailableError propagates
    (503): nothing was queued, the client retries later.
    """
    check_model_id(request.model_id, settings.model_roots)
    request = request.model_copy(update={"queue": request.queue or settings.default_queue})
    job, created = jobs.create_job(
        request.model_dump(mode="json"),
        team_id=team_id,
        request_hash=request.request_hash(),
        queue=request.queue or settings.default_queue,
        idempotency_key=idempotency_key,
        db_session=db_session,
    )
    db_session.commit()  # the worker must see the row before it gets the message
    if not created:
        restarted = restart_if_dead(job, db_session=db_session, dispatcher=dispatcher, settings=settings)
        return Submitted(jobs.get_job(job.id, db_session=db_session) if restarted else job, False, restarted)
    try:
        dispatcher.dispatch(job.id, job.queue)
    except BrokerUnavailableError:
        jobs.delete_job(job.id, db_session=db_session)
        db_session.commit()
        raise
    return Submitted(job, True)
