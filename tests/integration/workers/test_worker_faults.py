"""Fault tests with real processes: a worker SIGKILLed mid-job, two workers racing on one model.

Each test uses its own tiny model (own fingerprint), so ESD reuse by another test cannot hide a bug.
Workers run with short time limits (soft 10 s, hard 20 s → Redis visibility timeout 25 s) so a
killed worker's unacknowledged job comes back within the test's budget.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
import redis

from tests.integration.workers.support import child_pids, job_row, result_counts, submit, wait_for, wait_job

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Short limits for the SIGKILL test: its redelivery waits for the visibility timeout (hard + 5 s).
# (The solo pool does not enforce time limits; prefork does, hence LONG_LIMITS for the prefork test.)
LIMITS = {"ACTTAIL_TASK_SOFT_TIME_LIMIT_S": "10", "ACTTAIL_TASK_HARD_TIME_LIMIT_S": "20"}
LONG_LIMITS = {"ACTTAIL_TASK_SOFT_TIME_LIMIT_S": "120", "ACTTAIL_TASK_HARD_TIME_LIMIT_S": "150"}
PPL = {"perplexity": {"seqlen": 32, "max_tokens": 128}}


def _request(model_id: str, targets: list[float], evaluations: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"model_id": model_id, "targets": targets, "evaluations": evaluations or {}}


def _wait_stage(session_factory: Any, job_id: str, prefix: str) -> None:
    wait_for(lambda: job_row(session_factory, job_id).stage.startswith(prefix), 120, f"stage {prefix!r}")


def _assert_one_of_each(session_factory: Any, model_id: str, job: Any, *, targets: int, benchmarks: int) -> None:
    counts = result_counts(session_factory, model_id)
    assert counts == {
        "models": 1, "esd_runs": 1, "esd_projections": 14, "allocations": targets, "benchmarks": benchmarks,
    }  # fmt: skip
    assert len(job.allocation_ids) == targets
    assert len(job.benchmark_ids) == benchmarks


def _queue_drained(redis_url: str) -> bool:
    client = redis.Redis.from_url(redis_url)
    try:
        return client.llen("cpu") == 0 and client.hlen("unacked") == 0
    finally:
        client.close()


def test_sigkilled_worker_job_is_redelivered_and_finishes_once(
    start_worker: Any, session_factory: Any, redis_url: str, team: tuple[int, str], tiny_llama_id: Any
) -> None:
    """SIGKILL the whole worker (solo pool) during the benchmark stage, after ESD and allocations
    were stored; a new worker gets the unacked message after the visibility timeout and the job
    ends succeeded once, with every result row stored exactly once."""
    model_id = tiny_llama_id(11)
    first = start_worker("first", ACTTAIL_TEST_STAGE_DELAY="benchmark:30", **LIMITS)
    job_id = submit(session_factory, redis_url, _request(model_id, [0.3, 0.6], PPL), team_id=team[0])
    _wait_stage(session_factory, job_id, "benchmark")
    first.kill(signal.SIGKILL)
    killed = job_row(session_factory, job_id)
    assert (killed.status, killed.attempts) == ("running", 1)
    assert result_counts(session_factory, model_id)["allocations"] == 2  # partial results already stored

    second = start_worker("second", **LIMITS)
    job = wait_job(session_factory, job_id, timeout=120)
    assert (job.status, job.error, job.attempts, job.progress) == ("succeeded", None, 2, 1.0)
    _assert_one_of_each(session_factory, model_id, job, targets=2, benchmarks=3)  # ppl: dense + 2 allocations
    assert "reusing ESD run" in second.log()
    time.sleep(2)
    assert _queue_drained(redis_url)
    assert second.log().count("job succeeded after") == 1 and "job succeeded after" not in first.log()
    assert job_row(session_factory, job_id).finished_at == job.finished_at


def test_killed_pool_child_is_rejected_and_requeued_at_once(
    start_worker: Any, session_factory: Any, redis_url: str, team: tuple[int, str], tiny_llama_id: Any
) -> None:
    """prefork pool: SIGKILL the child running the job (what the OOM killer does); the parent
    rejects the message (reject_on_worker_lost) and the job runs again without waiting for the
    visibility timeout."""
    model_id = tiny_llama_id(12)
    worker = start_worker("prefork", pool="prefork", ACTTAIL_TEST_STAGE_DELAY="esd:0.5", **LONG_LIMITS)
    job_id = submit(session_factory, redis_url, _request(model_id, [0.5]), team_id=team[0])
    _wait_stage(session_factory, job_id, "esd")
    children = child_pids(worker.proc.pid)
    assert len(children) == 1
    killed_at = time.monotonic()
    os.kill(children[0], signal.SIGKILL)
    wait_for(lambda: job_row(session_factory, job_id).attempts == 2, 30, "the job to be delivered again")
    assert time.monotonic() - killed_at < 60  # well below the 175 s visibility timeout
    job = wait_job(session_factory, job_id, timeout=120)
    assert (job.status, job.attempts) == ("succeeded", 2)
    _assert_one_of_each(session_factory, model_id, job, targets=1, benchmarks=0)
    assert "WorkerLostError" in worker.log()


def test_two_workers_racing_on_one_model_compute_one_esd_run(
    start_worker: Any, session_factory: Any, redis_url: str, team: tuple[int, str], tiny_llama_id: Any
) -> None:
    """Two jobs, two workers, one model: the second waits on the ESD lock and reuses the first's run."""
    model_id = tiny_llama_id(13)
    workers = [start_worker(name, ACTTAIL_TEST_STAGE_DELAY="esd:0.4") for name in ("racer-a", "racer-b")]
    job_ids = [
        submit(session_factory, redis_url, _request(model_id, [target]), team_id=team[0]) for target in (0.4, 0.7)
    ]
    jobs = [wait_job(session_factory, job_id, timeout=120) for job_id in job_ids]
    assert [job.status for job in jobs] == ["succeeded", "succeeded"]
    assert jobs[0].esd_run_id == jobs[1].esd_run_id is not None
    logs = [worker.log() for worker in workers]
    assert all("job succeeded after" in log for log in logs)  # each worker ran one of the jobs
    assert sum(log.count("stored ESD run") for log in logs) == 1
    assert sum(log.count("reusing ESD run") for log in logs) == 1
    counts = result_counts(session_factory, model_id)
    assert (counts["esd_runs"], counts["esd_projections"], counts["allocations"]) == (1, 14, 2)


def test_soft_time_limit_fails_the_job_with_a_reason(
    start_worker: Any, session_factory: Any, redis_url: str, team: tuple[int, str], tiny_llama_id: Any
) -> None:
    """prefork enforces the soft limit (10 s): a job slowed past it ends failed, readably, once."""
    model_id = tiny_llama_id(14)
    worker = start_worker("slow", pool="prefork", ACTTAIL_TEST_STAGE_DELAY="esd:2", **LIMITS)
    job_id = submit(session_factory, redis_url, _request(model_id, [0.5]), team_id=team[0])
    job = wait_job(session_factory, job_id, timeout=90)
    assert (job.status, job.attempts) == ("failed", 1)
    assert job.error.startswith("time limit exceeded during ")  # during esd, unless imports alone took 10 s
    assert "Soft time limit (10s) exceeded" in worker.log()
    time.sleep(1)
    assert _queue_drained(redis_url)  # acknowledged: not redelivered
