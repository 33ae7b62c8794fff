"""No wedge under load: requests give their connection back, a saturated pool answers 503 at once,
/healthz needs no connection, and authentication is served from the verified-key cache.

Real app, real PostgreSQL and SQLite (``db_url``); the pool and cache sizes come from settings.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import event, text
from sqlalchemy.orm import Session, sessionmaker

from acttail.store import key_cache, teams
from acttail.store.db import make_engine, make_session_factory, session_scope
from tests.integration.conftest import Api, RecordingDispatcher


@contextmanager
def statements(api: Api) -> Iterator[list[str]]:
    """Every SQL statement the app's engine sends while the block runs."""
    seen: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        seen.append(statement)

    engine = api.client.app.state.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def test_a_verified_key_costs_no_database_round_trip_until_revoked(
    make_api: Callable[..., Api], make_team: Callable[[], tuple[int, str]], session_factory: sessionmaker[Session]
) -> None:
    api = make_api(auth_cache_ttl_s=60)
    _, key = make_team()
    with statements(api) as first:
        assert api.client.get("/v1/jobs", headers=api.auth(key)).status_code == 200
    with statements(api) as second:
        assert api.client.get("/v1/jobs", headers=api.auth(key)).status_code == 200
    assert any("api_keys" in s for s in first)
    assert second and not any("api_keys" in s for s in second)  # the listing itself still queries
    tampered = key[:-1] + ("A" if key[-1] != "A" else "B")  # cached prefix, wrong secret
    assert api.client.get("/v1/jobs", headers=api.auth(tampered)).status_code == 401
    with session_scope(session_factory) as session:
        teams.revoke_api_key(key.split("_")[1], db_session=session)
    assert api.client.get("/v1/jobs", headers=api.auth(key)).status_code == 401


def test_a_key_revoked_by_another_process_stops_working_after_the_ttl(
    make_api: Callable[..., Api],
    make_team: Callable[[], tuple[int, str]],
    session_factory: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another process (``acttail admin revoke-key``) cannot reach this cache: the documented bound
    is the TTL. The clock is the cache's, moved by hand."""
    now = [1000.0]
    monkeypatch.setattr(key_cache.time, "monotonic", lambda: now[0])
    api = make_api(auth_cache_ttl_s=5)
    _, key = make_team()
    assert api.client.get("/v1/jobs", headers=api.auth(key)).status_code == 200
    with session_scope(session_factory) as session:  # what revoke-key does, minus this process's cache
        session.execute(text("UPDATE api_keys SET revoked_at = CURRENT_TIMESTAMP WHERE prefix = :p"),
                        {"p": key.split("_")[1]})  # fmt: skip
    now[0] += 4.9
    assert api.client.get("/v1/jobs", headers=api.auth(key)).status_code == 200
    now[0] += 0.2
    assert api.client.get("/v1/jobs", headers=api.auth(key)).status_code == 401


def test_the_cache_can_be_turned_off(make_api: Callable[..., Api], make_team: Callable[[], tuple[int, str]]) -> None:
    api = make_api(auth_cache_ttl_s=0)
    _, key = make_team()
    for _ in range(2):
        with statements(api) as seen:
            assert api.client.get("/v1/jobs", headers=api.auth(key)).status_code == 200
        assert any("api_keys" in s for s in seen)


def test_a_saturated_pool_answers_503_and_healthz_stays_up(
    make_api: Callable[..., Api], make_team: Callable[[], tuple[int, str]]
) -> None:
    api = make_api(db_pool_size=1, db_pool_timeout_s=0.2)
    _, key = make_team()
    gate = api.client.app.state.db_gate
    api.client.portal.call(gate.acquire)  # the one request slot is taken
    try:
        busy = api.client.get("/v1/jobs", headers=api.auth(key))
        assert busy.status_code == 503
        assert busy.headers["Retry-After"] == "1"
        assert "saturated" in busy.json()["detail"]
        assert api.client.get("/healthz").status_code == 200
    finally:
        api.client.portal.call(gate.release)
    assert api.client.get("/v1/jobs", headers=api.auth(key)).status_code == 200


def test_many_concurrent_requests_on_two_connections_all_succeed_and_return_them(
    make_api: Callable[..., Api], make_team: Callable[[], tuple[int, str]]
) -> None:
    """Sixty clients at once, two connections, the auth cache off (every request queries): no
    request waits out the pool, and afterwards no connection is left checked out or in a transaction."""
    api = make_api(db_pool_size=2, db_max_overflow=0, db_pool_timeout_s=30, auth_cache_ttl_s=0)
    _, key = make_team()
    job_id = api.client.post("/v1/jobs", json={"model_id": "org/a"}, headers=api.auth(key)).json()["id"]
    paths = [f"/v1/jobs/{job_id}", "/v1/jobs?limit=5", "/v1/jobs/no-such-job", "/v1/allocations", "/v1/models"]

    def call(i: int) -> int:
        return api.client.get(paths[i % len(paths)], headers=api.auth(key)).status_code

    with ThreadPoolExecutor(max_workers=60) as pool:
        codes = list(pool.map(call, range(240)))
    assert sorted(set(codes)) == [200, 404]
    assert codes.count(404) == 240 // len(paths)
    engine = api.client.app.state.engine
    assert engine.pool.checkedout() == 0
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            idle = conn.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                     "AND state = 'idle in transaction' AND pid <> pg_backend_pid()")
            ).scalar()  # fmt: skip
        assert idle == 0


def test_pool_settings_reach_the_engine(make_api: Callable[..., Api], db_url: str) -> None:
    api = make_api(db_pool_size=3, db_max_overflow=1, db_pool_timeout_s=0.5)
    pool = api.client.app.state.engine.pool
    assert (pool.size(), pool._max_overflow, pool._timeout) == (3, 1, 0.5)
    assert api.client.app.state.db_gate.capacity == 3


def test_more_than_one_api_worker_needs_the_celery_executor() -> None:
    from pydantic import ValidationError

    from acttail.settings import Settings

    with pytest.raises(ValidationError, match="api_workers > 1 needs the celery executor"):
        Settings(api_workers=2, executor="embedded")
    assert Settings(api_workers=2, executor="celery").api_workers == 2


def test_a_connection_the_server_dropped_costs_one_503_then_the_pool_recovers(
    pg_session_url: str, tmp_path: Path
) -> None:
    """The API pool does not pre-ping (a round trip per request): when PostgreSQL drops its
    connections (restart, failover), the request that finds out answers 503, the next ones 200."""
    import psycopg
    from fastapi.testclient import TestClient

    from acttail.settings import Settings
    from api.app import create_app

    engine = make_engine(pg_session_url)
    with session_scope(make_session_factory(engine)) as session:
        team = teams.create_team(f"drop-{uuid.uuid4().hex[:8]}", db_session=session)
        key = teams.create_api_key(team, db_session=session)
    engine.dispose()
    settings = Settings(home=tmp_path, database_url=pg_session_url, auth_cache_ttl_s=60)
    with TestClient(create_app(settings, dispatcher=RecordingDispatcher())) as client:
        assert client.get("/v1/jobs", headers=Api.auth(key)).status_code == 200
        dbname = client.app.state.engine.url.database
        with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as admin:
            killed = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s", (dbname,)
            ).fetchone()
        assert killed is not None and killed[0] >= 1
        dropped = client.get("/v1/jobs", headers=Api.auth(key))
        assert dropped.status_code == 503 and dropped.headers["Retry-After"] == "1"
        assert dropped.json() == {"detail": "the database connection was lost; retry"}
        assert [client.get("/v1/jobs", headers=Api.auth(key)).status_code for _ in range(3)] == [200] * 3
