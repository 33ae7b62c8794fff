"""How the API hands a job to an executor: a protocol and its two implementations.

``CeleryDispatcher`` sends the task *by name* ("acttail.run_job") through a bare Celery client,
so the API imports neither the task bodies nor torch. ``EmbeddedDispatcher`` runs
``workers.runner.run_job`` on a thread pool inside the API process (``acttail serve``: SQLite,
no Redis). Either way the job row, not the broker, holds the job's state; ``pending()`` tells the
reaper (``api.reaper``) which jobs the executor still holds, so it can tell a lost queued job.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, get_args
from urllib.parse import urlparse

from sqlalchemy.orm import Session, sessionmaker

from acttail.errors import ActTailError
from acttail.registry import RUN_JOB_TASK
from acttail.settings import Queue, Settings
from acttail.store import jobs
from acttail.store.db import session_scope

log = logging.getLogger(__name__)

TASK_NAME = RUN_JOB_TASK
PUBLISH_RETRY = {"max_retries": 1, "interval_start": 0, "interval_step": 0, "interval_max": 0}
Runner = Callable[..., None]


class BrokerUnavailableError(ActTailError):
    """The message broker cannot be reached; the API answers 503 and nothing was enqueued."""


class JobDispatcher(Protocol):
    def dispatch(self, job_id: str, queue: str) -> None:
        """Hand ``job_id`` to an executor; raise BrokerUnavailableError if it cannot be enqueued."""

    def check(self) -> None:
        """Raise BrokerUnavailableError unless jobs can be enqueued now (``/readyz``)."""

    def pending(self) -> set[str] | None:
        """IDs of the jobs the executor holds (waiting, or reserved by a worker); None when it
        cannot tell. BrokerUnavailableError when the broker does not answer."""

    def close(self) -> None:
        """Release connections and threads at shutdown."""


def ping_broker(broker_url: str, timeout_s: float) -> None:
    """Connect and PING (Redis) or open a connection (other kombu transports) within ``timeout_s``."""
    scheme = urlparse(broker_url).scheme
    try:
        if scheme in ("redis", "rediss", "unix"):
            import redis

            client = redis.Redis.from_url(broker_url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
            try:
                client.ping()
            finally:
                client.close()
            return
        from kombu import Connection

        with Connection(broker_url, connect_timeout=timeout_s) as connection:
            connection.ensure_connection(max_retries=1, timeout=timeout_s)
    except Exception as exc:  # any transport error means "not reachable"; the message says which
        raise BrokerUnavailableError(f"message broker unreachable ({type(exc).__name__}: {exc})") from None


class CeleryDispatcher:
    """Send "acttail.run_job" by name to the ``cpu`` or ``gpu`` queue."""

    def __init__(self, broker_url: str, timeout_s: float = 2.0) -> None:
        from celery import Celery

        self.broker_url = broker_url
        self.timeout_s = timeout_s
        self.app = Celery("acttail-api", broker=broker_url, set_as_current=False)
        self.app.conf.update(
            broker_connection_timeout=timeout_s,
            broker_connection_retry=False,
            broker_connection_retry_on_startup=False,
            broker_transport_options={"socket_connect_timeout": timeout_s, "socket_timeout": timeout_s},
            task_serializer="json",
        )

    def dispatch(self, job_id: str, queue: str) -> None:
        # Ping first: kombu's publish path can block for a long time when Redis is down.
        ping_broker(self.broker_url, self.timeout_s)
        try:  # one immediate retry: the broker answered the ping, so a failure is a pooled link it dropped
            self.app.send_task(TASK_NAME, args=[job_id], queue=queue, retry=True, retry_policy=PUBLISH_RETRY)
        except Exception as exc:  # kombu/redis raise several unrelated classes for "broker gone"
            raise BrokerUnavailableError(f"could not enqueue job: {type(exc).__name__}: {exc}") from None

    def check(self) -> None:
        ping_broker(self.broker_url, self.timeout_s)

    def pending(self) -> set[str] | None:
        """What the Redis broker holds (``api.broker_queue``); None for other transports."""
        if urlparse(self.broker_url).scheme not in ("redis", "rediss", "unix"):
            return None
        import redis

        from api.broker_queue import held_job_ids

        client = redis.Redis.from_url(self.broker_url, socket_connect_timeout=self.timeout_s, socket_timeout=10)
        try:
            return held_job_ids(client, get_args(Queue), TASK_NAME)
        except redis.RedisError as exc:
            raise BrokerUnavailableError(f"message broker unreachable ({type(exc).__name__}: {exc})") from None
        finally:
            client.close()

    def close(self) -> None:
        self.app.close()


class EmbeddedDispatcher:
    """Run jobs on ``workers`` threads in this process (embedded mode)."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        *,
        workers: int = 1,
        runner: Runner | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.session_factory = session_factory
        self.settings = settings
        self.runner = runner
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="acttail-job")
        self._lock = threading.Lock()
        self._closed = False
        self._held: set[str] = set()  # dispatched and not yet returned from the runner
        fields = Settings.model_fields
        self.heartbeat_s = settings.job_heartbeat_s if settings else float(fields["job_heartbeat_s"].default)
        self.stale_after_s = settings.job_stale_after_s if settings else float(fields["job_stale_after_s"].default)

    def _resolve_runner(self) -> Runner:
        if self.runner is None:
            from workers.runner import run_job  # imported lazily: pulls in torch and the science core

            self.runner = run_job
        return self.runner

    def _run(self, job_id: str) -> None:
        try:
            self._run_claimed(job_id)
        finally:
            with self._lock:
                self._held.discard(job_id)

    def _run_claimed(self, job_id: str) -> None:
        try:
            runner = self._resolve_runner()
        except ImportError as exc:
            log.error("job %s: embedded worker unavailable: %s", job_id, exc)
            self._fail(job_id, f"embedded worker unavailable: {exc}")
            return
        from workers.heartbeat import Heartbeat  # torch-free, like the store it writes to

        claim = jobs.Claim(uuid.uuid4().hex, self.stale_after_s)
        try:
            with Heartbeat(self.session_factory, job_id, claim.token, self.heartbeat_s):
                runner(job_id, session_factory=self.session_factory, settings=self.settings, claim=claim)
        except Exception as exc:  # run_job records its own failures; this is the last line of defence
            log.exception("job %s: runner raised", job_id)
            self._fail(job_id, f"internal error: {type(exc).__name__}: {exc}")

    def _fail(self, job_id: str, reason: str) -> None:
        with session_scope(self.session_factory) as session:
            jobs.mark_failed(job_id, reason, db_session=session)

    def dispatch(self, job_id: str, queue: str) -> None:
        with self._lock:
            if self._closed:
                raise BrokerUnavailableError("the embedded worker is shutting down")
            self._held.add(job_id)
            self.pool.submit(self._run, job_id)

    def check(self) -> None:
        if self._closed:
            raise BrokerUnavailableError("the embedded worker is shutting down")

    def pending(self) -> set[str] | None:
        with self._lock:
            return set(self._held)

    def resume(self) -> list[str]:
        """Re-dispatch jobs a previous process left queued or running (after a crash or restart)."""
        with session_scope(self.session_factory) as session:
            pending = jobs.requeue_interrupted(db_session=session)
        for job_id in pending:
            self.dispatch(job_id, "embedded")
        return pending

    def close(self) -> None:
        with self._lock:
            self._closed = True
        # A running job cannot be interrupted; it stays "running" and resume() requeues it next start.
        self.pool.shutdown(wait=False, cancel_futures=True)


def build_dispatcher(settings: Settings, session_factory: sessionmaker[Session], **kwargs: Any) -> JobDispatcher:
    if settings.executor == "celery":
        return CeleryDispatcher(settings.broker_url, settings.broker_timeout_s)
    return EmbeddedDispatcher(session_factory, workers=settings.embedded_workers, settings=settings, **kwargs)
