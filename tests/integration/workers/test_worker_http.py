"""The whole flow over HTTP: submit a job for a tiny model, poll it to ``succeeded``, read the
alphas, the allocation document and the benchmarks back.

* PostgreSQL + Redis + a Celery worker process (the API runs in-process via TestClient with the
  CeleryDispatcher; the worker is a separate ``celery worker`` process), with the default method
  ``auto``: the worker loads the model to calibrate and the document records the choice.
* SQLite in embedded mode (``ACTTAIL_EXECUTOR=embedded``: a thread pool in the API process, no Redis),
  with the paper's rule (``acttail``).
* A Redis outage: submissions answer 503 while the broker is down, and the API and the worker
  recover by themselves once it is back (a private redis-server on port 6390).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.integration.workers.support import PrivateRedis, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EVALUATIONS = {
    "perplexity": {"seqlen": 32, "max_tokens": 128},
    "zeroshot": {"tasks": ["arc_easy"], "limit": 4},
    "speed": {"new_tokens": 8, "warmup_tokens": 2, "repeats": 1},
}
OUTAGE_PORT = 6390
QUICK_CALIBRATION = {"calibration_tokens": 1024, "calibration_seqlen": 128}


def _client(settings: Any) -> Iterator[TestClient]:
    from api.app import create_app

    with TestClient(create_app(settings)) as client:
        yield client


def _poll(client: TestClient, job_id: str, headers: dict[str, str], timeout: float = 180) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        body = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        return body if body["status"] in ("succeeded", "failed", "cancelled") else None

    return wait_for(finished, timeout, f"job {job_id}", interval=0.5)


def _check_results(
    client: TestClient, headers: dict[str, str], job: dict[str, Any], model_id: str,
    kinds: frozenset[str] = frozenset({"perplexity", "zeroshot", "speed"}), method: str = "acttail",
) -> None:  # fmt: skip
    """Alphas, the allocation document and the benchmark rows of a succeeded job, over HTTP."""
    assert (job["status"], job["progress"], job["error"]) == ("succeeded", 1.0, None), job
    alphas = client.get(f"/v1/models/{model_id}/alphas", headers=headers)
    assert alphas.status_code == 200, alphas.text
    body = alphas.json()
    assert len(body["alphas"]) == 14  # 2 layers x (q, k, v, o, gate, up, down)
    assert all(a is None or a > 1.0 for a in body["alphas"].values())

    [allocation_id] = job["allocation_ids"]
    doc = client.get(f"/v1/allocations/{allocation_id}", headers=headers).json()
    assert (doc["format"], doc["method"], doc["target"]) == ("acttail.allocation", method, 0.5)
    if method == "auto":  # the choice, every candidate's calibration perplexity and the text they came from
        labels = [row["label"] for row in doc["params"]["grid"]]
        assert labels[0] == "uniform" and doc["params"]["choice"]["label"] in labels
        assert all(row["calibration_ppl"] > 1.0 for row in doc["params"]["grid"])
        assert doc["params"]["calibration"]["tokens"] == QUICK_CALIBRATION["calibration_tokens"]
    assert set(doc["sparsities"]) == set(body["alphas"])
    weighted = sum(s * doc["param_counts"][n] for n, s in doc["sparsities"].items()) / sum(doc["param_counts"].values())
    assert weighted == pytest.approx(0.5, abs=1e-6)

    rows = client.get("/v1/benchmarks", params={"model": model_id, "limit": 100}, headers=headers).json()["items"]
    assert {row["id"] for row in rows} == set(job["benchmark_ids"])
    ppl = {row["allocation_id"]: row["value"] for row in rows if row["metric"] == "ppl"}
    assert set(ppl) == {None, allocation_id}  # dense and sparse
    assert all(value > 1.0 for value in ppl.values())
    assert {row["kind"] for row in rows} == kinds
    if "zeroshot" in kinds:
        arc = [row for row in rows if row["metric"] == "arc_easy/acc"]
        assert len(arc) == 2 and all(0.0 <= row["value"] <= 1.0 for row in arc)
    if "speed" in kinds:
        speed = {row["metric"]: row for row in rows if row["kind"] == "speed"}
        assert set(speed) == {"dense_tokens_per_s", "sparse_tokens_per_s", "speedup"}
        assert all(row["allocation_id"] == allocation_id and row["value"] > 0 for row in speed.values())


def test_http_job_on_postgres_with_celery_worker(
    tmp_path: Path, pg_url: str, redis_url: str, model_root: Path, team: tuple[int, str], start_worker: Any,
    tiny_llama_id: Any,
) -> None:  # fmt: skip
    from acttail.settings import Settings

    model_id = tiny_llama_id(21)
    worker = start_worker("http")
    settings = Settings(
        home=tmp_path / "api-home", database_url=pg_url, broker_url=redis_url, executor="celery",
        model_roots=[model_root],
    )  # fmt: skip
    headers = {"Authorization": f"Bearer {team[1]}"}
    for client in _client(settings):
        evaluations = {"perplexity": EVALUATIONS["perplexity"]}  # the embedded test runs all three
        body = {"model_id": model_id, "targets": [0.5], "evaluations": evaluations, **QUICK_CALIBRATION}
        response = client.post("/v1/jobs", json=body, headers=headers)  # default method: auto
        assert response.status_code == 202, response.text
        job = _poll(client, response.json()["id"], headers)
        _check_results(client, headers, job, model_id, kinds=frozenset({"perplexity"}), method="auto")
    log = worker.log()
    assert f"[job {job['id']}] job succeeded after" in log
    assert f"[job {job['id']}] auto at 0.5 chose " in log


def test_http_job_embedded_on_sqlite(
    tmp_path: Path, model_root: Path, tiny_llama_id: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``acttail serve``'s default: SQLite, jobs on a thread in the API process, no broker."""
    from acttail.settings import Settings

    model_id = tiny_llama_id(22)
    for name, value in {"ACTTAIL_HOME": str(tmp_path / "home"), "ACTTAIL_EXECUTOR": "embedded",
                        "ACTTAIL_MODEL_ROOTS": str(model_root), "ACTTAIL_DATABASE_URL": "",
                        "ACTTAIL_BROKER_URL": "redis://127.0.0.1:1/0"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.is_sqlite and settings.executor == "embedded"
    for client in _client(settings):
        headers = {"Authorization": f"Bearer {settings.api_key_file.read_text().strip()}"}
        response = client.post(
            "/v1/jobs", json={"model_id": model_id, "targets": [0.5], "method": "acttail", "evaluations": EVALUATIONS},
            headers=headers,
        )  # fmt: skip
        assert response.status_code == 202, response.text
        job = _poll(client, response.json()["id"], headers)
        _check_results(client, headers, job, model_id)
        assert client.get("/readyz").status_code == 200  # no broker needed


@pytest.fixture
def private_redis(private_redis_at: Callable[[int], PrivateRedis]) -> PrivateRedis:
    return private_redis_at(OUTAGE_PORT)


def test_redis_outage_answers_503_then_recovers(
    tmp_path: Path, pg_url: str, model_root: Path, team: tuple[int, str], start_worker: Any, tiny_llama_id: Any,
    private_redis: PrivateRedis,
) -> None:  # fmt: skip
    from acttail.settings import Settings

    model_id = tiny_llama_id(23)
    broker = f"redis://127.0.0.1:{OUTAGE_PORT}/0"
    worker = start_worker("outage", broker_url=broker)
    settings = Settings(home=tmp_path / "api-home", database_url=pg_url, broker_url=broker, executor="celery",
                        model_roots=[model_root], broker_timeout_s=0.5)  # fmt: skip
    headers = {"Authorization": f"Bearer {team[1]}"}

    def submit(target: float) -> Any:
        return client.post("/v1/jobs", json={"model_id": model_id, "targets": [target]}, headers=headers)

    for client in _client(settings):
        before = submit(0.2)
        assert before.status_code == 202, before.text
        assert _poll(client, before.json()["id"], headers)["status"] == "succeeded"

        private_redis.stop()
        down = submit(0.3)
        assert down.status_code == 503
        assert "broker" in down.json()["detail"]
        assert client.get("/readyz").status_code == 503
        listed = client.get("/v1/jobs", params={"model": model_id}, headers=headers).json()
        assert listed["total"] == 1  # the refused job was not left behind

        time.sleep(1.0)
        private_redis.start()

        def accepted() -> Any:
            response = submit(0.3)
            return response if response.status_code == 202 else None

        after = wait_for(accepted, 30, "202 after restart")
        assert client.get("/readyz").status_code == 200
        job = _poll(client, after.json()["id"], headers, timeout=120)  # the worker reconnected by itself
        assert job["status"] == "succeeded", job
    assert worker.log().count("job succeeded after") == 2


def test_redis_outage_during_a_job_does_not_interrupt_it(
    tmp_path: Path, pg_url: str, session_factory: Any, team: tuple[int, str], start_worker: Any,
    tiny_llama_id: Any, private_redis: PrivateRedis,
) -> None:  # fmt: skip
    """Redis goes away while a prefork worker runs a job: the job is not cancelled and finishes in
    its first attempt (worker_cancel_long_running_tasks_on_connection_loss is off). Its lost ack
    brings the message back only after the visibility timeout, and ``mark_running`` then refuses
    to run a finished job (covered in tests/unit/test_workers.py)."""
    from tests.integration.workers.support import job_row, submit, wait_job

    model_id = tiny_llama_id(24)
    broker = f"redis://127.0.0.1:{OUTAGE_PORT}/0"
    limits = {"ACTTAIL_TASK_SOFT_TIME_LIMIT_S": "120", "ACTTAIL_TASK_HARD_TIME_LIMIT_S": "150"}
    worker = start_worker("blip", pool="prefork", broker_url=broker, ACTTAIL_TEST_STAGE_DELAY="esd:0.5", **limits)
    job_id = submit(session_factory, broker, {"model_id": model_id, "targets": [0.5]}, team_id=team[0])
    wait_for(lambda: job_row(session_factory, job_id).stage == "esd", 90, "the esd stage")
    private_redis.stop()
    time.sleep(2.0)
    assert job_row(session_factory, job_id).status == "running"
    private_redis.start()
    job = wait_job(session_factory, job_id, timeout=90)
    assert (job.status, job.attempts, job.error) == ("succeeded", 1, None)
    assert worker.log().count("job succeeded after") == 1
