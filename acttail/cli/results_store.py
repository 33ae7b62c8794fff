"""``acttail run`` / ``acttail evaluate`` record their results in the service's results database.

The database is the one ``acttail serve`` and the API use (``--db``, else ``ACTTAIL_DATABASE_URL``,
else SQLite in ``$ACTTAIL_HOME``), migrated to head like the admin commands do; the rows belong
to team ``default`` (created with its key on an empty database, as ``acttail serve`` does), so
``GET /v1/models``, ``/v1/allocations`` and ``/v1/benchmarks`` show them. The store is opened
before the model is loaded, so a wrong ``--db`` fails in a second, not after the evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import typer

from acttail.cli.service_commands import DbOpt, build_settings
from acttail.errors import ActTailError

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

    from acttail.store.pipeline_results import StoreSink

__all__ = ["DbOpt", "NoStoreOpt", "ResultsStore", "database_error", "open_results_store"]

NoStoreOpt = Annotated[bool, typer.Option("--no-store", help="Do not record the results in the results database.")]


@dataclass(frozen=True)
class ResultsStore:
    """An open results database and the team the CLI writes as."""

    shown_url: str  # password hidden
    engine: Engine
    session_factory: sessionmaker[Session]
    team_id: int
    sink: StoreSink  # what the pipeline writes through, as a service job does
    browse_hint: str = ""  # how to open these results in the dashboard


def database_error(shown_url: str, exc: Exception) -> ActTailError:
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return ActTailError(f"results database {shown_url}: {reason[0] if reason else type(exc).__name__}")


def open_results_store(db: str | None, *, command: str) -> ResultsStore:
    """Migrate the database if allowed (``ACTTAIL_AUTO_MIGRATE``) and find or create team ``default``."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    from acttail.store import migrate
    from acttail.store.bootstrap import default_team
    from acttail.store.db import make_engine, make_session_factory

    settings = build_settings(db)
    try:
        shown_url = make_url(settings.database_url).render_as_string(hide_password=True)
    except ArgumentError:
        raise ActTailError(f"results database: {settings.database_url!r} is not a database URL") from None
    try:
        engine = make_engine(settings.database_url)
    except (SQLAlchemyError, ImportError) as exc:  # e.g. a dialect whose driver is not installed
        raise database_error(shown_url, exc) from None
    try:
        if settings.auto_migrate:
            migrate.upgrade(settings.database_url, engine=engine)
        factory = make_session_factory(engine)
        team_id, key = default_team(settings.api_key_file, factory, label=f"created by acttail {command}")
    except BaseException as exc:
        engine.dispose()
        if isinstance(exc, SQLAlchemyError | OSError):
            raise database_error(shown_url, exc) from None
        raise
    if key is not None:
        typer.echo(f"Created team 'default' in {shown_url}; its API key is in {settings.api_key_file}", err=True)
    serve = "acttail serve" if db is None else f"acttail serve --db {db}"
    hint = (
        f"to browse them: run `{serve}`, open http://{settings.host}:{settings.port}/ui "
        f"and log in with the API key in {settings.api_key_file}"
    )
    from acttail.store.pipeline_results import StoreSink

    sink = StoreSink(factory, team_id, meta={"origin": "cli"})
    return ResultsStore(shown_url, engine, factory, team_id, sink, hint)
