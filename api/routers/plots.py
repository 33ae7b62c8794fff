"""GET …/plots/*.svg|png: pictures of stored results, with the authorisation of the data they show.

Alphas and ESD histograms come from ESD runs of the models the team may see (like
``/v1/models/{model}/alphas``); heatmaps and sweeps from allocations and benchmarks the team can
see (own or shared). Anything else is 404, never 403.
Every image carries a content ETag and ``Cache-Control: private, no-cache``; ``If-None-Match``
with that tag answers 304 without rendering. Handlers are plain ``def``: matplotlib runs on the
thread pool, never on the event loop.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.responses import Response

from acttail.registry import ESTIMATORS
from acttail.store import catalog, results
from api.deps import SessionDep, TeamDep
from api.image_cache import ImageCache
from api.plot_images import ImageFormat, allocation_image, alphas_image, esd_image, sweep_image
from api.routers.models import ModelKey
from api.schemas import MAX_ID

router = APIRouter(prefix="/v1", tags=["plots"])

IMAGE_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"content": {"image/svg+xml": {}, "image/png": {}}, "description": "the picture"},
    304: {"description": "the client's copy (If-None-Match) is current"},
    404: {"description": "nothing stored to draw, or not visible to this team"},
}

Format = Annotated[ImageFormat, Path(description="svg or png")]
IfNoneMatch = Annotated[str | None, Header(alias="If-None-Match", max_length=4096)]
Estimator = Annotated[Literal[ESTIMATORS] | None, Query(description="default: the newest run")]  # type: ignore[valid-type]


def get_image_cache(request: Request) -> ImageCache:
    return request.app.state.image_cache


ImageCacheDep = Annotated[ImageCache, Depends(get_image_cache)]


@router.get("/models/{model:path}/plots/alphas.{fmt}", response_class=Response, responses=IMAGE_RESPONSES)
def alphas_plot(
    model: ModelKey, fmt: Format, team: TeamDep, db_session: SessionDep, cache: ImageCacheDep,
    estimator: Estimator = None, if_none_match: IfNoneMatch = None,
) -> Response:  # fmt: skip
    """Alpha per layer, one line per projection type, HT-SR band 2 ≤ α ≤ 6 shaded (newest ESD run)."""
    run = catalog.latest_esd_run(model, team_id=team.id, estimator=estimator, db_session=db_session)
    return alphas_image(run, fmt, cache=cache, if_none_match=if_none_match)


@router.get("/models/{model:path}/plots/esd/{projection}.{fmt}", response_class=Response, responses=IMAGE_RESPONSES)
def esd_plot(
    model: ModelKey, projection: Annotated[str, Path(max_length=256)], fmt: Format, team: TeamDep,
    db_session: SessionDep, cache: ImageCacheDep, estimator: Estimator = None, if_none_match: IfNoneMatch = None,
) -> Response:  # fmt: skip
    """Log-log histogram of one projection's eigenvalues with the stored power-law fit (α, x_min).

    404 for an unknown projection (naming some that exist), and for runs stored before eigenvalues
    were kept (the message says so)."""
    run = catalog.latest_esd_run(model, team_id=team.id, estimator=estimator, db_session=db_session)
    return esd_image(run, projection, fmt, db_session=db_session, cache=cache, if_none_match=if_none_match)


@router.get("/models/{model:path}/plots/sweep.{fmt}", response_class=Response, responses=IMAGE_RESPONSES)
def sweep_plot(
    model: ModelKey, fmt: Format, team: TeamDep, db_session: SessionDep, cache: ImageCacheDep,
    if_none_match: IfNoneMatch = None,
) -> Response:  # fmt: skip
    """Perplexity against target sparsity per method, dense as a line, from the stored benchmarks
    (one perplexity setting: the one covering most allocations); mean zero-shot accuracy beside it
    when stored."""
    return sweep_image(model, fmt, team_id=team.id, db_session=db_session, cache=cache, if_none_match=if_none_match)


@router.get("/allocations/{allocation_id}/plots/heatmap.{fmt}", response_class=Response, responses=IMAGE_RESPONSES)
def heatmap_plot(
    allocation_id: Annotated[int, Path(ge=1, le=MAX_ID)], fmt: Format, team: TeamDep, db_session: SessionDep,
    cache: ImageCacheDep, if_none_match: IfNoneMatch = None,
) -> Response:  # fmt: skip
    """The allocation as a layers × projections heatmap of sparsity, centred on the target."""
    row = results.get_allocation(allocation_id, team_id=team.id, db_session=db_session)
    return allocation_image(row, fmt, cache=cache, if_none_match=if_none_match)
