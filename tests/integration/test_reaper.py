"""Stranded jobs on SQLite and PostgreSQL: claims and heartbeats, the reaper, resubmitting a dead job.

The dispatcher is the suite's RecordingDispatcher (``held`` is what its broker still holds); the
same paths with real Celery workers, a SIGKILLed worker and a restarted Redis are in
tests/integration/workers/test_worker_reaper.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from acttail.settings import Settings
from acttail.store import jobs
from acttail.store.db import make_engine, make_session_factory, session_scope
from acttail.store.orm import Job, JobStatus, utcnow
from acttail.store.requests import JobRequest
from api.reaper import Reaper
from tests.integration.conftest import Api, RecordingDispatcher
from tests.integration.test_store_upserts import race
from tests.integration.workers.support import wait_for

pytestmark = pytest.mark.integration

STALE_S = 5.0


def _settings(tmp_path: Path, db_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"job_heartbeat_s": 1.0, "job_stale_after_s": STALE_S, "reaper_interval_s": 0}
    return Settings(home=tmp_path / "home", database_url=db_url, **{**values, **overrides})


def _new_job(session_factory: sessionmaker[Session], team_id: int, dispatcher: RecordingDispatcher, **req: Any) -> str:
    request = JobRequest.model_validate({"model_id": "org/tiny", "targets": [0.5], **req})
    with session_scope(session_factory) as db:
        job, created = jobs.create_job(
            request.model_dump(mode="json"), team_id=team_id, request_hash=request.request_hash(), db_session=db
        )
        job_id = job.id
    assert created
    dispatcher.dispatch(job_id, "cpu")
    return job_id


def _age(session_factory: sessionmaker[Session], job_id: str, seconds: float) -> None:
    """Move the job's heartbeat and dispatch time ``seconds`` into the past: its worker went silent."""
    past = utcnow() - timedelta(seconds=seconds)
    with session_scope(session_factory) as db:
        db.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=past, dispatched_at=past))


def _job(session_factory: sessionmaker[Session], job_id: str) -> Job:
    with session_scope(session_factory) as db:
        return jobs.get_job(job_id, db_session=db)


def _swept(reaper: Reaper, *own: str) -> tuple[list[str], list[str]]:
    """(requeued, failed) of one sweep, among this test's jobs (the PostgreSQL database is shared)."""
    done = reaper.sweep()
    return [j for j in done.requeued if j in own], [j for j in done.failed if j in own]


def _claim(session_factory: sessionmaker[Session], job_id: str, token: str) -> Job | None:
    with session_scope(session_factory) as db:
        return jobs.mark_running(job_id, db_session=db, claim=jobs.Claim(token, STALE_S))


def test_claims_fence_duplicate_deliveries(
    session_factory: sessionmaker[Session], make_team: Callable[[], tuple[int, str]]
) -> None:
    """A second message for a job another live delivery runs is refused; the same delivery
    (redelivered after a pool child died) and any delivery once the heartbeat is stale may claim."""
    team_id, _ = make_team()
    job_id = _new_job(session_factory, team_id, RecordingDispatcher())
    first = _claim(session_factory, job_id, "task-a")
    assert first is not None and (first.status, first.claimed_by, first.attempts) == ("running", "task-a", 1)
    assert _claim(session_factory, job_id, "task-b") is None  # duplicate message: skipped
    with session_scope(session_factory) as db:
        assert jobs.beat(job_id, "task-a", db_session=db)
        assert not jobs.beat(job_id, "task-b", db_session=db)  # only the owner beats
    again = _claim(session_factory, job_id, "task-a")
    assert again is not None and again.attempts == 2  # the same message, redelivered
    _age(session_factory, job_id, STALE_S + 1)
    taken = _claim(session_factory, job_id, "task-b")
    assert taken is not None and (taken.claimed_by, taken.attempts) == ("task-b", 3)
    with session_scope(session_factory) as db:
        assert not jobs.beat(job_id, "task-a", db_session=db)  # the old owner lost it
        assert jobs.mark_succeeded(job_id, db_session=db)
    assert _claim(session_factory, job_id, "task-c") is None  # finished: a late copy does nothing


def test_reaper_requeues_a_silent_running_job_once_across_processes(
    tmp_path: Path, db_url: str, session_factory: sessionmaker[Session], make_team: Callable[[], tuple[int, str]]
) -> None:
    """Four reapers (as four API processes) sweep at once: one wins, one message is published."""
    team_id, _ = make_team()
    dispatcher = RecordingDispatcher()
    silent = _new_job(session_factory, team_id, dispatcher, targets=[0.3])
    alive = _new_job(session_factory, team_id, dispatcher, targets=[0.4])
    for job_id, token in ((silent, "dead-worker"), (alive, "live-worker")):
        assert _claim(session_factory, job_id, token) is not None
    _age(session_factory, silent, STALE_S + 1)
    settings = _settings(tmp_path, db_url)
    engines = [make_engine(db_url) for _ in range(4)]
    reapers = iter([Reaper(make_session_factory(engine), dispatcher, settings) for engine in engines])
    lock = threading.Lock()

    def sweep() -> list[str]:
        with lock:
            reaper = next(reapers)
        return _swept(reaper, silent, alive)[0]

    try:
        requeued = race(sweep, threads=4)
    finally:
        for engine in engines:
            engine.dispose()
    assert sorted(job for done in requeued for job in done) == [silent]
    assert [job_id for job_id, _ in dispatcher.sent].count(silent) == 2  # submit + exactly one re-publish
    job = _job(session_factory, silent)
    assert (job.status, job.stage, job.dispatches, job.claimed_by, job.heartbeat_at) == (
        "queued",
        "requeued",
        2,
        None,
        None,
    )
    assert _job(session_factory, alive).status == "running"  # its heartbeat is fresh


def test_reaper_gives_up_after_max_attempts(
    tmp_path: Path, db_url: str, session_factory: sessionmaker[Session], make_team: Callable[[], tuple[int, str]]
) -> None:
    team_id, _ = make_team()
    dispatcher = RecordingDispatcher()
    job_id = _new_job(session_factory, team_id, dispatcher)
    reaper = Reaper(session_factory, dispatcher, _settings(tmp_path, db_url, job_max_attempts=2))
    for attempt in (1, 2):
        assert _claim(session_factory, job_id, f"worker-{attempt}") is not None
        _age(session_factory, job_id, STALE_S + 1)
        assert _swept(reaper, job_id) == (([job_id], []) if attempt == 1 else ([], [job_id]))
    job = _job(session_factory, job_id)
    assert (job.status, job.active_key, job.attempts, job.dispatches) == ("failed", None, 2, 2)
    assert job.error == (
        f"lost: no heartbeat from its worker for {STALE_S:g} s (the worker process died); "
        "gave up after 2 dispatches (ACTTAIL_JOB_MAX_ATTEMPTS=2)"
    )
    assert len(dispatcher.sent) == 2  # nothing published for the failed job


def test_reaper_republishes_a_queued_job_the_broker_lost(
    tmp_path: Path, db_url: str, session_factory: sessionmaker[Session], make_team: Callable[[], tuple[int, str]]
) -> None:
    team_id, _ = make_team()
    dispatcher = RecordingDispatcher()
    waiting, lost = (_new_job(session_factory, team_id, dispatcher, targets=[t]) for t in (0.3, 0.4))
    for job_id in (waiting, lost):
        _age(session_factory, job_id, STALE_S + 1)  # queued for a long time (a busy queue)
    reaper = Reaper(session_factory, dispatcher, _settings(tmp_path, db_url), confirm_delay_s=0.01)
    assert _swept(reaper, waiting, lost) == ([], [])  # both still in the broker: long waits are not death
    dispatcher.held.discard(lost)  # e.g. Redis restarted without persistence
    dispatcher.down = True
    assert _swept(reaper, waiting, lost) == ([], [])  # cannot tell while the broker is down: nothing changes
    dispatcher.down = False
    assert _swept(reaper, waiting, lost) == ([lost], [])
    assert _swept(reaper, waiting, lost) == ([], [])  # re-published: in the broker again, and dispatched just now
    job = _job(session_factory, lost)
    assert (job.status, job.dispatches, job.attempts) == ("queued", 2, 0)
    assert [job_id for job_id, _ in dispatcher.sent].count(lost) == 2
    assert _job(session_factory, waiting).dispatches == 1


def test_a_refused_publish_does_not_count_as_an_attempt(
    tmp_path: Path, db_url: str, session_factory: sessionmaker[Session], make_team: Callable[[], tuple[int, str]]
) -> None:
    """The worker died while Redis was down too: the job is requeued, its message refused; once
    the broker is back the reaper publishes it, and only that dispatch is counted."""
    team_id, _ = make_team()
    dispatcher = RecordingDispatcher()
    job_id = _new_job(session_factory, team_id, dispatcher)
    assert _claim(session_factory, job_id, "worker-1") is not None
    _age(session_factory, job_id, STALE_S + 1)
    dispatcher.down, dispatcher.held = True, set()
    reaper = Reaper(session_factory, dispatcher, _settings(tmp_path, db_url, job_max_attempts=2), confirm_delay_s=0.01)
    assert _swept(reaper, job_id) == ([job_id], [])
    assert (_job(session_factory, job_id).status, _job(session_factory, job_id).dispatches) == ("queued", 1)
    dispatcher.down = False
    _age(session_factory, job_id, STALE_S + 1)
    assert _swept(reaper, job_id) == ([job_id], [])  # lost from the broker's point of view: never arrived
    assert (_job(session_factory, job_id).dispatches, dispatcher.sent.count((job_id, "cpu"))) == (2, 2)


def test_resubmitting_a_dead_job_restarts_it(
    api: Api, session_factory: sessionmaker[Session], make_team: Callable[[], tuple[int, str]]
) -> None:
    """Live duplicates answer 200 with the same job; a stranded or failed one restarts (202)."""
    _, key = make_team()
    body = {"model_id": "local-model", "targets": [0.5]}
    headers = {**api.auth(key), "Idempotency-Key": "resubmit-1"}
    first = api.client.post("/v1/jobs", json=body, headers=headers)
    assert first.status_code == 202, first.text
    job_id = first.json()["id"]
    assert _claim(session_factory, job_id, "worker-1") is not None

    shown = api.client.get(f"/v1/jobs/{job_id}", headers=api.auth(key)).json()
    assert (shown["status"], shown["dispatches"], shown["heartbeat_at"] is not None) == ("running", 1, True)
    live = api.client.post("/v1/jobs", json=body, headers=headers)
    assert (live.status_code, live.json()["created"], live.json()["restarted"]) == (200, False, False)
    _age(session_factory, job_id, api.settings.job_stale_after_s + 1)  # its worker died
    stranded = api.client.post("/v1/jobs", json=body, headers=headers)
    assert stranded.status_code == 202, stranded.text
    assert (stranded.json()["id"], stranded.json()["status"], stranded.json()["restarted"]) == (job_id, "queued", True)
    assert [sent for sent, _ in api.dispatcher.sent] == [job_id, job_id]

    with session_scope(session_factory) as db:
        jobs.mark_failed(job_id, "out of memory during esd", db_session=db)
    failed = api.client.post("/v1/jobs", json=body, headers=headers)  # the same Idempotency-Key
    assert (failed.status_code, failed.json()["id"], failed.json()["restarted"]) == (202, job_id, True)
    job = _job(session_factory, job_id)
    assert (job.status, job.error, job.active_key, job.dispatches) == ("queued", None, job.request_hash, 1)

    api.client.delete(f"/v1/jobs/{job_id}", headers=api.auth(key))
    cancelled = api.client.post("/v1/jobs", json=body, headers=headers)  # a user's decision: not dead
    assert (cancelled.status_code, cancelled.json()["status"], cancelled.json()["restarted"]) == (
        200,
        "cancelled",
        False,
    )


def test_resubmitting_a_queued_job_the_broker_lost_restarts_it(
    api: Api, session_factory: sessionmaker[Session], make_team: Callable[[], tuple[int, str]]
) -> None:
    _, key = make_team()
    body = {"model_id": "local-model", "targets": [0.25]}
    job_id = api.client.post("/v1/jobs", json=body, headers=api.auth(key)).json()["id"]
    _age(session_factory, job_id, api.settings.job_stale_after_s + 1)
    waiting = api.client.post("/v1/jobs", json=body, headers=api.auth(key))
    assert (waiting.status_code, waiting.json()["restarted"]) == (200, False)  # still in the broker
    api.dispatcher.held.clear()  # flushed
    lost = api.client.post("/v1/jobs", json=body, headers=api.auth(key))
    assert (lost.status_code, lost.json()["id"], lost.json()["restarted"]) == (202, job_id, True)
    assert _job(session_factory, job_id).dispatches == 1  # a user's restart gets a fresh budget


def test_embedded_heartbeat_keeps_a_long_silent_stage_alive(tmp_path: Path) -> None:
    """A stage that reports no progress for longer than the stale bound is not reaped: the
    executor's heartbeat thread beats meanwhile (embedded mode, reaper every 0.2 s)."""
    from api.app import create_app
    from api.dispatch import EmbeddedDispatcher

    release = threading.Event()
    claims: list[str] = []

    def silent_runner(job_id: str, *, session_factory: sessionmaker[Session], claim: Any, **_: Any) -> None:
        with session_scope(session_factory) as db:
            assert jobs.mark_running(job_id, db_session=db, claim=claim) is not None
        claims.append(claim.token)
        release.wait(30)  # e.g. an eigensolver on one huge projection
        with session_scope(session_factory) as db:
            jobs.mark_succeeded(job_id, db_session=db)

    settings = Settings(
        home=tmp_path / "home", executor="embedded", job_heartbeat_s=0.2, job_stale_after_s=1.0, reaper_interval_s=0.2
    )
    engine = make_engine(settings.database_url)
    factory = make_session_factory(engine)
    dispatcher = EmbeddedDispatcher(factory, runner=silent_runner, settings=settings)
    with TestClient(create_app(settings, dispatcher=dispatcher)) as client:
        headers = {"Authorization": f"Bearer {settings.api_key_file.read_text().strip()}"}
        job_id = client.post("/v1/jobs", json={"model_id": "org/m"}, headers=headers).json()["id"]
        wait_for(lambda: claims, 10, "the job to start")
        first_beat = _job(factory, job_id).heartbeat_at
        beat_after = wait_for(
            lambda: (job := _job(factory, job_id)).heartbeat_at != first_beat and job.heartbeat_at, 10, "a beat"
        )
        assert dispatcher.pending() == {job_id}
        wait_for(lambda: _job(factory, job_id).heartbeat_at != beat_after, 10, "a second beat")
        threading.Event().wait(1.5)  # longer than the stale bound, with the reaper sweeping every 0.2 s
        job = _job(factory, job_id)
        assert (job.status, job.attempts, job.dispatches, job.claimed_by) == ("running", 1, 1, claims[0])
        release.set()
        wait_for(lambda: _job(factory, job_id).status == JobStatus.SUCCEEDED, 10, "the job to finish")
        wait_for(lambda: dispatcher.pending() == set(), 10, "the executor to let go of the job")
    engine.dispose()
    assert len(claims) == 1
