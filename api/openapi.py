"""The OpenAPI document, made to describe the error bodies the app really sends.

Every error is ``{"detail": "<message>"}`` (``api.errors``), validation errors included. FastAPI's
generated document instead declares 422 as ``HTTPValidationError`` (a list of objects) and leaves
the other errors out. Here every operation gets the error statuses it can answer, each with the
one ``Error`` schema, so a client generated from the document (or schemathesis) reads errors right.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

ERROR_REF = {"$ref": "#/components/schemas/Error"}
GENERATED_ERROR_SCHEMAS = ("HTTPValidationError", "ValidationError")


class Error(BaseModel):
    """Every error response: one readable message."""

    detail: str


def _error_statuses(path: str, operation: dict[str, Any]) -> dict[str, str]:
    """The error statuses an operation can answer, with the reason each one happens."""
    statuses: dict[str, str] = {}
    if operation.get("parameters") or operation.get("requestBody"):
        statuses["422"] = "invalid request (the message says which field and why)"
    if operation.get("requestBody"):
        statuses["400"] = "the body could not be parsed"
        statuses["413"] = "request body too large"
    if operation.get("security"):
        statuses["401"] = "missing, invalid or revoked API key"
        statuses["503"] = "saturated: no database connection in time (Retry-After says when to retry)"
    if "{" in path:
        statuses["404"] = "not found (or not visible to the caller's team)"
    return statuses


def _add_csv(operation: dict[str, Any]) -> None:
    """``?format=csv`` answers 200 with ``text/csv`` (``api.csv_export``): declare it next to JSON."""
    formats = [p for p in operation.get("parameters", []) if p.get("in") == "query" and p.get("name") == "format"]
    ok = operation.get("responses", {}).get("200")
    if formats and ok is not None:
        ok.setdefault("content", {})["text/csv"] = {"schema": {"type": "string"}}


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ERROR_REF}}}


def describe_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with every operation's error responses declared as ``Error``."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name in GENERATED_ERROR_SCHEMAS:
        components.pop(name, None)
    components["Error"] = Error.model_json_schema()
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            _add_csv(operation)
            responses = operation.setdefault("responses", {})
            for status, reason in _error_statuses(path, operation).items():
                responses.setdefault(status, {"description": reason})
            for status, response in responses.items():
                content = response.get("content", {}).get("application/json", {}).get("schema", {})
                generated = content.get("$ref", "").rsplit("/", 1)[-1] in GENERATED_ERROR_SCHEMAS
                if status[0] in "45" and (generated or "content" not in response):
                    responses[status] = _error_response(response.get("description") or "error")
    return schema


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            app.openapi_schema = describe_errors(schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
