"""Adds the dashboard to an app: signed-cookie sessions, static files, pages; ``/`` redirects to ``/ui``."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.middleware.sessions import SessionMiddleware
from starlette.staticfiles import StaticFiles

from acttail.settings import Settings
from api.ui import resources, views
from api.ui.render import STATIC_DIR, UI
from api.ui.session import COOKIE_NAME, MAX_AGE_S, session_secret


def install_ui(app: FastAPI, settings: Settings) -> None:
    app.add_middleware(
        SessionMiddleware, secret_key=session_secret(settings), session_cookie=COOKIE_NAME, max_age=MAX_AGE_S,
        same_site="lax", https_only=settings.session_https_only,
    )  # fmt: skip
    app.mount(f"{UI}/static", StaticFiles(directory=STATIC_DIR), name="ui-static")
    app.include_router(views.router)
    app.include_router(resources.router)
