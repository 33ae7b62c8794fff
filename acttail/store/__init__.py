"""The shared results database: SQLAlchemy 2.x models and data-access functions.

Imported by the CLI, the API and the workers; never by the science modules, and it never imports
torch. Every function takes a keyword-only ``db_session`` and only flushes: the caller commits
once (``session_scope``). Upserts use INSERT ... ON CONFLICT on both PostgreSQL and SQLite, so
concurrent writers and re-runs converge on one row.

Engine and sessions (``acttail.store.db``)
    make_engine(url), make_session_factory(engine), session_scope(factory)
Schema (``acttail.store.migrate``; never ``create_all``)
    upgrade(url, "head"), downgrade(url, rev), current_revision(engine), head_revision()
Teams and keys (``acttail.store.teams``)
    create_team(name), create_api_key(team) -> plaintext shown once, authenticate(key, cache_ttl_s=) -> TeamRef
    (verified keys cached per process for the TTL, ``acttail.store.key_cache``; revoke_api_key drops them)
Models and ESD (``acttail.store.catalog``) - ESD runs are a cache shared by every team's jobs; a
team sees a model (and reads its runs) only with its own job or a visible allocation/benchmark
    get_or_create_model(ModelDescription) -> Model (unique fingerprint)
    get_esd_run(fingerprint, estimator) -> EsdRun | None (with .projections; the workers' cache lookup)
    save_esd_run(model, estimator, projections, elapsed_s=, meta=, team_id=, eigenvalues=) -> (EsdRun, created)
    list_models(team_id=), get_team_model(fingerprint, team_id=), visible_to_team(team_id) (SQL condition)
    latest_esd_run(model_id_or_fingerprint, team_id=, estimator=None)
    projection_eigenvalues(run_id, name), projections_with_eigenvalues(run_id)
ESD eigenvalues as bytes (``acttail.store.spectra``) - float32 little-endian, never pickle
    encode_eigenvalues(values, expected=), decode_eigenvalues(blob)
Allocations and benchmarks (``acttail.store.results``) - team rows, ``shared`` publishes them
    save_allocation(Allocation, model=, team_id=, shared=) -> (AllocationRow, created)
    save_benchmark(model=, kind=, metric=, value=, settings=, versions=, allocation_id=, team_id=, shared=)
    get_allocation / list_allocations / get_benchmark / list_benchmarks (team_id= scopes reads)
Benchmark rows from results (``acttail.store.measurements``) - one mapping for workers and CLI
    perplexity_measurements(PerplexityResult.to_dict(), mode=), zeroshot_measurements(report dict, mode=),
    save_measurements(measurements, model=, allocation_id=, versions=, team_id=)
Pipeline results (``acttail.store.pipeline_results``) - what ``acttail run`` / ``evaluate`` and every job write
    StoreSink(session_factory, team_id, shared=, job_id=): model, reused-or-stored ESD run, allocations, rows
    variant_measurements(VariantResult.to_dict(), protocol, environment) -> [Measurement]
Team "default" (``acttail.store.bootstrap``) - created with a key on an empty database
    ensure_default_team(key_file, session_factory) -> new key | None, default_team(...) -> (id, key)
Jobs (``acttail.store.jobs``) - the source of truth for job state
    create_job(request, team_id=, request_hash=, queue=, idempotency_key=) -> (Job, created)
    get_job(id, team_id=None), list_jobs, mark_running(id) -> Job | None (None: do not run),
    update_progress(id, stage, fraction) -> JobStatus (stop unless RUNNING), is_cancelled(id),
    link_results(id, model_pk=, esd_run_id=, allocation_ids=, benchmark_ids=),
    mark_succeeded(id), mark_failed(id, reason), cancel_job(id, team_id=), requeue_interrupted()
The job request contract (``acttail.store.requests``)
    JobRequest (pydantic): ``JobRequest.model_validate(job.request)`` in the worker.
"""

from __future__ import annotations

from acttail.store.catalog import (
    find_models,
    get_esd_run,
    get_esd_run_by_id,
    get_model_by_fingerprint,
    get_or_create_model,
    get_team_model,
    latest_esd_run,
    list_models,
    projection_eigenvalues,
    projections_with_eigenvalues,
    save_esd_run,
    visible_to_team,
)
from acttail.store.db import make_engine, make_session_factory, session_scope
from acttail.store.errors import AuthenticationError, ConflictError, InvalidStateError, NotFoundError, StoreError
from acttail.store.jobs import (
    cancel_job,
    create_job,
    delete_job,
    finish_job,
    get_job,
    is_cancelled,
    job_status,
    link_results,
    list_jobs,
    mark_failed,
    mark_running,
    mark_succeeded,
    requeue_interrupted,
    update_progress,
)
from acttail.store.orm import AllocationRow, ApiKey, Benchmark, EsdProjection, EsdRun, Job, JobStatus, Model, Team
from acttail.store.requests import JobRequest
from acttail.store.results import (
    get_allocation,
    get_benchmark,
    list_allocations,
    list_benchmarks,
    save_allocation,
    save_benchmark,
)
from acttail.store.teams import authenticate, create_api_key, create_team, get_team_by_name

__all__ = [
    "AllocationRow", "ApiKey", "AuthenticationError", "Benchmark", "ConflictError", "EsdProjection", "EsdRun",
    "InvalidStateError", "Job", "JobRequest", "JobStatus", "Model", "NotFoundError", "StoreError", "Team",
    "authenticate", "cancel_job", "create_api_key", "create_job", "create_team", "delete_job", "find_models",
    "finish_job", "get_allocation", "get_benchmark", "get_esd_run", "get_esd_run_by_id", "get_job",
    "get_model_by_fingerprint", "get_or_create_model", "get_team_by_name", "get_team_model", "is_cancelled",
    "job_status", "latest_esd_run", "link_results", "list_allocations", "list_benchmarks", "list_jobs", "list_models",
    "make_engine", "make_session_factory", "mark_failed", "mark_running", "mark_succeeded", "projection_eigenvalues",
    "projections_with_eigenvalues", "requeue_interrupted", "save_allocation", "save_benchmark", "save_esd_run",
    "session_scope", "update_progress", "visible_to_team",
]  # fmt: skip
