"""A running job's heartbeat: a daemon thread that stamps ``jobs.heartbeat_at`` every few seconds.

It beats from a thread, not from progress reports, because a stage can run for many minutes
without one (an eigensolver on a large projection, a model load, a perplexity pass). Being a
thread of the process that runs the job, it stops when that process dies: a SIGKILLed worker
(a prefork pool child dies with its main process: Celery sets PR_SET_PDEATHSIG) goes silent, and
the API's reaper (``api.reaper``) re-enqueues the job once the beat is ``job_stale_after_s`` old.
Torch-free: the API's embedded executor uses it too.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType
from typing import TYPE_CHECKING

from acttail.store.db import session_scope
from acttail.store.jobs import beat

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

logger = logging.getLogger(__name__)


class Heartbeat:
    """``with Heartbeat(factory, job_id, token, interval_s): run the job`` — beats while inside.

    A beat that finds the job no longer owned by ``token`` (not claimed yet, finished, requeued)
    changes nothing; a failed beat (database blinked) is logged and the next one tries again.
    """

    def __init__(self, session_factory: sessionmaker[Session], job_id: str, token: str, interval_s: float) -> None:
        self.session_factory, self.job_id, self.token, self.interval_s = session_factory, job_id, token, interval_s
        self.beats = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{job_id[:8]}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=max(5.0, self.interval_s))

    def _loop(self) -> None:
        failing = False
        while not self._stop.wait(self.interval_s):
            try:
                with session_scope(self.session_factory) as db:
                    if beat(self.job_id, self.token, db_session=db):
                        self.beats += 1
            except Exception as exc:  # the job itself meets the same outage and reports it; keep beating
                if not failing:
                    logger.warning("[job %s] heartbeat failed: %s: %s", self.job_id, type(exc).__name__, exc)
                failing = True
            else:
                failing = False
