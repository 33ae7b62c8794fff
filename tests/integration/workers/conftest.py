"""Fixtures for the worker integration tests: real PostgreSQL, Redis, Celery worker processes.

* PostgreSQL: a fresh database per test session (``acttail_wk_<random>``), migrated with Alembic,
  dropped at the end.
* Redis: the shared server at 127.0.0.1:6379, database 5 only (flushed before and after).
* Workers: ``celery -A workers.celery_app worker`` subprocesses in their own process group, so a
  test can SIGKILL one exactly as the OOM killer would.
* The model: a tiny random Llama with a locally trained tokenizer under a configured model root.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.workers.support import REPO, PrivateRedis, WorkerProcess, worker_env
from tests.tiny_models import save_tiny_model

PG_ADMIN_URL = os.environ.get("ACTTAIL_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("ACTTAIL_TEST_WORKER_REDIS_URL", "redis://127.0.0.1:6379/5")
TINY_MODEL = "tiny-llama"

pytestmark = pytest.mark.integration


def _require(ok: bool, what: str) -> None:
    if not ok:
        pytest.fail(f"{what} is not reachable; run scripts/services.sh (the integration tests need it)")


@pytest.fixture(scope="session")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The configured model root, holding ``tiny-llama`` (seed 0)."""
    root = tmp_path_factory.mktemp("model-root")
    save_tiny_model(root / TINY_MODEL, tokenizer="wikitext")
    return root


@pytest.fixture(scope="session")
def tiny_llama_id(model_root: Path) -> Callable[[int], str]:
    """``tiny_llama_id(seed)`` → the model ID of a distinct tiny Llama (own fingerprint) under the root.

    A seed belongs to the first test that asks for it: two tests on one seed would share a
    fingerprint, and one would count the other's stored rows (or reuse its ESD run) as its own.
    Another test asking for a taken seed fails at once, naming the owner.
    """
    owners: dict[int, str] = {}

    def build(seed: int) -> str:
        test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]
        owner = owners.setdefault(seed, test)
        if owner != test:
            pytest.fail(f"tiny_llama_id({seed}) is already taken by {owner}; give {test} its own seed")
        name = f"{TINY_MODEL}-{seed}"
        if not (model_root / name / "config.json").exists():
            save_tiny_model(model_root / name, seed=seed, tokenizer=model_root / TINY_MODEL)
        return name

    return build


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A freshly created, migrated PostgreSQL database; dropped after the session."""
    from sqlalchemy import create_engine, text

    from acttail.store import migrate

    name = f"acttail_wk_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        _require(False, f"PostgreSQL ({exc.__class__.__name__})")
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    migrate.upgrade(url)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        _require(False, "Redis at 127.0.0.1:6379")
    client.flushdb()
    yield REDIS_URL
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def session_factory(pg_url: str) -> Any:
    from acttail.store.db import make_engine, make_session_factory

    engine = make_engine(pg_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def start_worker(
    tmp_path: Path, pg_url: str, redis_url: str, model_root: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    """``start_worker(name, pool="solo", queue="cpu", **env)`` → a ready worker process."""
    started: list[WorkerProcess] = []

    def start(
        name: str, *, pool: str = "solo", queue: str = "cpu", broker_url: str | None = None, wait: bool = True,
        **env: str,
    ) -> WorkerProcess:  # fmt: skip
        log_path = tmp_path / f"worker-{name}.log"
        handle = log_path.open("wb")
        cmd = [
            str(Path(sys.executable).parent / "celery"), "-A", "workers.celery_app", "worker", "-Q", queue,
            "--pool", pool, "--concurrency", "1", "--loglevel", "INFO", "--hostname", f"{name}@%h",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        environ = worker_env(
            database_url=pg_url,
            broker_url=broker_url or redis_url,
            model_root=model_root,
            home=tmp_path / "home",
            **env,
        )
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=environ, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        worker = WorkerProcess(name, proc, log_path, handle)
        started.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture(scope="session")
def team(session_factory: Any) -> tuple[int, str]:
    """(team id, API key) of a team created directly in the database."""
    from acttail.store.db import session_scope
    from acttail.store.teams import create_api_key, create_team

    with session_scope(session_factory) as db:
        row = create_team(f"workers-{uuid.uuid4().hex[:6]}", db_session=db)
        key = create_api_key(row, db_session=db, label="tests")
        return row.id, key


@pytest.fixture
def private_redis_at(tmp_path: Path) -> Iterator[Callable[[int], PrivateRedis]]:
    """``private_redis_at(port)`` → a started redis-server of the test's own (no persistence), stopped after it."""
    servers: list[PrivateRedis] = []

    def start(port: int) -> PrivateRedis:
        server = PrivateRedis(port, tmp_path)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()
