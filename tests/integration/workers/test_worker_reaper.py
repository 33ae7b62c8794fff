"""No stranded job, with real processes: PostgreSQL, Celery prefork workers, a Redis of the test's own
(port 6391, no persistence, stopped by the test) and the API in-process with its reaper.

* A worker's *main* process SIGKILLed mid-job (its pool child dies with it): the broker alone
  would give the job back only after the visibility timeout (165 s here, 6.8 h by default); the
  reaper sees the silent heartbeat and re-enqueues it, and the job finishes once.
* Redis restarted mid-queue: the waiting job's message is gone; the reaper re-publishes it.
* Resubmitting the request of a stranded job restarts it (reaper off, so the resubmission does it).

Liveness bounds are shortened (heartbeat 1 s, stale after 5 s, reaper every 1 s) so the recovery
takes seconds; the worker start-up (torch imports) dominates the run time.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from acttail.registry import RUN_JOB_TASK
from api.broker_queue import job_id_of
from tests.integration.workers.support import PrivateRedis, child_pids, job_row, result_counts, wait_for, wait_job

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PORT = 6391
BROKER = f"redis://127.0.0.1:{PORT}/0"
HEARTBEAT_S, STALE_S, REAPER_S = 1.0, 5.0, 1.0
WORKER_LIVENESS = {"ACTTAIL_JOB_HEARTBEAT_S": str(HEARTBEAT_S), "ACTTAIL_JOB_STALE_AFTER_S": str(STALE_S)}
# prefork enforces these; the Redis visibility timeout follows from the hard limit: 150 + 15 = 165 s.
LIMITS = {"ACTTAIL_TASK_SOFT_TIME_LIMIT_S": "120", "ACTTAIL_TASK_HARD_TIME_LIMIT_S": "150"}
PPL = {"perplexity": {"seqlen": 32, "max_tokens": 128}}
SLACK_S = 10.0  # a loaded 2-core CI machine: the reaper's thread and the database answer late


@pytest.fixture
def own_redis(private_redis_at: Callable[[int], PrivateRedis]) -> PrivateRedis:
    return private_redis_at(PORT)


@pytest.fixture
def api(tmp_path: Path, pg_url: str, model_root: Path, own_redis: PrivateRedis, request: pytest.FixtureRequest) -> Any:
    """A TestClient on the real app (celery executor, the test's Redis); ``reaper_interval_s`` via indirect param."""
    from acttail.settings import Settings
    from api.app import create_app

    interval = getattr(request, "param", REAPER_S)
    settings = Settings(
        home=tmp_path / "api-home", database_url=pg_url, broker_url=BROKER, executor="celery",
        model_roots=[model_root], broker_timeout_s=1.0, job_heartbeat_s=HEARTBEAT_S, job_stale_after_s=STALE_S,
        reaper_interval_s=interval,
    )  # fmt: skip
    with TestClient(create_app(settings)) as client:
        yield client


def _submit(client: TestClient, key: str, body: dict[str, Any], expect: int = 202) -> dict[str, Any]:
    response = client.post("/v1/jobs", json=body, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == expect, response.text
    return dict(response.json())


def _broker() -> redis.Redis:
    return redis.Redis.from_url(BROKER)


def _kill_main_process(worker: Any) -> None:
    """SIGKILL the worker's main process only, as ``kill -9 <pid>`` would; its pool child follows."""
    [child] = child_pids(worker.proc.pid)
    os.kill(worker.proc.pid, signal.SIGKILL)
    worker.proc.wait(timeout=30)
    wait_for(lambda: not Path(f"/proc/{child}").exists(), 15, "the orphaned pool child to die")


def test_sigkilled_main_process_job_is_reaped_and_finishes_once(
    api: TestClient, session_factory: Any, team: tuple[int, str], start_worker: Any, tiny_llama_id: Any
) -> None:
    model_id = tiny_llama_id(31)
    first = start_worker(
        "main-kill", pool="prefork", broker_url=BROKER, ACTTAIL_TEST_STAGE_DELAY="benchmark:60", **WORKER_LIVENESS,
        **LIMITS,
    )  # fmt: skip
    job_id = _submit(api, team[1], {"model_id": model_id, "targets": [0.3, 0.6], "evaluations": PPL})["id"]
    wait_for(lambda: job_row(session_factory, job_id).stage.startswith("benchmark"), 180, "the benchmark stage")
    # The stage sleeps 60 s without a progress report; the heartbeat thread beats meanwhile.
    silent = job_row(session_factory, job_id)
    wait_for(lambda: job_row(session_factory, job_id).heartbeat_at > silent.heartbeat_at, 15, "a heartbeat")
    assert (job_row(session_factory, job_id).stage, job_row(session_factory, job_id).progress) == (
        silent.stage, silent.progress)  # fmt: skip

    _kill_main_process(first)
    killed_at = time.monotonic()
    killed = job_row(session_factory, job_id)
    assert (killed.status, killed.attempts, killed.dispatches) == ("running", 1, 1)
    assert result_counts(session_factory, model_id)["allocations"] == 2  # partial results already stored

    second = start_worker("after-kill", pool="prefork", broker_url=BROKER, wait=False, **WORKER_LIVENESS, **LIMITS)
    wait_for(lambda: job_row(session_factory, job_id).dispatches == 2, STALE_S + REAPER_S + SLACK_S, "the reaper")
    assert time.monotonic() - killed_at < STALE_S + REAPER_S + SLACK_S  # the visibility timeout is 165 s
    assert job_row(session_factory, job_id).status in ("queued", "running")
    second.wait_ready()
    job = wait_job(session_factory, job_id, timeout=180)
    assert (job.status, job.error, job.attempts, job.dispatches, job.progress) == ("succeeded", None, 2, 2, 1.0)
    counts = result_counts(session_factory, model_id)  # exactly one set of results
    assert counts == {"models": 1, "esd_runs": 1, "esd_projections": 14, "allocations": 2, "benchmarks": 3}
    assert (len(job.allocation_ids), len(job.benchmark_ids)) == (2, 3)
    assert second.log().count("job succeeded after") == 1 and "job succeeded after" not in first.log()
    assert "reusing ESD run" in second.log()
    time.sleep(1.0)
    client = _broker()
    try:  # the dead worker's message is still unacknowledged: without the reaper the job would wait for it
        assert [job_id_of(raw, RUN_JOB_TASK) for raw in client.hvals("unacked")] == [job_id]
        assert client.llen("cpu") == 0
    finally:
        client.close()


def test_redis_restart_mid_queue_the_queued_job_still_runs(
    api: TestClient, session_factory: Any, team: tuple[int, str], start_worker: Any, tiny_llama_id: Any,
    own_redis: PrivateRedis,
) -> None:  # fmt: skip
    model_id = tiny_llama_id(32)
    worker = start_worker(
        "restart", pool="prefork", broker_url=BROKER, ACTTAIL_TEST_STAGE_DELAY="esd:0.5", **WORKER_LIVENESS, **LIMITS
    )
    running_id = _submit(api, team[1], {"model_id": model_id, "targets": [0.4]})["id"]
    wait_for(lambda: job_row(session_factory, running_id).stage == "esd", 180, "the first job's esd stage")
    queued_id = _submit(api, team[1], {"model_id": model_id, "targets": [0.7]})["id"]
    client = _broker()
    try:
        wait_for(lambda: client.llen("cpu") == 1, 10, "the second job waiting in the queue")
    finally:
        client.close()

    own_redis.stop()  # no persistence: the waiting message is gone
    own_redis.start()
    client = _broker()
    try:
        assert (client.llen("cpu"), client.hlen("unacked")) == (0, 0)
    finally:
        client.close()

    first = wait_job(session_factory, running_id, timeout=180)
    second = wait_job(session_factory, queued_id, timeout=180)
    assert (first.status, first.attempts, first.dispatches) == ("succeeded", 1, 1)  # alive: its heartbeat never stopped
    assert (second.status, second.attempts, second.error) == ("succeeded", 1, None)
    assert second.dispatches == 2  # re-published by the reaper, once
    assert worker.log().count("job succeeded after") == 2
    counts = result_counts(session_factory, model_id)
    assert (counts["esd_runs"], counts["esd_projections"], counts["allocations"]) == (1, 14, 2)


@pytest.mark.parametrize("api", [0.0], indirect=True)  # reaper off: only the resubmission can restart it
def test_resubmitting_a_stranded_jobs_request_restarts_it(
    api: TestClient, session_factory: Any, team: tuple[int, str], start_worker: Any, tiny_llama_id: Any
) -> None:
    model_id = tiny_llama_id(33)
    body = {"model_id": model_id, "targets": [0.5]}
    first = start_worker("stranded", broker_url=BROKER, ACTTAIL_TEST_STAGE_DELAY="esd:2", **WORKER_LIVENESS)
    job_id = _submit(api, team[1], body)["id"]
    wait_for(lambda: job_row(session_factory, job_id).stage == "esd", 180, "the esd stage")
    first.kill(signal.SIGKILL)
    alive = _submit(api, team[1], body, expect=200)  # its last beat is recent: not (yet) dead
    assert (alive["id"], alive["created"], alive["restarted"], alive["status"]) == (job_id, False, False, "running")
    time.sleep(STALE_S + 1)
    assert job_row(session_factory, job_id).status == "running"  # stranded: nobody else would notice
    restarted = _submit(api, team[1], body)
    assert (restarted["id"], restarted["created"], restarted["restarted"], restarted["status"]) == (
        job_id, False, True, "queued")  # fmt: skip

    second = start_worker("rescuer", broker_url=BROKER, **WORKER_LIVENESS)
    job = wait_job(session_factory, job_id, timeout=180)
    assert (job.status, job.attempts, job.dispatches, job.error) == ("succeeded", 2, 1, None)
    assert second.log().count("job succeeded after") == 1
    counts = result_counts(session_factory, model_id)
    assert (counts["esd_runs"], counts["esd_projections"], counts["allocations"]) == (1, 14, 1)
