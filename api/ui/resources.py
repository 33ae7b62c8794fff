"""What dashboard pages fetch with the session cookie: job status JSON, plot images, downloads.

Errors here stay JSON ``{"detail": ...}`` (401 without a session, 404 for anything the team
cannot see), as on ``/v1``. Images reuse ``api.plot_images`` (same ETag and cache as the API),
restricted to models the team worked on, like the pages that show them.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query
from fastapi.responses import JSONResponse, Response
from sqlalchemy.orm import Session

from acttail.store import catalog, jobs, results
from acttail.store.orm import Job, Model
from api.deps import SessionDep
from api.plot_images import ImageFormat, allocation_image, alphas_image, esd_image, sweep_image
from api.routers import leaderboard
from api.routers.plots import Estimator, ImageCacheDep
from api.schemas import MAX_ID
from api.ui.render import UI
from api.ui.session import UiTeamDep

router = APIRouter(prefix=UI, include_in_schema=False)
IfNoneMatch = Annotated[str | None, Header(alias="If-None-Match", max_length=4096)]
Fingerprint = Annotated[str, Path(min_length=1, max_length=128)]
AllocationId = Annotated[int, Path(ge=1, le=MAX_ID)]
LbModel = Annotated[str, Query(max_length=512)]
LbMode = leaderboard.Mode
LbScoring = leaderboard.Scoring


def job_status(job: Job, db_session: Session) -> dict[str, Any]:
    """What the job pages poll: status, stage, progress, error, and the model page once known."""
    model = db_session.get(Model, job.model_pk) if job.model_pk is not None else None
    return {
        "id": job.id, "status": job.status, "stage": job.stage, "progress": job.progress, "error": job.error,
        "model_id": job.model_id, "model_url": f"{UI}/models/{model.fingerprint}" if model is not None else None,
    }  # fmt: skip


@router.get("/api/jobs")
def jobs_json(team: UiTeamDep, db_session: SessionDep) -> dict[str, Any]:
    rows, total = jobs.list_jobs(team_id=team.id, limit=200, db_session=db_session)
    return {"items": [job_status(job, db_session) for job in rows], "total": total}


@router.get("/api/jobs/{job_id}")
def job_json(job_id: Annotated[str, Path(max_length=36)], team: UiTeamDep, db_session: SessionDep) -> dict[str, Any]:
    return job_status(jobs.get_job(job_id, team_id=team.id, db_session=db_session), db_session)


@router.get("/plots/models/{fingerprint:path}/alphas.{fmt}")
def alphas_image_for_team(
    fingerprint: Fingerprint, fmt: ImageFormat, team: UiTeamDep, db_session: SessionDep, cache: ImageCacheDep,
    estimator: Estimator = None, if_none_match: IfNoneMatch = None,
) -> Response:  # fmt: skip
    model = catalog.get_team_model(fingerprint, team_id=team.id, db_session=db_session)
    run = catalog.latest_esd_run(model.fingerprint, team_id=team.id, estimator=estimator, db_session=db_session)
    return alphas_image(run, fmt, cache=cache, if_none_match=if_none_match)


@router.get("/plots/models/{fingerprint:path}/esd/{projection}.{fmt}")
def esd_image_for_team(
    fingerprint: Fingerprint, projection: Annotated[str, Path(max_length=256)], fmt: ImageFormat, team: UiTeamDep,
    db_session: SessionDep, cache: ImageCacheDep, estimator: Estimator = None, if_none_match: IfNoneMatch = None,
) -> Response:  # fmt: skip
    model = catalog.get_team_model(fingerprint, team_id=team.id, db_session=db_session)
    run = catalog.latest_esd_run(model.fingerprint, team_id=team.id, estimator=estimator, db_session=db_session)
    return esd_image(run, projection, fmt, db_session=db_session, cache=cache, if_none_match=if_none_match)


@router.get("/plots/models/{fingerprint:path}/sweep.{fmt}")
def sweep_image_for_team(
    fingerprint: Fingerprint, fmt: ImageFormat, team: UiTeamDep, db_session: SessionDep, cache: ImageCacheDep,
    if_none_match: IfNoneMatch = None,
) -> Response:  # fmt: skip
    model = catalog.get_team_model(fingerprint, team_id=team.id, db_session=db_session)
    return sweep_image(model.fingerprint, fmt, team_id=team.id, db_session=db_session, cache=cache,
                       if_none_match=if_none_match)  # fmt: skip


@router.get("/plots/allocations/{allocation_id}/heatmap.{fmt}")
def heatmap_image_for_team(
    allocation_id: AllocationId, fmt: ImageFormat, team: UiTeamDep, db_session: SessionDep, cache: ImageCacheDep,
    if_none_match: IfNoneMatch = None,
) -> Response:  # fmt: skip
    row = results.get_allocation(allocation_id, team_id=team.id, db_session=db_session)
    return allocation_image(row, fmt, cache=cache, if_none_match=if_none_match)


@router.get("/plots/leaderboard/sweep.{fmt}")
def leaderboard_sweep_for_team(
    fmt: ImageFormat, team: UiTeamDep, db_session: SessionDep, cache: ImageCacheDep, model: LbModel,
    mode: LbMode = "topk", scoring: LbScoring = "magnitude", if_none_match: IfNoneMatch = None,
) -> Response:  # fmt: skip
    return leaderboard.sweep_response(team.id, db_session, cache, model=model, mode=mode, scoring=scoring, fmt=fmt,
                                      if_none_match=if_none_match)  # fmt: skip


@router.get("/plots/leaderboard/scaling.{fmt}")
def leaderboard_scaling_for_team(
    fmt: ImageFormat, team: UiTeamDep, db_session: SessionDep, cache: ImageCacheDep,
    target: leaderboard.TargetValue = 0.5, if_none_match: IfNoneMatch = None,
) -> Response:  # fmt: skip
    return leaderboard.scaling_response(team.id, db_session, cache, target=target, fmt=fmt, if_none_match=if_none_match)


@router.get("/allocations/{allocation_id}.json")
def allocation_download(allocation_id: AllocationId, team: UiTeamDep, db_session: SessionDep) -> JSONResponse:
    """The allocation document as a file (what ``acttail evaluate --allocation`` reads)."""
    row = results.get_allocation(allocation_id, team_id=team.id, db_session=db_session)
    filename = f"allocation-{row.id}-{row.method}-{row.target:g}.json"
    return JSONResponse(row.document, headers={"Content-Disposition": f'attachment; filename="{filename}"'})
