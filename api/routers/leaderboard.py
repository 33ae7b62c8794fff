"""GET /v1/leaderboard: every allocation method x scoring x mode side by side, and its two plots.

The rows are the benchmark rows ``benchmarks/leaderboard.py`` stored (settings ``suite:
leaderboard``) that the team may see; ``acttail.store.leaderboard`` adds the change against uniform
TopK |x| with its paired standard error over the test windows. Plots: perplexity against
sparsity per method for one model, and the gain against uniform versus model size at one target.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Path, Query
from fastapi.responses import Response

from acttail.registry import SCORINGS, SPARSITY_MODES
from acttail.store.errors import NotFoundError
from acttail.store.leaderboard import leaderboard_table, scaling_points, sweep_points
from api.deps import SessionDep, TeamDep
from api.image_cache import image_response
from api.plot_images import ImageFormat, _render
from api.routers.plots import IMAGE_RESPONSES, ImageCacheDep

router = APIRouter(prefix="/v1/leaderboard", tags=["leaderboard"])

ModelQuery = Annotated[str | None, Query(max_length=512, description="model ID, e.g. smollm2-135m")]
TargetQuery = Annotated[float | None, Query(ge=0.0, lt=1.0, description="target sparsity, e.g. 0.5")]
TargetValue = Annotated[float, Query(ge=0.0, lt=1.0, description="target sparsity, e.g. 0.5")]
Mode = Annotated[Literal[SPARSITY_MODES], Query()]  # type: ignore[valid-type]
Scoring = Annotated[Literal[SCORINGS], Query()]  # type: ignore[valid-type]
Format = Annotated[ImageFormat, Path(description="svg or png")]
IfNoneMatch = Annotated[str | None, Header(alias="If-None-Match", max_length=4096)]


def table_for(db_session: Any, team_id: int, model: str | None, target: float | None) -> dict[str, Any]:
    """The visible table, 404 naming the filter when it selects nothing (the dashboard shares this)."""
    table = leaderboard_table(db_session, team_id=team_id, model=model, target=target)
    if model is not None and not table["rows"]:
        raise NotFoundError(f"no leaderboard rows of model {model!r} visible to your team")
    if target is not None and not any(r["method"] != "dense" for r in table["rows"]):
        raise NotFoundError(f"no leaderboard rows at target {target:g}")
    return table


@router.get("", responses={404: {"description": "the model or target filter selects no rows"}})
def get_leaderboard(
    team: TeamDep, db_session: SessionDep, model: ModelQuery = None, target: TargetQuery = None
) -> dict[str, Any]:
    """Every stored cell: model, method, target, mode, scoring, perplexity, change vs uniform TopK |x|
    +- paired SE (%), mean zero-shot accuracy where measured, and the benchmark row it came from."""
    return table_for(db_session, team.id, model, target)


def sweep_response(
    team_id: int, db_session: Any, cache: Any, *, model: str, mode: str, scoring: str, fmt: str,
    if_none_match: str | None,
) -> Response:  # fmt: skip
    """The sweep image of one model (API and dashboard)."""
    rows = sweep_points(table_for(db_session, team_id, model, None), model, mode=mode, scoring=scoring)
    if not any(r["method"] != "dense" for r in rows):
        raise NotFoundError(f"no leaderboard rows of {model!r} with mode {mode} and scoring {scoring}")
    title = f"{model} · WikiText-2 test · {mode} / {scoring}"
    return image_response(
        cache, figure="leaderboard-sweep", fmt=fmt, payload={"rows": rows, "title": title}, if_none_match=if_none_match,
        render=lambda: _render(lambda plots: plots.plot_sweep(rows, title=title), fmt),
    )  # fmt: skip


def scaling_response(
    team_id: int, db_session: Any, cache: Any, *, target: float, fmt: str, if_none_match: str | None
) -> Response:
    """The gain-vs-size image at one target (API and dashboard)."""
    points = scaling_points(table_for(db_session, team_id, None, target), target)
    if not points:
        raise NotFoundError(f"no leaderboard gains at target {target:g}")
    title = f"gain vs uniform TopK at {target:.0%} sparsity"
    return image_response(
        cache, figure="leaderboard-scaling", fmt=fmt, payload={"points": points, "title": title},
        if_none_match=if_none_match, render=lambda: _render(lambda plots: plots.plot_gain_scaling(points, title=title), fmt),
    )  # fmt: skip


@router.get("/plots/sweep.{fmt}", response_class=Response, responses=IMAGE_RESPONSES)
def sweep_plot(
    fmt: Format, team: TeamDep, db_session: SessionDep, cache: ImageCacheDep,
    model: Annotated[str, Query(max_length=512)], mode: Mode = "topk", scoring: Scoring = "magnitude",
    if_none_match: IfNoneMatch = None,
) -> Response:  # fmt: skip
    """Perplexity against target sparsity, one line per method (one mode and scoring), dense dashed."""
    return sweep_response(team.id, db_session, cache, model=model, mode=mode, scoring=scoring, fmt=fmt,
                          if_none_match=if_none_match)  # fmt: skip


@router.get("/plots/scaling.{fmt}", response_class=Response, responses=IMAGE_RESPONSES)
def scaling_plot(
    fmt: Format, team: TeamDep, db_session: SessionDep, cache: ImageCacheDep, target: TargetValue = 0.5,
    if_none_match: IfNoneMatch = None,
) -> Response:  # fmt: skip
    """Gain against uniform TopK |x| vs projection parameters: best cell, paper's rule, new rule (+- SE)."""
    return scaling_response(team.id, db_session, cache, target=target, fmt=fmt, if_none_match=if_none_match)
