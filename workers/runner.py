"""One job, start to finish: request → ``PipelineConfig`` → ``acttail.pipeline.run_pipeline`` → database.

``run_job`` is what both executors call: the Celery task ``acttail.run_job`` (``workers.tasks``)
and the API's embedded thread pool. It reads the job row, claims it (``queued|running →
running``), and runs the one pipeline ``acttail run`` runs too (its module docstring lists the
stages), with ``acttail.store.pipeline_results.StoreSink`` writing every result as it comes and
linking it to the job. Each progress report is written into the row, and is where cancellation is
noticed: a report on a job that is no longer ``running`` raises ``JobCancelled``.

Idempotence: every write is an upsert on a natural key (``acttail.store``), so a job that is run
again after its worker died (acks_late redelivery) converges on the same rows; only the final
``running → succeeded`` transition is compare-and-set, so a job finishes exactly once.

Failures: problems the user can act on (unknown model, pickle checkpoint, unsupported
architecture, infeasible allocation, out of memory, time limit) end the job as ``failed`` with a
one-line reason. Transient infrastructure errors (database or broker unreachable) propagate, so
the Celery task retries them with backoff; the job stays ``running`` meanwhile.
"""

from __future__ import annotations

import contextvars
import logging
import os
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy.exc

from acttail.errors import ActTailError
from acttail.pipeline import ESD_SPAN, PipelineConfig
from acttail.registry import CALIBRATION_KNOBS, DEFAULT_CALIBRATION_SEQLEN, DEFAULT_CALIBRATION_TOKENS
from acttail.store.db import session_scope
from acttail.store.jobs import mark_failed, mark_running, mark_succeeded, update_progress
from acttail.store.orm import JobStatus
from acttail.store.requests import JobRequest

try:  # raised inside a Celery task when the soft time limit passes; absent in embedded-only installs
    from celery.exceptions import SoftTimeLimitExceeded
except ImportError:  # pragma: no cover - celery is part of the service extra

    class SoftTimeLimitExceeded(Exception):  # type: ignore[no-redef]
        """Stand-in so the except clause below works without Celery."""


if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from acttail.settings import Settings
    from acttail.store.jobs import Claim

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[str, float], None]

#: Errors worth retrying: the database or the network blinked. Everything else is final.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.DisconnectionError,
    ConnectionError,
    TimeoutError,
)

#: Test-only hook: ``"<seconds>"`` or ``"<stage prefix>:<seconds>"``: sleep after each progress
#: report (of that stage), making a job slow enough to kill or race in the fault tests.
STAGE_DELAY_ENV = "ACTTAIL_TEST_STAGE_DELAY"

__all__ = ["ESD_SPAN", "TRANSIENT_ERRORS", "JobCancelled", "failure_reason", "pipeline_config", "run_job"]


class JobCancelled(Exception):
    """The job row left ``running`` (cancelled by a user) while this worker was on it."""


#: The job this thread is running, for the core's log lines (``_prefix_core_records``).
_CURRENT_JOB: contextvars.ContextVar[str | None] = contextvars.ContextVar("acttail_job_id", default=None)


def _prefix_core_records() -> None:
    """Log lines of the science core (``acttail.*``) written during a job carry its ID, like the runner's.

    The core knows nothing of jobs, and several jobs may share one worker log; a record factory
    keyed by a context variable labels them without passing a logger through the pipeline.
    """
    previous = logging.getLogRecordFactory()
    if getattr(previous, "acttail_job_prefix", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        job_id = _CURRENT_JOB.get()
        if job_id is not None and record.name.startswith("acttail."):
            record.msg = f"[job {job_id}] {record.msg}"
        return record

    factory.acttail_job_prefix = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


class _JobLog(logging.LoggerAdapter):
    """Prefix every log line with the job ID."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        return f"[job {self.extra['job_id']}] {msg}", kwargs  # type: ignore[index]


@dataclass
class _Context:
    """What every stage needs: the job's identity and the channel to report progress on."""

    job_id: str
    team_id: int
    shared: bool
    session_factory: sessionmaker[Session]
    callback: ProgressCallback | None
    log: _JobLog
    stage: str = "starting"
    delay: tuple[str, float] = field(default_factory=lambda: _parse_delay(os.environ.get(STAGE_DELAY_ENV, "")))

    def report(self, stage: str, fraction: float) -> None:
        """Write (stage, fraction) into the job row; raise JobCancelled if it is no longer running."""
        self.stage = stage
        with session_scope(self.session_factory) as db:
            status = update_progress(self.job_id, stage, fraction, db_session=db)
        if self.callback is not None:
            self.callback(stage, fraction)
        if status is not JobStatus.RUNNING:
            raise JobCancelled(status)
        prefix, seconds = self.delay
        if seconds > 0 and stage.startswith(prefix):
            time.sleep(seconds)


def _parse_delay(spec: str) -> tuple[str, float]:
    prefix, _, seconds = spec.rpartition(":")
    return prefix, float(seconds or 0)


def run_job(
    job_id: str,
    *,
    session_factory: sessionmaker[Session],
    progress: ProgressCallback | None = None,
    settings: Settings | None = None,
    claim: Claim | None = None,
) -> None:
    """Run job ``job_id`` to a final state (see the module docstring for stages and failures).

    ``claim`` names the delivery (``acttail.store.jobs.mark_running``: a job another live delivery
    runs is skipped).

    ``progress(stage, fraction)`` is called after every report written to the job row.
    ``settings`` supplies ``model_roots`` (local model IDs must live under them); built from the
    environment when omitted. Returns normally for succeeded, failed and cancelled jobs; raises
    only ``TRANSIENT_ERRORS``, which the caller should retry.
    """
    _prefix_core_records()
    token = _CURRENT_JOB.set(job_id)
    try:
        _run_job(job_id, session_factory, progress, settings, claim)
    finally:
        _CURRENT_JOB.reset(token)


def _run_job(
    job_id: str,
    session_factory: sessionmaker[Session],
    progress: ProgressCallback | None,
    settings: Settings | None,
    claim: Claim | None,
) -> None:
    log = _JobLog(logger, {"job_id": job_id})
    with session_scope(session_factory) as db:
        job = mark_running(job_id, db_session=db, claim=claim)
        if job is None:
            log.info("not runnable (unknown, finished, cancelled or run by another worker); skipping")
            return
        team_id, shared, raw_request, attempt = job.team_id, job.shared, dict(job.request), job.attempts
    log.info("started (attempt %d)", attempt)
    ctx = _Context(job_id, team_id, shared, session_factory, progress, log)
    started = time.perf_counter()
    try:
        request = JobRequest.model_validate(raw_request)
        if settings is None:
            from acttail.settings import Settings

            settings = Settings()
        _execute(ctx, request, settings)
    except JobCancelled:
        log.info("cancelled during %s; stopping", ctx.stage)
        return
    except TRANSIENT_ERRORS:
        log.warning("transient error during %s; leaving the job running for a retry", ctx.stage, exc_info=True)
        raise
    except Exception as exc:
        reason = failure_reason(exc, ctx.stage)
        if not isinstance(exc, ActTailError):
            log.exception("failed during %s", ctx.stage)
        with session_scope(session_factory) as db:
            mark_failed(job_id, reason, db_session=db)
        log.info("failed: %s", reason)
        return
    log.info("job succeeded after %.1f s", time.perf_counter() - started)


def failure_reason(exc: BaseException, stage: str) -> str:
    """One readable line for the job's ``error`` column."""
    import pydantic

    if isinstance(exc, ActTailError):
        return str(exc)
    if isinstance(exc, SoftTimeLimitExceeded):
        return f"time limit exceeded during {stage}; raise ACTTAIL_TASK_SOFT_TIME_LIMIT_S or request less work"
    if _is_out_of_memory(exc):
        return (
            f"out of memory during {stage} ({exc.__class__.__name__}); use a worker with more memory, "
            "a GPU queue, or smaller evaluation settings"
        )
    if isinstance(exc, pydantic.ValidationError):
        return f"stored job request is invalid: {exc.errors()[0].get('msg', exc)}"
    return f"internal error during {stage}: {exc.__class__.__name__}: {exc}"


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def pipeline_config(request: JobRequest, settings: Settings) -> PipelineConfig:
    """The job request as the pipeline's config; the worker's settings place models the request leaves open."""
    from acttail.models.placement import Placement

    knobs = {k: v for k, v in request.allocation_params().items() if k not in CALIBRATION_KNOBS}
    evaluations = request.evaluations
    return PipelineConfig(
        targets=tuple(request.targets), methods=(request.method,), knobs=knobs, estimator=request.estimator,
        mode=request.mode, scoring=request.scoring, perplexity=evaluations.perplexity, zeroshot=evaluations.zeroshot, speed=evaluations.speed,
        include_dense=request.include_dense,
        calibration_tokens=request.calibration_tokens or DEFAULT_CALIBRATION_TOKENS,
        calibration_seqlen=request.calibration_seqlen or DEFAULT_CALIBRATION_SEQLEN,
        placement=Placement(
            device=request.device or settings.device, dtype=request.dtype or settings.dtype,
            device_map=request.device_map, max_memory=request.max_memory,
        ),
    )  # fmt: skip


def _execute(ctx: _Context, request: JobRequest, settings: Settings) -> None:
    from acttail.pipeline import run_pipeline
    from acttail.store.pipeline_results import StoreSink

    sink = StoreSink(ctx.session_factory, ctx.team_id, ctx.shared, job_id=ctx.job_id, meta={"job_id": ctx.job_id})
    run_pipeline(
        request.model_id, pipeline_config(request, settings), revision=request.revision,
        model_roots=list(settings.model_roots), sink=sink, progress=ctx.report,
    )  # fmt: skip
    with session_scope(ctx.session_factory) as db:
        if not mark_succeeded(ctx.job_id, db_session=db):
            raise JobCancelled("finished after cancellation")
