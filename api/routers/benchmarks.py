"""GET /v1/benchmarks: measured numbers (perplexity, zero-shot accuracy, speed), own and shared."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response

from acttail.store import jobs, results
from api.csv_export import Format, csv_response
from api.deps import SessionDep, TeamDep
from api.schemas import MAX_ID, MAX_PAGE, BenchmarkOut, Page

router = APIRouter(prefix="/v1/benchmarks", tags=["benchmarks"])


@router.get(
    "",
    response_model=Page[BenchmarkOut],
    responses={404: {"description": "the job or allocation filtered on is not visible"}},
)
def list_benchmarks(
    team: TeamDep,
    db_session: SessionDep,
    model: Annotated[str | None, Query(max_length=512, description="model ID or fingerprint")] = None,
    kind: Annotated[str | None, Query(max_length=32, description="perplexity | zeroshot | speed")] = None,
    metric: Annotated[str | None, Query(max_length=64)] = None,
    allocation_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    job: Annotated[str | None, Query(max_length=36, description="only the rows a job produced")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    fmt: Format = "json",
) -> Page[BenchmarkOut] | Response:
    ids = None if job is None else jobs.get_job(job, team_id=team.id, db_session=db_session).benchmark_ids
    rows, total = results.list_benchmarks(
        team_id=team.id, model=model, kind=kind, metric=metric, allocation_id=allocation_id, ids=ids,
        limit=limit, offset=offset, db_session=db_session,
    )  # fmt: skip
    items = [BenchmarkOut.of(r, team.id) for r in rows]
    if fmt == "csv":
        return csv_response(
            (i.model_dump(mode="json") for i in items), list(BenchmarkOut.model_fields), "benchmarks.csv"
        )
    return Page[BenchmarkOut].of(items, total, limit, offset)
