"""One job, start to finish: model ID → alphas → allocations → sparse benchmarks → database.

``run_job`` is what both executors call: the Celery task ``acttail.run_job`` (``workers.tasks``)
and the API's embedded thread pool. It reads the job row, claims it (``queued|running →
running``), and runs the stages below, writing (stage, fraction) into the row as it goes and
checking between steps whether the job was cancelled::

    stage         fraction    what
    resolve       0.00-0.02   acttail.models.resolve_model(model_id) → describe() → models row
    esd           0.02-0.40   reuse the ESD run of (fingerprint, estimator), else compute and store it
                              (fit statistics and every eigenvalue, for the ESD plot)
    allocate      0.40-0.45   acttail.methods.build_allocations(method, targets) from the stored alphas
      (auto, teal-greedy: 0.40-0.75: "allocate: loading model", then "calibrating: ..." per greedy
      block and per scored candidate, on WikiText-2 validation text; one greedy trace for all targets)
    benchmark     ..-0.98     dense + every allocation: perplexity, zero-shot; per allocation: decode
                              speed, dense vs sparse kernels (requested evaluations only; the model
                              loaded for calibration is reused)
    done          1.00        link results, mark succeeded

Idempotence: every write is an upsert on a natural key (``acttail.store``), so a job that is run
again after its worker died (acks_late redelivery) converges on the same rows; only the final
``running → succeeded`` transition is compare-and-set, so a job finishes exactly once.

Failures: problems the user can act on (unknown model, pickle checkpoint, unsupported
architecture, infeasible allocation, out of memory, time limit) end the job as ``failed`` with a
one-line reason. Transient infrastructure errors (database or broker unreachable) propagate, so
the Celery task retries them with backoff; the job stays ``running`` meanwhile.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy.exc

from acttail.errors import ActTailError
from acttail.registry import METHODS
from acttail.store.db import session_scope
from acttail.store.jobs import link_results, mark_failed, mark_running, mark_succeeded, update_progress
from acttail.store.measurements import Measurement, perplexity_measurements, save_measurements, zeroshot_measurements
from acttail.store.orm import JobStatus
from acttail.store.requests import JobRequest
from workers.locks import esd_lock

try:  # raised inside a Celery task when the soft time limit passes; absent in embedded-only installs
    from celery.exceptions import SoftTimeLimitExceeded
except ImportError:  # pragma: no cover - celery is part of the service extra

    class SoftTimeLimitExceeded(Exception):  # type: ignore[no-redef]
        """Stand-in so the except clause below works without Celery."""


if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from acttail.allocate import Allocation
    from acttail.models.base import ModelDescription, ModelSource
    from acttail.settings import Settings
    from acttail.store.jobs import Claim
    from acttail.store.orm import Model

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

ESD_SPAN = (0.02, 0.40)
ALLOCATE_SPAN = (0.40, 0.45)
CALIBRATED_ALLOCATE_SPAN = (0.40, 0.75)  # auto / teal-greedy: model load and calibration passes
BENCHMARK_END = 0.98


class JobCancelled(Exception):
    """The job row left ``running`` (cancelled by a user) while this worker was on it."""


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


def worker_device() -> str:
    """``cuda`` when this worker has a GPU, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _execute(ctx: _Context, request: JobRequest, settings: Settings) -> None:
    ctx.report("resolve", 0.0)
    from acttail.models import resolve_model  # the first import of torch and transformers: seconds

    source = resolve_model(request.model_id, request.revision, model_roots=list(settings.model_roots))
    description = source.describe()
    with session_scope(ctx.session_factory) as db:
        model_pk = _model_row(description, db).id
        link_results(ctx.job_id, model_pk=model_pk, db_session=db)
    device = worker_device()
    ctx.log.info("model %s (%s, fingerprint %s…) on %s", description.model_id, description.architecture,
                 description.fingerprint[:12], device)  # fmt: skip

    alphas, param_counts = _esd_stage(ctx, source, description, request.estimator, device)
    allocations, loaded = _allocation_stage(ctx, request, source, description, alphas, param_counts, device)
    evaluations = request.evaluations
    if any(spec is not None for spec in (evaluations.perplexity, evaluations.zeroshot, evaluations.speed)):
        _benchmark_stage(ctx, request, source, description, allocations, device, loaded)
    with session_scope(ctx.session_factory) as db:
        if not mark_succeeded(ctx.job_id, db_session=db):
            raise JobCancelled("finished after cancellation")


def _model_row(description: ModelDescription, db: Session) -> Model:
    from acttail.store.catalog import get_or_create_model

    return get_or_create_model(description, db_session=db)


# --------------------------------------------------------------------------------------------
# ESD


def _esd_stage(
    ctx: _Context, source: ModelSource, description: ModelDescription, estimator: str, device: str
) -> tuple[dict[str, float], dict[str, int]]:
    """Alphas and parameter counts per projection: from the stored run, or computed once.

    Two workers racing on one model serialise on a lock keyed by (fingerprint, estimator): the
    second waits, then finds the first one's run (PostgreSQL advisory lock across machines; the
    unique constraint on (model, estimator) is the backstop).
    """
    from acttail.store.catalog import get_esd_run

    ctx.report("esd", ESD_SPAN[0])
    key = f"esd:{description.fingerprint}:{estimator}"
    with esd_lock(ctx.session_factory, key):
        with session_scope(ctx.session_factory) as db:
            run = get_esd_run(description.fingerprint, estimator, db_session=db)
            if run is not None:
                ctx.log.info("reusing ESD run %d (%s, %d projections)", run.id, estimator, len(run.projections))
                link_results(ctx.job_id, esd_run_id=run.id, db_session=db)
                return _alphas_of(run.projections)
        run_id, created = _compute_esd(ctx, source, description, estimator, device)
    ctx.log.info("%s ESD run %d", "stored" if created else "another worker stored", run_id)
    with session_scope(ctx.session_factory) as db:
        from acttail.store.catalog import get_esd_run_by_id

        run = get_esd_run_by_id(run_id, db_session=db)
        link_results(ctx.job_id, esd_run_id=run.id, db_session=db)
        return _alphas_of(run.projections)


def _alphas_of(rows: Iterable[Any]) -> tuple[dict[str, float], dict[str, int]]:
    rows = list(rows)
    alphas = {row.name: (float("nan") if row.alpha is None else float(row.alpha)) for row in rows}
    return alphas, {row.name: int(row.param_count) for row in rows}


def _compute_esd(
    ctx: _Context, source: ModelSource, description: ModelDescription, estimator: str, device: str
) -> tuple[int, bool]:
    import numpy as np

    from acttail.esd import analyze_weights
    from acttail.store.catalog import save_esd_run

    total = len(source.projections())
    start, stop = ESD_SPAN
    # Every projection's eigenvalues, kept as float32 (what the store keeps) for the ESD plot:
    # min(d_out, d_in) each, 3.5 MiB for a 7B model. Filled from the analysis threads, one key each.
    spectra: dict[str, Any] = {}

    def keep_spectrum(result: Any, evals: Any) -> None:
        spectra[result.name] = np.asarray(evals, dtype=np.float32)

    def weights_with_progress() -> Iterator[Any]:
        for i, item in enumerate(source.iter_projection_weights()):
            if i and i % max(1, total // 20) == 0:  # about 20 reports, each a cancellation check
                ctx.report("esd", start + (stop - start) * i / total)
            yield item

    report = analyze_weights(
        weights_with_progress(), estimator, device=device, progress=False, total=total, model=description.as_dict(),
        on_spectrum=keep_spectrum,
    )  # fmt: skip
    ctx.report("esd", stop)
    with session_scope(ctx.session_factory) as db:
        model = _model_row(description, db)
        run, created = save_esd_run(
            model,
            report.estimator,
            report.projections,
            elapsed_s=report.elapsed_s,
            meta={"device": device, "job_id": ctx.job_id, "versions": library_versions()},
            team_id=ctx.team_id,
            eigenvalues=spectra,
            db_session=db,
        )
        return run.id, created


# --------------------------------------------------------------------------------------------
# Allocations


def _allocation_stage(
    ctx: _Context,
    request: JobRequest,
    source: ModelSource,
    description: ModelDescription,
    alphas: Mapping[str, float],
    param_counts: Mapping[str, int],
    device: str,
) -> tuple[list[tuple[int, Allocation]], tuple[Any, Any] | None]:
    """One allocation per requested target, upserted; returns (row id, allocation) pairs and the
    (model, tokenizer) loaded for a calibrated method (None otherwise), for the benchmarks to reuse.

    ``auto`` records its choice and every candidate's calibration perplexity in the document's
    params, so GET /v1/allocations/{id} shows why it picked what it picked.
    """
    from acttail.methods import AlphaTable, build_allocations
    from acttail.store.results import save_allocation

    calibrated = METHODS[request.method].needs_model
    start, stop = CALIBRATED_ALLOCATE_SPAN if calibrated else ALLOCATE_SPAN
    ctx.report("allocate", start)
    loaded = None
    if calibrated:
        ctx.report("allocate: loading model", start)
        loaded = source.load_causal_lm(device=device)

    def calibrating(stage: str, fraction: float) -> None:  # also the cancellation check
        ctx.report(f"calibrating: {stage}", start + (stop - start) * fraction)

    alpha_table = AlphaTable(
        {"model_id": description.model_id, "fingerprint": description.fingerprint}, request.estimator,
        alphas, param_counts,
    )  # fmt: skip
    built = build_allocations(
        [request.method], report=alpha_table, targets=request.targets,
        model=None if loaded is None else loaded[0], tokenizer=None if loaded is None else loaded[1],
        progress=calibrating if calibrated else None, **request.allocation_params(),
    )  # fmt: skip
    for allocation in built:
        if "choice" in allocation.params:
            ctx.log.info("auto at %g chose %s", allocation.target, allocation.params["choice"]["label"])
    out: list[tuple[int, Allocation]] = []
    with session_scope(ctx.session_factory) as db:
        model = _model_row(description, db)
        for allocation in built:
            row, _ = save_allocation(allocation, model=model, team_id=ctx.team_id, shared=ctx.shared, db_session=db)
            out.append((row.id, allocation))
        link_results(ctx.job_id, allocation_ids=[row_id for row_id, _ in out], db_session=db)
    ctx.report("allocate", stop)
    return out, loaded


# --------------------------------------------------------------------------------------------
# Benchmarks


def _benchmark_stage(
    ctx: _Context,
    request: JobRequest,
    source: ModelSource,
    description: ModelDescription,
    allocations: list[tuple[int, Allocation]],
    device: str,
    loaded: tuple[Any, Any] | None = None,
) -> None:
    """Dense model, then each allocation applied with TopK sparsity: the requested evaluations."""
    from acttail.sparsity import apply_sparsity

    start = (CALIBRATED_ALLOCATE_SPAN if loaded is not None else ALLOCATE_SPAN)[1]
    stop = BENCHMARK_END
    if loaded is None:
        ctx.report("benchmark: loading model", start)
    model, tokenizer = loaded if loaded is not None else source.load_causal_lm(device=device)
    token_ids = None
    variants: list[tuple[int | None, Allocation | None]] = [(None, None), *allocations]
    for i, (allocation_id, allocation) in enumerate(variants):
        label = "dense" if allocation is None else f"sparsity {allocation.target:g}"
        ctx.report(f"benchmark: {label}", start + (stop - start) * i / len(variants))
        measurements: list[Measurement] = []
        handle = apply_sparsity(model, allocation) if allocation is not None else nullcontext()
        with handle:
            if request.evaluations.perplexity is not None:
                if token_ids is None:
                    from acttail.evaluate.perplexity import tokenize_split

                    token_ids = tokenize_split(tokenizer, "test")
                measurements += _perplexity(model, token_ids, request.evaluations.perplexity)
            if request.evaluations.zeroshot is not None:
                measurements += _zeroshot(model, tokenizer, request.evaluations.zeroshot)
        if request.evaluations.speed is not None and allocation is not None:
            measurements += _speed(model, tokenizer, allocation, request.evaluations.speed)
        _save_measurements(ctx, description, allocation_id, measurements, device)
    ctx.report("benchmark", stop)


def _perplexity(model: Any, token_ids: Any, spec: Any) -> list[Measurement]:
    from acttail.evaluate.perplexity import evaluate_perplexity

    result = evaluate_perplexity(
        model, token_ids=token_ids, seqlen=spec.seqlen, max_tokens=spec.max_tokens, progress=False
    )
    return perplexity_measurements(result.to_dict(), mode="topk")


def _zeroshot(model: Any, tokenizer: Any, spec: Any) -> list[Measurement]:
    from acttail.evaluate.zeroshot import evaluate_zeroshot

    report = evaluate_zeroshot(model, tokenizer, tasks=list(spec.tasks), limit=spec.limit, progress=False)
    return zeroshot_measurements(report.to_dict(), mode="topk")


def _speed(model: Any, tokenizer: Any, allocation: Allocation, spec: Any) -> list[Measurement]:
    """Greedy batch-1 decode tokens/s, dense vs the sparse kernels, interleaved (acttail.evaluate.speed)."""
    from acttail.evaluate.speed import measure_decode_speed

    result = measure_decode_speed(
        model, tokenizer, allocation, new_tokens=spec.new_tokens, warmup_tokens=spec.warmup_tokens,
        repeats=spec.repeats, check_reference=False,
    )  # fmt: skip
    settings = {
        "new_tokens": result.new_tokens, "warmup_tokens": spec.warmup_tokens, "repeats": result.repeats,
        "prompt_tokens": result.prompt_tokens, "threads": result.threads, "backend": result.backend,
        "dtype": result.dtype, "mode": result.mode,
    }  # fmt: skip
    values = {
        "dense_tokens_per_s": result.dense_tokens_per_s,
        "sparse_tokens_per_s": result.sparse_tokens_per_s,
        "speedup": result.speedup,
    }
    return [Measurement("speed", metric, value, settings) for metric, value in values.items() if value is not None]


def _save_measurements(
    ctx: _Context, description: ModelDescription, allocation_id: int | None, rows: list[Measurement], device: str
) -> None:
    versions = {**library_versions(), "device": device}
    with session_scope(ctx.session_factory) as db:
        model = _model_row(description, db)
        ids = save_measurements(
            rows, model=model, allocation_id=allocation_id, versions=versions, team_id=ctx.team_id,
            shared=ctx.shared, db_session=db,
        )  # fmt: skip
        link_results(ctx.job_id, benchmark_ids=ids, db_session=db)


def library_versions() -> dict[str, str]:
    """Versions that change numbers: stored beside every result."""
    import torch
    import transformers

    import acttail

    return {"acttail": acttail.__version__, "torch": torch.__version__, "transformers": transformers.__version__}
