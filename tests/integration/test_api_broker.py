"""The celery executor against real Redis: readiness, enqueueing by task name, 503 when unreachable."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from acttail.settings import Settings
from api.dispatch import BrokerUnavailableError, CeleryDispatcher

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/11"  # a database of its own; the workers' tests use 5


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"  # nothing listens there once the socket is closed


@pytest.fixture
def redis_db() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.fail("Redis at 127.0.0.1:6379 is not reachable; start it first")
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def celery_client(db_url: str, tmp_path: Path, broker_url: str) -> object:
    from fastapi.testclient import TestClient

    from api.app import create_app

    settings = Settings(home=tmp_path / "home", database_url=db_url, executor="celery", broker_url=broker_url,
                        broker_timeout_s=0.5)  # fmt: skip
    return TestClient(create_app(settings))


def test_readyz_and_submit_with_real_redis(
    db_url: str, tmp_path: Path, redis_db: redis.Redis, make_team: Callable[[], tuple[int, str]]
) -> None:
    _, key = make_team()
    with celery_client(db_url, tmp_path, REDIS_URL) as client:  # type: ignore[attr-defined]
        assert client.get("/readyz").json() == {"status": "ok", "checks": {"database": "ok", "executor": "ok"}}
        response = client.post(
            "/v1/jobs", json={"model_id": "org/m", "queue": "gpu"}, headers={"Authorization": f"Bearer {key}"}
        )
        assert response.status_code == 202, response.text
    assert redis_db.llen("gpu") == 1  # kombu's Redis transport: one list per queue
    message = redis_db.lindex("gpu", 0)
    assert message is not None and b"acttail.run_job" in message and response.json()["id"].encode() in message


def test_closed_broker_port_gives_503(db_url: str, tmp_path: Path, make_team: Callable[[], tuple[int, str]]) -> None:
    _, key = make_team()
    with celery_client(db_url, tmp_path, closed_port_url()) as client:  # type: ignore[attr-defined]
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["database"] == "ok"
        assert ready.json()["checks"]["executor"].startswith("message broker unreachable (ConnectionError")
        submitted = client.post("/v1/jobs", json={"model_id": "org/m"}, headers={"Authorization": f"Bearer {key}"})
        assert submitted.status_code == 503
        assert submitted.json()["detail"].startswith("message broker unreachable")
        assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"}).json()["total"] == 0
        assert client.get("/healthz").status_code == 200  # liveness does not depend on the broker


def test_dispatcher_fails_fast() -> None:
    import time

    dispatcher = CeleryDispatcher(closed_port_url(), timeout_s=0.5)
    start = time.perf_counter()
    with pytest.raises(BrokerUnavailableError):
        dispatcher.dispatch("job-id", "cpu")
    assert time.perf_counter() - start < 5
    dispatcher.close()


def test_pending_sees_waiting_and_reserved_messages(redis_db: redis.Redis) -> None:
    """What the reaper asks before re-publishing a queued job: kombu's queue lists and its unacked
    hash, read with a real consumer holding one message unacknowledged."""
    dispatcher = CeleryDispatcher(REDIS_URL, timeout_s=1.0)
    try:
        for job_id, queue in (("job-waiting", "gpu"), ("job-reserved", "cpu")):
            dispatcher.dispatch(job_id, queue)
        assert dispatcher.pending() == {"job-waiting", "job-reserved"}
        with dispatcher.app.connection_for_read() as connection:
            consumer = connection.SimpleQueue("cpu")
            message = consumer.get(timeout=5)  # delivered, not acknowledged: in the "unacked" hash
            assert redis_db.llen("cpu") == 0 and redis_db.hlen("unacked") == 1
            assert dispatcher.pending() == {"job-waiting", "job-reserved"}
            message.ack()
            consumer.close()
        assert dispatcher.pending() == {"job-waiting"}
        redis_db.flushdb()  # what a restart without persistence leaves
        assert dispatcher.pending() == set()
    finally:
        dispatcher.close()
    assert CeleryDispatcher("memory://", timeout_s=1.0).pending() is None  # cannot tell: the reaper leaves queued jobs
    with pytest.raises(BrokerUnavailableError):
        CeleryDispatcher(closed_port_url(), timeout_s=0.5).pending()
