"""Jinja2 templates (autoescaped) and the headers every dashboard page carries.

Pages load only same-origin scripts, styles and images (Content-Security-Policy without
'unsafe-inline'), so text from the database can never run as script even if escaping failed.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.templating import Jinja2Templates

from acttail import __version__
from acttail.store.key_cache import TeamRef
from api.ui.session import csrf_token

UI = "/ui"
TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "templates"
STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; object-src 'none'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _number(value: float | None) -> str:
    """Six significant digits: what a table needs; the exact value stays in data-value."""
    return "—" if value is None else f"{value:.6g}"


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.4g}%"


def _when(value: datetime | None) -> str:
    if value is None:
        return "—"
    if value.tzinfo is None:  # SQLite returns naive datetimes; every stored time is UTC
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _compact(value: Any) -> str:
    """Settings and parameters as ``key=value`` pairs, sorted (for table cells)."""
    if isinstance(value, dict):
        return ", ".join(f"{k}={_compact(v)}" for k, v in sorted(value.items()))
    if isinstance(value, list):
        return "/".join(_compact(v) for v in value)
    return str(value)


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        autoescape=select_autoescape(["html"], default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(number=_number, percent=_percent, when=_when, compact=_compact,
                       pretty=lambda v: json.dumps(v, indent=2, sort_keys=True))  # fmt: skip
    env.globals.update(UI=UI, version=__version__)
    return env


templates = Jinja2Templates(env=_environment())


def page(
    request: Request, name: str, context: dict[str, Any], *, team: TeamRef | None = None, status: int = 200
) -> Response:
    """Render ``name`` with the common context (team, CSRF token, active nav entry)."""
    full = {"team": team, "csrf": csrf_token(request), "nav": "", "error": None, **context}
    return templates.TemplateResponse(request, name, full, status_code=status, headers=PAGE_HEADERS)
