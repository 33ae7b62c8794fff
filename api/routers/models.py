"""GET /v1/models and /v1/models/{model}/alphas: what has been analysed, and its alphas."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response

from acttail.registry import ESTIMATORS
from acttail.store import catalog
from api.csv_export import Format, csv_response
from api.deps import SessionDep, TeamDep
from api.schemas import MAX_PAGE, AlphasOut, ModelOut, ProjectionOut

router = APIRouter(prefix="/v1/models", tags=["models"])

ModelKey = Annotated[str, Path(min_length=1, max_length=512, description="model ID (may contain '/') or fingerprint")]


@router.get("", response_model=list[ModelOut])
def list_models(
    team: TeamDep,
    db_session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> list[ModelOut]:
    """Models this team worked on: its own jobs, or allocations/benchmarks it can see (own or shared).

    ESD runs are a cache shared by every team's jobs, but another team's private job never lists
    its model here (model IDs can be private: local paths, unreleased fine-tunes)."""
    return [
        ModelOut.of(m) for m in catalog.list_models(team_id=team.id, limit=limit, offset=offset, db_session=db_session)
    ]


@router.get(
    "/{model:path}/alphas", response_model=AlphasOut,
    responses={404: {"description": "no ESD run, or a model this team did not work on"}},
)  # fmt: skip
def get_alphas(
    model: ModelKey,
    team: TeamDep,
    db_session: SessionDep,
    estimator: Annotated[Literal[ESTIMATORS] | None, Query()] = None,  # type: ignore[valid-type]
    fmt: Format = "json",
) -> AlphasOut | Response:
    """The latest ESD run of the model (optionally for one estimator): alpha and all statistics per projection.

    Only for models listed by ``GET /v1/models`` for this team; any other model is 404, as if it
    did not exist.
    """
    run = catalog.latest_esd_run(model, team_id=team.id, estimator=estimator, db_session=db_session)
    out = AlphasOut.of(run)
    if fmt == "csv":  # one line per projection, every statistic
        rows = (p.model_dump() for p in out.projections)
        return csv_response(rows, list(ProjectionOut.model_fields), f"alphas-{run.estimator}-{run.id}.csv")
    return out
