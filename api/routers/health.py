"""Liveness (process up) and readiness (database at the current schema, broker reachable)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from acttail.store import migrate
from api.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up (no dependencies checked; async, so it needs neither a thread nor a connection)."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
def readyz(request: Request) -> JSONResponse:
    """Database reachable and migrated to head; with the celery executor, the broker answers a ping."""
    checks: dict[str, str] = {}
    state = request.app.state
    try:
        with state.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        current, head = migrate.current_revision(state.engine), state.head_revision
        checks["database"] = "ok" if current == head else f"schema at {current}, expected {head}"
    except Exception as exc:  # any driver error means "not ready"; the message says which
        checks["database"] = f"unreachable: {type(exc).__name__}"
    try:
        state.dispatcher.check()
        checks["executor"] = "ok"
    except Exception as exc:
        checks["executor"] = str(exc)
    ready = all(value == "ok" for value in checks.values())
    body = Health(status="ok" if ready else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)
