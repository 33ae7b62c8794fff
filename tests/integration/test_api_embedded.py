"""Embedded mode: first-start team and key, the in-process thread pool, resuming unfinished jobs.

The real ``workers.runner.run_job`` end to end is in tests/integration/workers/test_worker_http.py;
here a small runner that drives the job row through the store stands in for it.
"""

from __future__ import annotations

import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from acttail.settings import Settings
from acttail.store import jobs, teams
from acttail.store.db import make_engine, make_session_factory, session_scope
from acttail.store.orm import JobStatus
from api.app import create_app
from api.dispatch import EmbeddedDispatcher

pytestmark = pytest.mark.integration


def stage_runner(
    job_id: str, *, session_factory: sessionmaker[Session], settings: Any = None, claim: Any = None
) -> None:
    """What run_job does to the row: claim, report stages, finish."""
    with session_scope(session_factory) as session:
        if jobs.mark_running(job_id, db_session=session, claim=claim) is None:
            return
    for stage, fraction in (("esd", 0.3), ("allocate", 0.6)):
        with session_scope(session_factory) as session:
            if jobs.update_progress(job_id, stage, fraction, db_session=session) is not JobStatus.RUNNING:
                return
    with session_scope(session_factory) as session:
        jobs.mark_succeeded(job_id, db_session=session)


def crashing_runner(job_id: str, **_: Any) -> None:
    raise RuntimeError("segfault in a kernel")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def embedded_app(home: Path, runner: Any) -> tuple[TestClient, Settings]:
    settings = Settings(home=home, executor="embedded")  # SQLite under home, like `acttail serve`
    engine = make_engine(settings.database_url)
    dispatcher = EmbeddedDispatcher(make_session_factory(engine), runner=runner)
    return TestClient(create_app(settings, dispatcher=dispatcher)), settings


def poll(client: TestClient, url: str, key: str, until: set[str], timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(url, headers={"Authorization": f"Bearer {key}"}).json()
        if job["status"] in until or time.monotonic() > deadline:
            return job
        time.sleep(0.05)


def test_first_start_creates_default_team_and_runs_jobs(home: Path) -> None:
    client, settings = embedded_app(home, stage_runner)
    with client:
        key_file = settings.api_key_file
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        key = key_file.read_text().strip()
        submitted = client.post(
            "/v1/jobs", json={"model_id": "smollm2-135m"}, headers={"Authorization": f"Bearer {key}"}
        )
        assert submitted.status_code == 202
        job = poll(client, submitted.json()["url"], key, {"succeeded", "failed"})
        assert (job["status"], job["progress"], job["attempts"], job["stage"]) == ("succeeded", 1.0, 1, "done")
    first_key = key
    client, _ = embedded_app(home, stage_runner)
    with client:  # second start: no new team, same key still valid
        assert key_file.read_text().strip() == first_key
        assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {first_key}"}).json()["total"] == 1


def test_runner_crash_marks_job_failed(home: Path) -> None:
    client, settings = embedded_app(home, crashing_runner)
    with client:
        key = settings.api_key_file.read_text().strip()
        url = client.post("/v1/jobs", json={"model_id": "org/m"}, headers={"Authorization": f"Bearer {key}"}).json()[
            "url"
        ]
        job = poll(client, url, key, {"failed"})
        assert job["status"] == "failed"
        assert job["error"] == "internal error: RuntimeError: segfault in a kernel"


def test_unfinished_jobs_resume_on_restart(home: Path) -> None:
    gate = threading.Event()

    def blocked_runner(job_id: str, *, session_factory: sessionmaker[Session], **_: Any) -> None:
        with session_scope(session_factory) as session:
            jobs.mark_running(job_id, db_session=session)
        gate.wait(10)  # the "process" dies while the job is running

    client, settings = embedded_app(home, blocked_runner)
    with client:
        key = settings.api_key_file.read_text().strip()
        url = client.post("/v1/jobs", json={"model_id": "org/m"}, headers={"Authorization": f"Bearer {key}"}).json()[
            "url"
        ]
        assert poll(client, url, key, {"running"})["status"] == "running"
    gate.set()

    client, _ = embedded_app(home, stage_runner)
    with client:
        job = poll(client, url, key, {"succeeded"})
        assert job["status"] == "succeeded" and job["attempts"] == 2  # claimed again after the restart


def test_existing_teams_get_no_default(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", executor="embedded")
    from acttail.store import migrate

    migrate.upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    with session_scope(make_session_factory(engine)) as session:
        teams.create_team("research", db_session=session)
    engine.dispose()
    client, _ = embedded_app(settings.home, stage_runner)
    with client:
        assert not settings.api_key_file.exists()


@pytest.mark.slow  # a real `acttail serve` process: the CLI imports torch (~10-40 s on a busy 2-core box)
def test_acttail_serve_first_start(tmp_path: Path) -> None:
    """The README's first command: `acttail serve` migrates, prints the default key once, answers with it."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "ACTTAIL_HOME": str(tmp_path / "home")}
    env.pop("ACTTAIL_DATABASE_URL", None)
    env.pop("ACTTAIL_EXECUTOR", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", "from acttail.cli import main; main()", "serve", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        else:
            pytest.fail("acttail serve did not become ready in 90 s")
        key = (tmp_path / "home" / "api_key").read_text().strip()
        listed = httpx.get(f"http://127.0.0.1:{port}/v1/jobs", headers={"Authorization": f"Bearer {key}"}, timeout=5)
        assert listed.status_code == 200 and listed.json()["total"] == 0
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=30)
    assert "Created team 'default'" in output and key in output
    assert proc.returncode == 0
