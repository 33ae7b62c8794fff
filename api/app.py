"""FastAPI app factory: ``uvicorn --factory api.app:create_app``.

Startup: migrate the database to head (``auto_migrate``), build the dispatcher (celery or
embedded), in embedded mode create a default team on first start and resume jobs a previous
process left unfinished, and start the reaper (``api.reaper``) that re-enqueues dead jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from acttail import __version__
from acttail.settings import Settings
from acttail.store import migrate
from acttail.store.bootstrap import ensure_default_team
from acttail.store.db import make_engine, make_session_factory, pool_options
from api.db_gate import DbGate
from api.dispatch import EmbeddedDispatcher, JobDispatcher, build_dispatcher
from api.errors import install_error_handlers
from api.image_cache import ImageCache
from api.middleware import BodySizeLimit
from api.openapi import install_openapi
from api.reaper import Reaper
from api.routers import allocations, benchmarks, health, jobs, leaderboard, models, plots
from api.ui.install import install_ui

log = logging.getLogger(__name__)

DESCRIPTION = """
Submit a model ID; workers compute its ESD alphas, per-projection activation-sparsity
allocations and sparse benchmarks; read everything back from one team-shared database.
Authenticate with `Authorization: Bearer <key>` (`acttail admin create-key TEAM`).
Errors are JSON `{"detail": "..."}`.
"""


def api_pool_options(settings: Settings) -> dict[str, Any]:
    """The API engine's pool: ``db_pool_size`` connections for requests (the gate admits no more)
    plus ``db_max_overflow`` for readiness probes and embedded job threads, which bypass the gate."""
    return pool_options(
        settings.database_url, size=settings.db_pool_size, overflow=settings.db_max_overflow,
        timeout_s=settings.db_pool_timeout_s, statement_timeout_s=settings.db_statement_timeout_s,
    )  # fmt: skip


def create_app(settings: Settings | None = None, *, dispatcher: JobDispatcher | None = None) -> FastAPI:
    """Build the app. ``dispatcher`` overrides the one ``settings.executor`` selects (tests)."""
    settings = settings or Settings()
    engine = make_engine(settings.database_url, **api_pool_options(settings))
    session_factory = make_session_factory(engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.auto_migrate:
            # Not through the API's engine on PostgreSQL: its statement timeout is for requests.
            migrate.upgrade(settings.database_url, engine=engine if settings.is_sqlite else None)
        active = dispatcher or build_dispatcher(settings, session_factory)
        app.state.dispatcher = active
        if isinstance(active, EmbeddedDispatcher):
            ensure_default_team(settings.api_key_file, session_factory)
            resumed = active.resume()
            if resumed:
                log.info("resumed %d unfinished job(s)", len(resumed))
        reaper = None
        if settings.reaper_interval_s > 0:
            reaper = asyncio.create_task(Reaper(session_factory, active, settings).run(settings.reaper_interval_s))
        try:
            yield
        finally:
            if reaper is not None:
                reaper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reaper
            active.close()
            engine.dispose()

    app = FastAPI(title="ActTail", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.engine = engine
    app.state.session_factory = session_factory
    app.state.read_engine = engine.execution_options(isolation_level="AUTOCOMMIT")  # same pool
    app.state.database_key = str(engine.url)
    app.state.db_gate = DbGate(settings.db_pool_size, settings.db_pool_timeout_s)
    app.state.head_revision = migrate.head_revision()
    app.state.image_cache = ImageCache()
    install_error_handlers(app)
    for module in (health, jobs, models, allocations, benchmarks, plots, leaderboard):
        app.include_router(module.router)
    install_ui(app, settings)
    install_openapi(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    return app
