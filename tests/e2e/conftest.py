"""The real stack for browser tests: uvicorn serving the API (a subprocess), a Celery worker
process, Redis, PostgreSQL, and Debian's Chromium driven by Playwright.

Reused from the worker integration tests: the fresh migrated PostgreSQL database (``pg_url``),
the tiny random Llama models under a configured model root (``model_root``, ``tiny_llama_id``),
the worker environment and process helpers. Redis database 7 is this suite's own.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.workers.conftest import model_root, pg_url, session_factory, tiny_llama_id  # noqa: F401
from tests.integration.workers.support import REPO, WorkerProcess, wait_for, worker_env

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
REDIS_URL = os.environ.get("ACTTAIL_TEST_E2E_REDIS_URL", "redis://127.0.0.1:6379/7")
#: Set to a directory (e.g. docs/img) to save screenshots of the main pages there.
SCREENSHOTS_ENV = "ACTTAIL_DASHBOARD_SCREENSHOTS"

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


@dataclass
class Stack:
    base_url: str
    keys: dict[str, str]  # team name → API key
    team_ids: dict[str, int]
    tiny_model: str  # a model ID under the model root
    worker: WorkerProcess

    def api(self, key: str) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def e2e_redis_url() -> Iterator[str]:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.fail("Redis at 127.0.0.1:6379 is not reachable; run scripts/services.sh")
    client.flushdb()
    yield REDIS_URL
    client.flushdb()
    client.close()


def _teams(session_factory: Any) -> tuple[dict[str, str], dict[str, int]]:  # noqa: F811
    from acttail.store.db import session_scope
    from acttail.store.teams import create_api_key, create_team

    keys, ids = {}, {}
    with session_scope(session_factory) as db:
        for name in ("vision", "speech"):
            team = create_team(f"{name}-{uuid.uuid4().hex[:4]}", db_session=db)
            keys[name], ids[name] = create_api_key(team, db_session=db, label="e2e"), team.id
    return keys, ids


@pytest.fixture(scope="session")
def stack(
    tmp_path_factory: pytest.TempPathFactory, pg_url: str, e2e_redis_url: str, model_root: Path,  # noqa: F811
    tiny_llama_id: Any, session_factory: Any,  # noqa: F811
) -> Iterator[Stack]:  # fmt: skip
    """API (uvicorn subprocess, celery executor) + one Celery worker, on PostgreSQL and Redis."""
    tmp = tmp_path_factory.mktemp("e2e")
    env = worker_env(database_url=pg_url, broker_url=e2e_redis_url, model_root=model_root, home=tmp / "home")
    worker_log = (tmp / "worker.log").open("wb")
    worker_cmd = [
        str(Path(sys.executable).parent / "celery"), "-A", "workers.celery_app", "worker", "-Q", "cpu",
        "--pool", "solo", "--concurrency", "1", "--loglevel", "INFO", "--hostname", "e2e@%h",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    worker = WorkerProcess("e2e", subprocess.Popen(worker_cmd, cwd=REPO, env=env, stdout=worker_log,
                                                   stderr=subprocess.STDOUT, start_new_session=True),
                           tmp / "worker.log", worker_log)  # fmt: skip
    port = _free_port()
    api_log = (tmp / "api.log").open("wb")
    api_cmd = [sys.executable, "-m", "uvicorn", "--factory", "api.app:create_app", "--host", "127.0.0.1",
               "--port", str(port), "--log-level", "warning"]  # fmt: skip
    api = subprocess.Popen(api_cmd, cwd=REPO, env=env, stdout=api_log, stderr=subprocess.STDOUT,
                           start_new_session=True)  # fmt: skip
    base_url = f"http://127.0.0.1:{port}"
    try:
        model_id = tiny_llama_id(35)  # its own fingerprint: no ESD run reused from another suite

        def ready() -> bool:
            if api.poll() is not None:
                raise AssertionError(f"API exited: {(tmp / 'api.log').read_text()[-3000:]}")
            try:
                return httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 60, "the API's /readyz")
        worker.wait_ready()
        keys, ids = _teams(session_factory)
        yield Stack(base_url, keys, ids, model_id, worker)
    finally:
        if api.poll() is None:
            os.killpg(api.pid, signal.SIGTERM)
            try:
                api.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(api.pid, signal.SIGKILL)
                api.wait(timeout=15)
        api_log.close()
        worker.stop()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Debian's Chromium through Playwright (no browser download: ``playwright install`` is never run)."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (the browser tests need it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture
def screenshots() -> Any:
    """``shoot(page, name)`` saves ``dashboard_<name>.png`` when ACTTAIL_DASHBOARD_SCREENSHOTS names a folder."""
    folder = os.environ.get(SCREENSHOTS_ENV)

    def shoot(page: Any, name: str, *, full_page: bool = False) -> None:
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(Path(folder) / f"dashboard_{name}.png"), full_page=full_page)

    return shoot
