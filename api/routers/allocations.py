"""/v1/allocations: list, fetch the exact document the CLI writes, upload one computed elsewhere."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, status
from fastapi.responses import JSONResponse, Response

from acttail.errors import AllocationError
from acttail.store import catalog, results
from api.csv_export import Format, csv_response
from api.deps import SessionDep, TeamDep
from api.schemas import MAX_ID, MAX_PAGE, AllocationCreated, AllocationSummary, Page

router = APIRouter(prefix="/v1/allocations", tags=["allocations"])

MAX_PROJECTIONS = 100_000
_LAYER = re.compile(r"\.layers\.(\d+)\.")


@router.get("", response_model=Page[AllocationSummary])
def list_allocations(
    team: TeamDep,
    db_session: SessionDep,
    model: Annotated[str | None, Query(max_length=512, description="model ID or fingerprint")] = None,
    target: Annotated[float | None, Query(ge=0.0, lt=1.0)] = None,
    method: Annotated[str | None, Query(max_length=32)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    fmt: Format = "json",
) -> Page[AllocationSummary] | Response:
    rows, total = results.list_allocations(
        team_id=team.id, model=model, target=target, method=method, limit=limit, offset=offset, db_session=db_session
    )
    items = [AllocationSummary.of(r, team.id) for r in rows]
    if fmt == "csv":
        return csv_response(
            (i.model_dump(mode="json") for i in items), list(AllocationSummary.model_fields), "allocations.csv"
        )
    return Page[AllocationSummary].of(items, total, limit, offset)


@router.get("/{allocation_id}", responses={200: {"description": "the acttail.allocation JSON document"}})
def get_allocation(
    allocation_id: Annotated[int, Path(ge=1, le=MAX_ID)], team: TeamDep, db_session: SessionDep, fmt: Format = "json"
) -> Response:
    """The allocation document exactly as ``acttail allocate`` writes it (format acttail.allocation v1);
    as CSV: one line per projection (name, sparsity, param_count)."""
    row = results.get_allocation(allocation_id, team_id=team.id, db_session=db_session)
    if fmt == "csv":
        doc = row.document
        lines = (
            {"name": n, "sparsity": s, "param_count": doc["param_counts"][n]} for n, s in doc["sparsities"].items()
        )
        return csv_response(lines, ["name", "sparsity", "param_count"], f"allocation-{row.id}.csv")
    return JSONResponse(row.document)


def _check_limits(doc: dict[str, Any]) -> None:
    for key, limit in (("model_id", 512), ("fingerprint", 128), ("method", 32), ("estimator", 32)):
        value = doc.get(key)
        if isinstance(value, str) and len(value) > limit:
            raise AllocationError(f"allocation document: {key!r} is longer than {limit} characters")
    sparsities = doc.get("sparsities")
    if isinstance(sparsities, dict) and len(sparsities) > MAX_PROJECTIONS:
        raise AllocationError(f"allocation document: more than {MAX_PROJECTIONS} projections")
    if not doc.get("fingerprint"):
        raise AllocationError("allocation document: 'fingerprint' must be non-empty to be stored")


@router.post(
    "",
    response_model=AllocationCreated,
    status_code=status.HTTP_201_CREATED,
    responses={200: {"model": AllocationCreated, "description": "an equal allocation already existed"}},
)
def upload_allocation(
    document: Annotated[
        dict[str, Any], Body(description="an acttail.allocation document (as `acttail allocate` writes)")
    ],
    response: Response,
    team: TeamDep,
    db_session: SessionDep,
    shared: Annotated[bool, Query(description="publish it to every team")] = False,
) -> AllocationCreated:
    """Store an allocation computed elsewhere, after the same validation ``Allocation.load`` applies."""
    from acttail.allocate import Allocation  # lazy: the allocation module pulls in the science core

    _check_limits(document)
    allocation = Allocation.from_dict(document)
    layers = [int(m.group(1)) for name in allocation.sparsities if (m := _LAYER.search(name))]
    model = catalog.get_model_by_fingerprint(allocation.fingerprint, db_session=db_session)
    if model is None:
        model = catalog.get_or_create_model(
            {
                "model_id": allocation.model_id, "source": "upload", "revision": None,
                "fingerprint": allocation.fingerprint, "architecture": "",
                "num_layers": max(layers) + 1 if layers else 0,
                "projection_params": sum(allocation.param_counts.values()),
            },
            db_session=db_session,
        )  # fmt: skip
    row, created = results.save_allocation(
        allocation, model=model, team_id=team.id, shared=shared, db_session=db_session
    )
    db_session.commit()
    response.headers["Location"] = f"/v1/allocations/{row.id}"
    if not created:
        response.status_code = status.HTTP_200_OK
    return AllocationCreated(id=row.id, url=f"/v1/allocations/{row.id}", created=created)
