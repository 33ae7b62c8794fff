"""Job state machine: dedup of identical requests, idempotency keys, compare-and-set transitions."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy.orm import Session, sessionmaker

from acttail.store import jobs
from acttail.store.db import session_scope
from acttail.store.errors import IdempotencyKeyReusedError, InvalidStateError, NotFoundError
from acttail.store.orm import JobStatus
from acttail.store.requests import JobRequest
from tests.integration.test_store_upserts import race

pytestmark = pytest.mark.integration


def _request(**overrides: object) -> tuple[dict[str, object], str]:
    request = JobRequest.model_validate({"model_id": "org/tiny", **overrides})
    return request.model_dump(mode="json"), request.request_hash()


def test_concurrent_identical_submissions_create_one_job(
    session_factory: sessionmaker[Session], make_team: Callable[[], tuple[int, str]]
) -> None:
    team_id, _ = make_team()
    body, digest = _request(targets=[0.3])

    def submit() -> tuple[str, bool]:
        with session_scope(session_factory) as session:
            job, created = jobs.create_job(body, team_id=team_id, request_hash=digest, db_session=session)
            return job.id, created

    outcomes = race(submit)
    assert len({job_id for job_id, _ in outcomes}) == 1
    assert sum(created for _, created in outcomes) == 1


def test_lifecycle_and_resubmission_after_finish(
    session_factory: sessionmaker[Session], make_team: Callable[[], tuple[int, str]]
) -> None:
    team_id, _ = make_team()
    body, digest = _request()
    with session_scope(session_factory) as session:
        job, _ = jobs.create_job(body, team_id=team_id, request_hash=digest, db_session=session)
        claimed = jobs.mark_running(job.id, db_session=session)
        assert claimed is not None and claimed.attempts == 1 and claimed.status == JobStatus.RUNNING
        assert jobs.update_progress(job.id, "esd", 1.7, db_session=session) is JobStatus.RUNNING
        assert jobs.get_job(job.id, db_session=session).progress == 1.0  # clamped to [0, 1]
        jobs.link_results(job.id, allocation_ids=[3, 1], benchmark_ids=[7], db_session=session)
        jobs.link_results(job.id, allocation_ids=[1], db_session=session)
        assert jobs.mark_succeeded(job.id, db_session=session)
        assert not jobs.mark_failed(job.id, "late", db_session=session)  # exactly one final transition
        done = jobs.get_job(job.id, db_session=session)
        assert (done.status, done.allocation_ids, done.benchmark_ids, done.error) == ("succeeded", [1, 3], [7], None)
        again, created = jobs.create_job(body, team_id=team_id, request_hash=digest, db_session=session)
        assert created and again.id != job.id  # only *active* duplicates are merged


def test_cancel_wins_over_late_finish(
    session_factory: sessionmaker[Session], make_team: Callable[[], tuple[int, str]]
) -> None:
    (team_id, _), (other, _) = make_team(), make_team()
    body, digest = _request()
    with session_scope(session_factory) as session:
        job, _ = jobs.create_job(body, team_id=team_id, request_hash=digest, db_session=session)
        jobs.mark_running(job.id, db_session=session)
        with pytest.raises(NotFoundError):
            jobs.cancel_job(job.id, team_id=other, db_session=session)
        assert jobs.cancel_job(job.id, team_id=team_id, db_session=session).status == JobStatus.CANCELLED
        assert jobs.cancel_job(job.id, team_id=team_id, db_session=session).status == JobStatus.CANCELLED
        assert jobs.update_progress(job.id, "benchmark", 0.5, db_session=session) is JobStatus.CANCELLED
        assert not jobs.mark_succeeded(job.id, db_session=session)
        assert jobs.mark_running(job.id, db_session=session) is None  # a redelivery must not revive it
        assert jobs.is_cancelled(job.id, db_session=session)


def test_cancel_finished_job_is_refused(
    session_factory: sessionmaker[Session], make_team: Callable[[], tuple[int, str]]
) -> None:
    team_id, _ = make_team()
    body, digest = _request()
    with session_scope(session_factory) as session:
        job, _ = jobs.create_job(body, team_id=team_id, request_hash=digest, db_session=session)
        jobs.mark_failed(job.id, "boom", db_session=session)
        with pytest.raises(InvalidStateError, match="already failed"):
            jobs.cancel_job(job.id, team_id=team_id, db_session=session)


def test_idempotency_key(session_factory: sessionmaker[Session], make_team: Callable[[], tuple[int, str]]) -> None:
    team_id, _ = make_team()
    body, digest = _request()
    other_body, other_digest = _request(targets=[0.7])
    with session_scope(session_factory) as session:
        job, created = jobs.create_job(
            body, team_id=team_id, request_hash=digest, idempotency_key="k1", db_session=session
        )
        jobs.mark_succeeded(job.id, db_session=session)
        replay, replay_created = jobs.create_job(
            body, team_id=team_id, request_hash=digest, idempotency_key="k1", db_session=session
        )
        assert (created, replay_created, replay.id) == (True, False, job.id)  # even after it finished
        with pytest.raises(IdempotencyKeyReusedError):
            jobs.create_job(
                other_body, team_id=team_id, request_hash=other_digest, idempotency_key="k1", db_session=session
            )


def test_requeue_interrupted(session_factory: sessionmaker[Session], make_team: Callable[[], tuple[int, str]]) -> None:
    team_id, _ = make_team()
    with session_scope(session_factory) as session:
        queued, _ = jobs.create_job(
            *_request(targets=[0.1])[:1], team_id=team_id, request_hash=_request(targets=[0.1])[1], db_session=session
        )
        running, _ = jobs.create_job(
            _request(targets=[0.2])[0], team_id=team_id, request_hash=_request(targets=[0.2])[1], db_session=session
        )
        jobs.mark_running(running.id, db_session=session)
        pending = jobs.requeue_interrupted(db_session=session)
        assert {queued.id, running.id} <= set(pending)
        assert jobs.get_job(running.id, db_session=session).status == JobStatus.QUEUED
