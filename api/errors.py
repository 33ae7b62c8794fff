"""One table from exception class to HTTP status; every error body is ``{"detail": "<message>"}``."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from acttail.errors import (
    ActTailError,
    AllocationError,
    EstimationError,
    MissingPackageError,
    ModelNotFoundError,
    ModelSourceError,
    UnsupportedArchitectureError,
)
from acttail.store.errors import (
    AuthenticationError,
    ConflictError,
    IdempotencyKeyReusedError,
    InvalidStateError,
    NotFoundError,
)
from api.db_gate import PoolSaturatedError
from api.dispatch import BrokerUnavailableError
from api.plot_images import UndrawableError
from api.ui.forms import FormError
from api.ui.session import CsrfError
from api.validation import InvalidModelIdError

log = logging.getLogger(__name__)

# Looked up along the exception's MRO, so the most specific class wins.
ERROR_STATUS: dict[type[Exception], int] = {
    AuthenticationError: 401,
    CsrfError: 403,
    NotFoundError: 404,
    ConflictError: 409,
    InvalidStateError: 409,
    IdempotencyKeyReusedError: 422,  # IETF idempotency-key draft: same key, different payload
    InvalidModelIdError: 422,
    ModelNotFoundError: 422,
    ModelSourceError: 422,
    UnsupportedArchitectureError: 422,
    AllocationError: 422,
    EstimationError: 422,
    MissingPackageError: 422,
    UndrawableError: 422,
    FormError: 422,
    BrokerUnavailableError: 503,
    PoolSaturatedError: 503,
    ActTailError: 400,
}


def status_for(exc: Exception) -> int:
    for cls in type(exc).__mro__:
        if cls in ERROR_STATUS:
            return ERROR_STATUS[cls]
    return 500


def validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors()[:10]:
        location = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        parts.append(f"{location}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ActTailError)
    async def _acttail_error(_request: Request, exc: ActTailError) -> JSONResponse:
        status = status_for(exc)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        if isinstance(exc, PoolSaturatedError):
            headers = {"Retry-After": str(exc.retry_after_s)}
        return JSONResponse({"detail": str(exc)}, status_code=status, headers=headers)

    @app.exception_handler(DBAPIError)
    async def _database_error(_request: Request, exc: DBAPIError) -> JSONResponse:
        if not exc.connection_invalidated:  # a bug or a broken database: the generic 500
            log.error("database error", exc_info=exc)
            return JSONResponse({"detail": "Internal Server Error"}, status_code=500)
        # The server dropped the connection (restart, failover): SQLAlchemy has invalidated the
        # pool, so a retry gets a fresh connection.
        return JSONResponse({"detail": "the database connection was lost; retry"}, status_code=503,
                            headers={"Retry-After": "1"})  # fmt: skip

    @app.exception_handler(PoolTimeoutError)
    async def _pool_timeout(_request: Request, _exc: PoolTimeoutError) -> JSONResponse:
        # A checkout outside the gate (or a pool smaller than the gate) timed out: same answer.
        saturated = PoolSaturatedError(app.state.settings.db_pool_timeout_s)
        headers = {"Retry-After": str(saturated.retry_after_s)}
        return JSONResponse({"detail": str(saturated)}, status_code=503, headers=headers)

    @app.exception_handler(DataError)
    async def _data_error(_request: Request, exc: DataError) -> JSONResponse:
        # A value that passed the schema but not the database (NUL byte in a string, integer out
        # of range): the client's fault, but never echo the SQL.
        log.info("refused by the database: %s", type(exc.orig).__name__)
        return JSONResponse({"detail": "a value in the request is out of range or contains a NUL byte"}, 422)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": validation_message(exc)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = exc.headers
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(app, request))}
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=headers)


def allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """Every method some route serves at this path: Starlette's 405 names only the first route's,
    but GET and POST /v1/jobs are two routes."""
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches({**request.scope, "method": "GET"})
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)
