"""Helpers of the worker integration tests: worker subprocesses, job submission, polling."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]


@dataclass
class WorkerProcess:
    """One ``celery worker`` subprocess and its log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    _log_handle: Any = field(repr=False)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready." in self.log():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"worker {self.name} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            time.sleep(0.25)
        raise AssertionError(f"worker {self.name} not ready after {timeout} s:\n{self.log()[-3000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (the worker and its pool children)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        """Teardown: the tests wait for their jobs, so the worker is idle and SIGKILL loses nothing."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self._log_handle.close()


def worker_env(*, database_url: str, broker_url: str, model_root: Path, home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACTTAIL_")}
    env.update(
        ACTTAIL_HOME=str(home),
        ACTTAIL_DATABASE_URL=database_url,
        ACTTAIL_BROKER_URL=broker_url,
        ACTTAIL_EXECUTOR="celery",
        ACTTAIL_MODEL_ROOTS=str(model_root),
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(REPO),
    )
    env.update(extra)
    return env


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc), e.g. a prefork worker's pool processes."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def submit(session_factory: Any, broker_url: str, request: dict[str, Any], *, team_id: int, queue: str = "cpu") -> str:
    """Create the job row and enqueue it exactly as the API's CeleryDispatcher does."""
    from acttail.store.db import session_scope
    from acttail.store.jobs import create_job
    from acttail.store.requests import JobRequest
    from api.dispatch import CeleryDispatcher

    parsed = JobRequest.model_validate(request)
    with session_scope(session_factory) as db:
        job, created = create_job(
            parsed.model_dump(mode="json"),
            team_id=team_id,
            request_hash=parsed.request_hash(),
            queue=queue,
            db_session=db,
        )
        job_id = job.id
    assert created, "test requests must be unique"
    dispatcher = CeleryDispatcher(broker_url)
    try:
        dispatcher.dispatch(job_id, queue)
    finally:
        dispatcher.close()
    return job_id


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def job_row(session_factory: Any, job_id: str) -> Any:
    from acttail.store.db import session_scope
    from acttail.store.jobs import get_job

    with session_scope(session_factory) as db:
        return get_job(job_id, db_session=db)


def wait_job(
    session_factory: Any, job_id: str, timeout: float = 180.0,
    statuses: tuple[str, ...] = ("succeeded", "failed", "cancelled"),
) -> Any:  # fmt: skip
    def finished() -> Any:
        job = job_row(session_factory, job_id)
        return job if job.status in statuses else None

    return wait_for(finished, timeout, f"job {job_id} to reach {statuses}")


def result_counts(session_factory: Any, model_id: str) -> dict[str, int]:
    """Rows stored for a model (by model ID): models, ESD runs and projections, allocations, benchmarks."""
    from sqlalchemy import func, select

    from acttail.store.db import session_scope
    from acttail.store.orm import AllocationRow, Benchmark, EsdProjection, EsdRun, Model

    with session_scope(session_factory) as db:
        model_pks = list(db.scalars(select(Model.id).where(Model.model_id == model_id)))

        def count(stmt: Any) -> int:
            return int(db.scalar(select(func.count()).select_from(stmt.subquery())) or 0)

        runs = select(EsdRun.id).where(EsdRun.model_pk.in_(model_pks))
        return {
            "models": len(model_pks),
            "esd_runs": count(runs),
            "esd_projections": count(select(EsdProjection.id).where(EsdProjection.run_id.in_(runs))),
            "allocations": count(select(AllocationRow.id).where(AllocationRow.model_pk.in_(model_pks))),
            "benchmarks": count(select(Benchmark.id).where(Benchmark.model_pk.in_(model_pks))),
        }


class PrivateRedis:
    """A redis-server on its own port, so stopping it leaves the shared one alone."""

    def __init__(self, port: int, directory: Path) -> None:
        self.port, self.directory, self.proc = port, directory, None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(self.ping, 10, f"redis-server on port {self.port}")

    def ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=0.5).ping())
        except redis.ConnectionError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
