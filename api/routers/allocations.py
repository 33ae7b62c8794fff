"""/v1/allocations: list, fetch the exact document the CLI writes, upload one computed elsewhere, delete an upload.

An upload is bounded (``api.json_bounds``) before anything is stored, and it only *claims* which
model its fingerprint belongs to: the shared ``models`` row comes from loading the weights, never
from an upload (``catalog.claim_model``). For weights already loaded, the allocation must cover
exactly their projections, with their parameter counts.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, status
from fastapi.responses import JSONResponse, Response
from sqlalchemy.orm import Session

from acttail.errors import AllocationError
from acttail.store import catalog, results
from acttail.store.orm import Model
from api.csv_export import Format, csv_response
from api.deps import SessionDep, TeamDep
from api.json_bounds import DocumentBoundsError, check_json_bounds
from api.schemas import MAX_ID, MAX_PAGE, AllocationCreated, AllocationSummary, Page

router = APIRouter(prefix="/v1/allocations", tags=["allocations"])

MAX_PROJECTIONS = 10_000  # a 1000-layer model has 7000
MAX_DEPTH = 16  # the documents acttail writes nest 5 deep (auto's params.grid)
MAX_VALUES = 4 * MAX_PROJECTIONS + 10_000
MAX_STRING = 4096
MAX_PARAM_COUNT = 10**13
MAX_PROJECTION_NAME = 256  # esd_projections.name
_NAME_LIMITS = (("model_id", 512), ("fingerprint", 128), ("method", 32), ("estimator", 32), ("created_at", 64))


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
    """Bounds first, before any recursive code (hashing, validation, serialisation) sees the document."""
    try:
        check_json_bounds(doc, what="allocation document", max_depth=MAX_DEPTH, max_nodes=MAX_VALUES,
                          max_string=MAX_STRING)  # fmt: skip
    except DocumentBoundsError as exc:
        raise AllocationError(str(exc)) from None
    for key, limit in _NAME_LIMITS:
        value = doc.get(key)
        if isinstance(value, str) and len(value) > limit:
            raise AllocationError(f"allocation document: {key!r} is longer than {limit} characters")
    sparsities = doc.get("sparsities")
    if isinstance(sparsities, dict):
        if len(sparsities) > MAX_PROJECTIONS:
            raise AllocationError(f"allocation document: more than {MAX_PROJECTIONS} projections")
        if any(len(name) > MAX_PROJECTION_NAME for name in sparsities):
            raise AllocationError(f"allocation document: a projection name is longer than {MAX_PROJECTION_NAME}")
    counts = doc.get("param_counts")
    if isinstance(counts, dict) and any(isinstance(c, int) and c > MAX_PARAM_COUNT for c in counts.values()):
        raise AllocationError(f"allocation document: a param_count exceeds {MAX_PARAM_COUNT}")
    if not doc.get("fingerprint"):
        raise AllocationError("allocation document: 'fingerprint' must be non-empty to be stored")


def _check_against_weights(allocation: Any, model: Model, db_session: Session) -> None:
    """An allocation for loaded weights names exactly their projections, with their sizes."""
    runs = catalog.list_esd_runs(model, db_session=db_session)
    if not runs:
        return
    known = {p.name: p.param_count for p in catalog.get_esd_run_by_id(runs[0].id, db_session=db_session).projections}
    if set(allocation.param_counts) != set(known):
        raise AllocationError(
            f"allocation document: its {len(allocation.param_counts)} projections are not the {len(known)} of the "
            f"model with this fingerprint ({model.model_id})"
        )
    wrong = sorted(name for name, count in allocation.param_counts.items() if known[name] != count)
    if wrong:
        raise AllocationError(f"allocation document: param_count of {wrong[0]} is not the model's {known[wrong[0]]}")


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
    model = catalog.get_model_by_fingerprint(allocation.fingerprint, db_session=db_session)
    if model is not None and catalog.is_verified(model):
        _check_against_weights(allocation, model, db_session)
    else:
        model = catalog.claim_model(allocation.fingerprint, db_session=db_session)
    row, created = results.save_allocation(
        allocation, model=model, team_id=team.id, shared=shared, db_session=db_session
    )
    db_session.commit()
    response.headers["Location"] = f"/v1/allocations/{row.id}"
    if not created:
        response.status_code = status.HTTP_200_OK
    return AllocationCreated(id=row.id, url=f"/v1/allocations/{row.id}", created=created)


@router.delete(
    "/{allocation_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={409: {"description": "a job or benchmark refers to it"}},
)
def delete_allocation(
    allocation_id: Annotated[int, Path(ge=1, le=MAX_ID)], team: TeamDep, db_session: SessionDep
) -> Response:
    """Delete one of the caller's own allocations (an upload); another team's, shared or not, is 404.
    Refused (409) while a job or benchmark result refers to it, so deleting never loses anything else."""
    results.delete_allocation(allocation_id, team_id=team.id, db_session=db_session)
    db_session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
