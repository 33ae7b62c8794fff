"""The Celery task: a thin shell around ``workers.runner.run_job``.

It receives a job ID (never an object), claims the job under its task ID and keeps a heartbeat on
the job row while it runs (``workers.heartbeat``), runs the job against the database named in settings, and
retries with exponential backoff only when the error is transient (``runner.TRANSIENT_ERRORS``:
the database or network blinked). Everything else the runner already recorded as the job's
failure reason. The task returns nothing and never waits on another task's result.
"""

from __future__ import annotations

import logging
import os
import random
import uuid
from typing import TYPE_CHECKING, Any

from celery import Task, shared_task
from celery.exceptions import TimeLimitExceeded

from workers.celery_app import TASK_NAME

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from acttail.settings import Settings

logger = logging.getLogger(__name__)

MAX_RETRIES = 8
BACKOFF_BASE_S = 2.0
BACKOFF_MAX_S = 300.0

_factories: dict[tuple[int, str], sessionmaker[Session]] = {}


def backoff_delay(retries: int, *, base: float = BACKOFF_BASE_S, cap: float = BACKOFF_MAX_S) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**retries)] seconds."""
    return random.uniform(0.0, min(cap, base * 2.0**retries))


def session_factory_for(settings: Settings) -> sessionmaker[Session]:
    """One engine per worker process (engines must not cross a fork), created on first use."""
    from acttail.store.db import make_engine, make_session_factory

    key = (os.getpid(), settings.database_url)
    if key not in _factories:
        _factories[key] = make_session_factory(make_engine(settings.database_url))
    return _factories[key]


def _settings_of(task: Task) -> Settings:
    settings = getattr(task.app.conf, "acttail_settings", None)
    if settings is None:
        from acttail.settings import Settings

        settings = Settings()
        task.app.conf.acttail_settings = settings
    return settings


class JobTask(Task):
    """Records a hard time limit on the job row (the runner never sees it: its process was killed).

    Celery calls ``on_failure`` in the worker's main process when it kills a pool child at the
    hard limit; the message is then acknowledged, so without this the job would stay ``running``.
    """

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        if isinstance(exc, TimeLimitExceeded) and args:
            record_failure(
                str(args[0]), _settings_of(self),
                f"hard time limit exceeded ({exc}); the worker process was killed. "
                "Raise ACTTAIL_TASK_HARD_TIME_LIMIT_S or request less work",
            )  # fmt: skip


@shared_task(
    name=TASK_NAME, base=JobTask, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=MAX_RETRIES
)
def run_job_task(self: Task, job_id: str) -> None:
    """Run job ``job_id``; its state and results are in the database, not in a task result."""
    from acttail.store.jobs import Claim
    from workers.heartbeat import Heartbeat
    from workers.runner import TRANSIENT_ERRORS, run_job

    settings = _settings_of(self)
    factory = session_factory_for(settings)
    # The task ID names this delivery: a redelivery or retry of the same message keeps it.
    claim = Claim(str(self.request.id or uuid.uuid4()), settings.job_stale_after_s)
    try:
        with Heartbeat(factory, job_id, claim.token, settings.job_heartbeat_s):
            run_job(job_id, session_factory=factory, settings=settings, claim=claim)
    except TRANSIENT_ERRORS as exc:
        retries: int = self.request.retries
        if retries >= MAX_RETRIES:
            reason = f"gave up after {MAX_RETRIES} retries of a transient error: {exc.__class__.__name__}: {exc}"
            record_failure(job_id, settings, reason)
            raise
        delay = backoff_delay(retries)
        logger.warning("[job %s] transient %s; retry %d in %.1f s", job_id, exc.__class__.__name__, retries + 1, delay)
        raise self.retry(exc=exc, countdown=delay) from exc


def record_failure(job_id: str, settings: Settings, reason: str) -> None:
    """Mark the job failed if the database answers; otherwise log (a redelivery may still finish it)."""
    from acttail.store.db import session_scope
    from acttail.store.jobs import mark_failed
    from workers.runner import TRANSIENT_ERRORS

    try:
        with session_scope(session_factory_for(settings)) as db:
            mark_failed(job_id, reason[:2000], db_session=db)
    except TRANSIENT_ERRORS:
        logger.error("[job %s] could not record the failure (%s); the database is unreachable", job_id, reason)
    else:
        logger.error("[job %s] failed: %s", job_id, reason)
