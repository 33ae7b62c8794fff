"""POST/GET/DELETE /v1/jobs: submit, poll, list and cancel jobs."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Header, Path, Query, Response, status
from sqlalchemy.orm import Session

from acttail.store import jobs
from acttail.store.orm import Job, JobStatus
from acttail.store.requests import JobRequest
from api.deps import DispatcherDep, SessionDep, SettingsDep, TeamDep
from api.schemas import MAX_PAGE, JobCreated, JobOut, Page
from api.submission import submit

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$",
           description="Retrying with the same key returns the same job instead of creating another."),
]  # fmt: skip
JobId = Annotated[str, Path(min_length=1, max_length=36)]
StatusFilter = Literal["queued", "running", "succeeded", "failed", "cancelled"]


def _out(job: Job, db_session: Session) -> JobOut:
    return JobOut.of(job, job.model)


@router.post(
    "",
    response_model=JobCreated,
    status_code=status.HTTP_202_ACCEPTED,
    responses={200: {"model": JobCreated, "description": "duplicate of a live queued/running job or a replayed key"},
               422: {"description": "invalid request"}, 503: {"description": "broker unavailable"}},
)  # fmt: skip
def submit_job(
    request: JobRequest,
    response: Response,
    team: TeamDep,
    db_session: SessionDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
    idempotency_key: IdempotencyKey = None,
) -> JobCreated:
    """Queue a job (202). An identical request while one is queued or running, or a repeated
    Idempotency-Key, returns the existing job (200), unless that job is dead (failed, or stranded:
    its worker died or the broker lost it): then that job is restarted (202, ``restarted``). If
    the broker is down a new job is removed again and the answer is 503: retry later."""
    job, created, restarted = submit(
        request, team_id=team.id, db_session=db_session, settings=settings, dispatcher=dispatcher,
        idempotency_key=idempotency_key,
    )  # fmt: skip
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    if not (created or restarted):
        response.status_code = status.HTTP_200_OK
    return JobCreated(id=job.id, url=f"/v1/jobs/{job.id}", status=job.status, created=created, restarted=restarted)


@router.get("", response_model=Page[JobOut])
def list_jobs(
    team: TeamDep,
    db_session: SessionDep,
    status_filter: Annotated[StatusFilter | None, Query(alias="status")] = None,
    model: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> Page[JobOut]:
    """The caller's jobs, newest first."""
    rows, total = jobs.list_jobs(
        team_id=team.id, status=status_filter, model=model, limit=limit, offset=offset, db_session=db_session
    )
    return Page[JobOut].of([_out(job, db_session) for job in rows], total, limit, offset)


@router.get("/{job_id}", response_model=JobOut, responses={404: {"description": "no such job for this team"}})
def get_job(job_id: JobId, team: TeamDep, db_session: SessionDep) -> JobOut:
    """Status, stage, progress, error and links to the results of one job."""
    return _out(jobs.get_job(job_id, team_id=team.id, db_session=db_session), db_session)


@router.delete("/{job_id}", response_model=JobOut, responses={409: {"description": "job already finished"}})
def cancel_job(job_id: JobId, team: TeamDep, db_session: SessionDep) -> JobOut:
    """Cancel a queued or running job; the worker stops at its next stage boundary."""
    job = jobs.cancel_job(job_id, team_id=team.id, db_session=db_session)
    db_session.commit()
    assert job.status == JobStatus.CANCELLED
    return _out(job, db_session)
