"""Dashboard pages (server-rendered HTML): login, models, one model, one allocation, jobs, new job.

Every page shows only what the session's team may see: its jobs, its own allocations and
benchmarks and the shared ones, and models it worked on (``catalog.list_models``, the rule
``GET /v1/models`` applies too). Errors render
as an HTML page with the status of the one error table (``api.errors``); a missing or revoked
session redirects to the login page.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from fastapi.routing import APIRoute

from acttail.errors import ActTailError
from acttail.registry import DEFAULT_METHOD, ESTIMATORS
from acttail.store import catalog, jobs, results
from acttail.store.errors import AuthenticationError, NotFoundError
from acttail.store.orm import Benchmark
from api.deps import DispatcherDep, SessionDep, SettingsDep
from api.errors import status_for, validation_message
from api.submission import submit
from api.ui.forms import CHOICES, MAX_FIELD, JobForm
from api.ui.render import UI, page
from api.ui.resources import job_status
from api.ui.session import LoginRequired, UiTeamDep, check_csrf, log_in, log_out

MAX_ROWS = 200


class HtmlErrorRoute(APIRoute):
    """Errors become an HTML page with the right status; no session → the login page."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except LoginRequired:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(f"{UI}/login?next={quote(target)}", status_code=303)
            except ActTailError as exc:
                return page(request, "error.html", {"message": str(exc)}, status=status_for(exc))
            except RequestValidationError as exc:
                return page(request, "error.html", {"message": validation_message(exc)}, status=422)

        return guarded


router = APIRouter(route_class=HtmlErrorRoute, include_in_schema=False)
FormText = Annotated[str, Form(max_length=MAX_FIELD)]


def _safe_next(target: str) -> str:
    """Only paths inside the dashboard: never an open redirect to another site."""
    return target if target.startswith(UI) and not target.startswith("//") and "\\" not in target else UI


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse(UI, status_code=307)


@router.get(f"{UI}/login")
def login_page(request: Request, next: Annotated[str, Query(max_length=MAX_FIELD)] = UI) -> Response:
    if request.session.get("key_prefix"):
        return RedirectResponse(_safe_next(next), status_code=303)
    return page(request, "login.html", {"next": _safe_next(next)})


@router.post(f"{UI}/login")
def login(
    request: Request, db_session: SessionDep, key: FormText = "", csrf_token: FormText = "", next: FormText = UI
) -> Response:
    check_csrf(request, csrf_token)
    try:
        log_in(request, key, db_session=db_session)
    except AuthenticationError as exc:
        return page(request, "login.html", {"next": _safe_next(next), "error": str(exc)}, status=401)
    return RedirectResponse(_safe_next(next), status_code=303)


@router.post(f"{UI}/logout")
def logout(request: Request, csrf_token: FormText = "") -> RedirectResponse:
    check_csrf(request, csrf_token)
    log_out(request)
    return RedirectResponse(f"{UI}/login", status_code=303)


@router.get(UI)
def models_page(request: Request, team: UiTeamDep, db_session: SessionDep) -> Response:
    models = catalog.list_models(team_id=team.id, db_session=db_session, limit=MAX_ROWS)
    return page(request, "models.html", {"models": models, "nav": "models"}, team=team)


def _variant(row: Benchmark) -> tuple[int, str, float]:
    return (0, "dense", 0.0) if row.allocation is None else (1, row.allocation.method, row.allocation.target)


@router.get(UI + "/models/{fingerprint:path}")
def model_page(
    request: Request, fingerprint: str, team: UiTeamDep, db_session: SessionDep,
    estimator: Annotated[str | None, Query(max_length=32)] = None,
    projection: Annotated[str | None, Query(max_length=256)] = None,
) -> Response:  # fmt: skip
    model = catalog.get_team_model(fingerprint, team_id=team.id, db_session=db_session)
    runs = catalog.list_esd_runs(model, db_session=db_session)
    run = next((r for r in runs if r.estimator == estimator), runs[0] if runs else None)
    if estimator is not None and (estimator not in ESTIMATORS or run is None or run.estimator != estimator):
        raise NotFoundError(f"no ESD run of {model.model_id!r} with estimator {estimator!r}")
    spectra = [] if run is None else catalog.projections_with_eigenvalues(run.id, db_session=db_session)
    if projection is not None and projection not in spectra:
        raise NotFoundError(f"no stored eigenvalues of projection {projection!r} of {model.model_id!r}")
    allocations, allocation_total = results.list_allocations(
        team_id=team.id, model=fingerprint, limit=MAX_ROWS, db_session=db_session
    )
    benchmarks, benchmark_total = results.list_benchmarks(
        team_id=team.id, model=fingerprint, limit=MAX_ROWS, db_session=db_session
    )
    benchmarks.sort(key=lambda b: (b.kind, b.metric, _variant(b), b.id))
    context: dict[str, Any] = {
        "model": model, "runs": runs, "run": run, "allocations": allocations, "allocation_total": allocation_total,
        "benchmarks": benchmarks, "benchmark_total": benchmark_total, "nav": "models",
        "has_sweep": any(b.kind == "perplexity" and b.allocation_id is not None for b in benchmarks),
        "spectra": spectra, "projection": projection or (spectra[0] if spectra else None),
    }  # fmt: skip
    return page(request, "model.html", context, team=team)


@router.get(f"{UI}/leaderboard")
def leaderboard_page(
    request: Request, team: UiTeamDep, db_session: SessionDep,
    model: Annotated[str | None, Query(max_length=512)] = None,
    target: Annotated[str | None, Query(max_length=16)] = None,
) -> Response:  # fmt: skip
    """The stored leaderboard, filterable by model and target; empty select values mean "all"."""
    from acttail.store.leaderboard import leaderboard_table

    model = model or None
    try:
        value = float(target) if target else None
    except ValueError:
        raise ActTailError(f"target must be a number in [0, 1), got {target!r}") from None
    if value is not None and not 0.0 <= value < 1.0:
        raise ActTailError(f"target must be a number in [0, 1), got {target!r}")
    everything = leaderboard_table(db_session, team_id=team.id)
    table = leaderboard_table(db_session, team_id=team.id, model=model, target=value)
    targets = sorted({r["target"] for r in everything["rows"] if r["method"] != "dense"})
    shown_models = [m["model_id"] for m in everything["models"] if model is None or m["model_id"] == model]
    context = {
        "rows": table["rows"], "models": everything["models"], "model": model, "target": value, "targets": targets,
        "shown_models": shown_models if table["rows"] else [],
        "shown_targets": [value] if value is not None else targets, "nav": "leaderboard",
    }  # fmt: skip
    return page(request, "leaderboard.html", context, team=team)


@router.get(UI + "/allocations/{allocation_id:int}")
def allocation_page(request: Request, allocation_id: int, team: UiTeamDep, db_session: SessionDep) -> Response:
    row = results.get_allocation(allocation_id, team_id=team.id, db_session=db_session)
    return page(request, "allocation.html", {"allocation": row, "nav": "models"}, team=team)


@router.get(f"{UI}/jobs")
def jobs_page(request: Request, team: UiTeamDep, db_session: SessionDep) -> Response:
    rows, total = jobs.list_jobs(team_id=team.id, limit=MAX_ROWS, db_session=db_session)
    return page(request, "jobs.html", {"jobs": rows, "total": total, "nav": "jobs"}, team=team)


@router.get(f"{UI}/jobs/new")
def new_job_page(request: Request, team: UiTeamDep) -> Response:
    return page(request, "job_new.html", {"form": JobForm().values(), **CHOICES, "nav": "new"}, team=team)


@router.post(f"{UI}/jobs")
def submit_job_form(
    request: Request, team: UiTeamDep, db_session: SessionDep, settings: SettingsDep, dispatcher: DispatcherDep,
    csrf_token: FormText = "", model_id: FormText = "", estimator: FormText = "ks", targets: FormText = "",
    method: FormText = DEFAULT_METHOD, epsilon: FormText = "", direction: FormText = "",
    perplexity: FormText = "", seqlen: FormText = "", max_tokens: FormText = "", shared: FormText = "",
) -> Response:  # fmt: skip
    """Validate exactly like ``POST /v1/jobs``; an error shows the form again with the message (4xx/503)."""
    check_csrf(request, csrf_token)
    form = JobForm(
        model_id=model_id, estimator=estimator, targets=targets, method=method, epsilon=epsilon,
        direction=direction, perplexity=bool(perplexity), seqlen=seqlen, max_tokens=max_tokens, shared=bool(shared),
    )  # fmt: skip
    try:
        job = submit(form.to_request(), team_id=team.id, db_session=db_session, settings=settings,
                     dispatcher=dispatcher).job  # fmt: skip
    except ActTailError as exc:
        context = {"form": form.values(), **CHOICES, "nav": "new", "error": str(exc)}
        return page(request, "job_new.html", context, team=team, status=status_for(exc))
    return RedirectResponse(f"{UI}/jobs/{job.id}", status_code=303)


@router.get(UI + "/jobs/{job_id}")
def job_page(
    request: Request, job_id: Annotated[str, Path(max_length=36)], team: UiTeamDep, db_session: SessionDep
) -> Response:
    job = jobs.get_job(job_id, team_id=team.id, db_session=db_session)
    return page(request, "job.html", {"job": job, "status": job_status(job, db_session), "nav": "jobs"}, team=team)
