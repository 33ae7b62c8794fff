"""The Celery application: broker, reliability knobs and queue routing for long ActTail jobs.

The app is built lazily (module ``__getattr__``), so importing this module reads no environment;
``celery -A workers.celery_app`` asks for ``workers.celery_app.app`` and that is the entry point
where :class:`acttail.settings.Settings` is built.

Reliability, following Celery's guidance for long, idempotent tasks:

* ``task_acks_late`` + ``task_reject_on_worker_lost``: the message is acknowledged only after the
  job ran; a worker killed mid-job (OOM killer, SIGKILL, lost machine) leaves it unacknowledged,
  and it is delivered again. A dead pool child is rejected and requeued at once; a dead worker's
  unacked message comes back only after the Redis ``visibility_timeout``, so the API's reaper
  (``api.reaper``) re-enqueues its job as soon as the job's heartbeat goes stale.
* ``worker_prefetch_multiplier = 1``: a worker reserves one job at a time, so a second job never
  waits behind a 30-minute ESD run on a busy worker while another worker idles.
* soft / hard time limits from settings; the Redis ``visibility_timeout`` is set *above* the hard
  limit (hard + max(5 s, 10 %)), otherwise Redis would hand a still-running job to a second worker.
* no result backend: the database's job row is the source of truth for state and results.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from celery import Celery

from acttail.registry import RUN_JOB_TASK

if TYPE_CHECKING:
    from acttail.settings import Settings

TASK_NAME = RUN_JOB_TASK
QUEUES = ("cpu", "gpu")
RESTORE_INTERVAL_S = 10  # how often a worker sweeps Redis for unacked messages past the visibility timeout


def visibility_timeout_for(hard_time_limit_s: float) -> int:
    """Redis visibility timeout: always longer than the longest a task may run."""
    return math.ceil(hard_time_limit_s + max(5.0, 0.1 * hard_time_limit_s))


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings (lower-case names) for ``settings``; a pure function, tested directly."""
    soft, hard = settings.task_soft_time_limit_s, settings.task_hard_time_limit_s
    return {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "visibility_timeout": visibility_timeout_for(hard),
            # Sweep for abandoned (unacked, past-timeout) messages every interval, not every 10th.
            "unacked_restore_interval": RESTORE_INTERVAL_S,
            "unacked_restore_throttle": 1,
            "socket_connect_timeout": settings.broker_timeout_s,
            "health_check_interval": 10,
        },
        "result_backend": None,
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        # A Redis blip must not kill a running job: it finishes, its ack is lost, the message comes
        # back after the visibility timeout and the rerun sees a finished job and does nothing.
        # (True would terminate it, and its rerun would wait out the whole visibility timeout.)
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "broker_connection_max_retries": None,  # reconnect forever: an outage must not stop workers
        "task_soft_time_limit": soft,
        "task_time_limit": hard,
        "task_default_queue": "cpu",
        "task_routes": {TASK_NAME: {"queue": "cpu"}},  # the dispatcher names the queue per job
        "task_serializer": "json",
        "accept_content": ["json"],
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        "enable_utc": True,
    }


def create_celery_app(settings: Settings | None = None) -> Celery:
    """A Celery app with the task ``acttail.run_job`` registered (``workers.tasks``)."""
    if settings is None:
        from acttail.settings import Settings

        settings = Settings()
    app = Celery("acttail", include=["workers.tasks"], set_as_current=True)
    app.conf.update(celery_config(settings))
    app.conf.acttail_settings = settings
    return app


_app: Celery | None = None


def __getattr__(name: str) -> Any:
    """``workers.celery_app.app``: built once, on first access (the worker's entry point)."""
    global _app
    if name in ("app", "celery"):
        if _app is None:
            _app = create_celery_app()
        return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
