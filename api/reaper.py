"""The reaper: re-enqueue jobs whose worker died or whose message the broker lost.

Dead jobs are defined in ``acttail.store.jobs`` (a running job whose heartbeat is older than
``job_stale_after_s``; a queued job dispatched longer ago than that which the broker no longer
holds). Each sweep re-enqueues them, or fails them with the reason once they have been dispatched
``job_max_attempts`` times.

It runs in the API process, as an asyncio task of the app's lifespan that sweeps on a thread
every ``reaper_interval_s``, rather than as a Celery beat task: so it runs wherever the service
runs (``acttail serve`` has no Celery at all; docker compose's ``api`` service) without a beat
process that must be deployed exactly once, and it does not depend on the broker whose lost
messages it repairs. Several API processes may sweep at once: every recovery is a
compare-and-set on the job row as the sweep saw it, and only the winner publishes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from acttail.settings import Settings
from acttail.store import jobs
from acttail.store.db import session_scope
from acttail.store.orm import Job, JobStatus
from api.dispatch import BrokerUnavailableError, JobDispatcher

log = logging.getLogger(__name__)

CONFIRM_DELAY_S = 0.5  # a message a worker is taking at this moment is in neither queue nor unacked, briefly


@dataclass
class Sweep:
    """What one sweep did (job IDs)."""

    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def lost_reason(job: Job, settings: Settings) -> str:
    """The ``error`` of a job the reaper gave up on."""
    if job.status == JobStatus.RUNNING:
        why = f"no heartbeat from its worker for {settings.job_stale_after_s:g} s (the worker process died)"
    else:
        why = "the broker no longer held its message (Redis restarted without persistence, or was flushed)"
    return (
        f"lost: {why}; gave up after {job.dispatches} dispatches (ACTTAIL_JOB_MAX_ATTEMPTS={settings.job_max_attempts})"
    )


def broker_lost(dispatcher: JobDispatcher, queued: list[Job], settings: Settings, confirm_delay_s: float) -> list[Job]:
    """The queued jobs the executor does not hold, seen twice ``confirm_delay_s`` apart; [] if it cannot tell."""
    missing = queued
    try:
        for attempt in range(2):
            if attempt:
                time.sleep(confirm_delay_s)
            held = dispatcher.pending()
            if held is None:
                return []
            missing = [job for job in missing if job.id not in held]
            if not missing:
                break
    except BrokerUnavailableError as exc:  # nothing can be re-published anyway; the next sweep looks again
        log.info("reaper: broker unavailable, queued jobs not checked (%s)", exc)
        return []
    return missing


def publish(dispatcher: JobDispatcher, job: Job) -> bool:
    """Hand a requeued job to the executor; if the broker is down it stays queued for a later sweep."""
    try:
        dispatcher.dispatch(job.id, job.queue)
    except BrokerUnavailableError as exc:
        log.warning("job %s requeued but not published (%s); the reaper publishes it later", job.id, exc)
        return False
    return True


class Reaper:
    """One sweep at a time over the database the API uses."""

    def __init__(
        self, session_factory: sessionmaker[Session], dispatcher: JobDispatcher, settings: Settings,
        *, confirm_delay_s: float = CONFIRM_DELAY_S,
    ) -> None:  # fmt: skip
        self.session_factory, self.dispatcher, self.settings = session_factory, dispatcher, settings
        self.confirm_delay_s = confirm_delay_s

    def sweep(self) -> Sweep:
        cutoff = jobs.stale_before(self.settings.job_stale_after_s)
        with session_scope(self.session_factory) as db:
            running = jobs.dead_candidates(JobStatus.RUNNING, stale_before=cutoff, db_session=db)
            queued = jobs.dead_candidates(JobStatus.QUEUED, stale_before=cutoff, db_session=db)
        dead = running + (broker_lost(self.dispatcher, queued, self.settings, self.confirm_delay_s) if queued else [])
        done = Sweep()
        for job in dead:
            self._recover(job, cutoff, done)
        return done

    def _recover(self, job: Job, cutoff: datetime, done: Sweep) -> None:
        with session_scope(self.session_factory) as db:
            if job.dispatches >= self.settings.job_max_attempts:
                reason = lost_reason(job, self.settings)
                if jobs.give_up(job, reason, stale_before=cutoff, db_session=db):
                    log.warning("job %s failed: %s", job.id, reason)
                    done.failed.append(job.id)
                return
            if not jobs.requeue_dead(job, stale_before=cutoff, db_session=db):
                return  # another sweep, a worker or a user got there first
        log.warning("job %s was %s and dead; requeued (dispatch %d)", job.id, job.status, job.dispatches + 1)
        done.requeued.append(job.id)
        if not publish(self.dispatcher, job):
            with session_scope(self.session_factory) as db:
                jobs.uncount_dispatch(job.id, job.dispatches + 1, db_session=db)

    async def run(self, interval_s: float) -> None:
        """Sweep every ``interval_s`` until cancelled (the app's lifespan); a failed sweep is logged."""
        while True:
            try:
                await asyncio.to_thread(self.sweep)
            except Exception as exc:  # the database may be down; the next sweep tries again
                log.warning("reaper sweep failed: %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(interval_s)


def restart_if_dead(job: Job, *, db_session: Session, dispatcher: JobDispatcher, settings: Settings) -> bool:
    """A resubmission of ``job``'s request: restart it (fresh dispatch budget) if it is dead.

    Commits. Raises BrokerUnavailableError if the restarted job cannot be published now (it stays
    queued; the reaper publishes it once the broker is back).
    """
    if job.status not in (JobStatus.FAILED, JobStatus.RUNNING, JobStatus.QUEUED):
        return False
    if job.status == JobStatus.QUEUED:
        try:
            held = dispatcher.pending()
        except BrokerUnavailableError:
            return False
        if held is None or job.id in held:
            return False
    cutoff = jobs.stale_before(settings.job_stale_after_s)
    restarted = jobs.requeue_dead(job, stale_before=cutoff, db_session=db_session, fresh_budget=True)
    db_session.commit()
    if restarted:
        log.info("job %s was %s and dead; restarted by a resubmission", job.id, job.status)
        dispatcher.dispatch(job.id, job.queue)
    return restarted
