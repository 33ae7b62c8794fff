"""Service commands: ``acttail serve``, ``acttail db upgrade|downgrade|current``, ``acttail admin ...``.

Settings come from ``ACTTAIL_*`` environment variables (acttail.settings); ``--db`` overrides
the database (a SQLAlchemy URL or a path to a SQLite file).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from acttail.errors import ActTailError

DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db", help="Database URL or SQLite file path (default: ACTTAIL_DATABASE_URL or ~/.acttail/acttail.db)."
    ),
]

db_app = typer.Typer(help="Database schema migrations (Alembic).", no_args_is_help=True)
admin_app = typer.Typer(help="Teams and API keys.", no_args_is_help=True)


def database_url(db: str | None) -> str | None:
    """``--db`` as a URL: anything with ``://`` is taken as is, anything else is a SQLite path."""
    if db is None:
        return None
    if "://" in db:
        return db
    return f"sqlite:///{Path(db).expanduser().resolve()}"


def build_settings(db: str | None = None, **overrides: Any) -> Any:
    from pydantic import ValidationError

    from acttail.settings import Settings

    values = {key: value for key, value in overrides.items() if value is not None}
    url = database_url(db)
    if url is not None:
        values["database_url"] = url
    try:
        return Settings(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ActTailError(f"invalid setting {'.'.join(map(str, first['loc']))}: {first['msg']}") from None


def serve(
    host: Annotated[str | None, typer.Option("--host", help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option("--port", min=1, max=65535, help="Port (default 8000).")] = None,
    db: DbOpt = None,
    executor: Annotated[
        str | None, typer.Option("--executor", help="embedded | celery (default: ACTTAIL_EXECUTOR).")
    ] = None,
) -> None:
    """Run the API. Embedded mode (default): SQLite, jobs run in this process, no Redis needed."""
    import uvicorn

    from acttail.store import migrate
    from acttail.store.bootstrap import ensure_default_team
    from acttail.store.db import make_engine, make_session_factory
    from api.app import create_app

    if executor is not None and executor not in ("embedded", "celery"):
        raise ActTailError(f"--executor must be 'embedded' or 'celery', not {executor!r}")
    settings = build_settings(db, host=host, port=port, executor=executor)
    migrate.upgrade(settings.database_url)
    if settings.executor == "embedded":
        engine = make_engine(settings.database_url)
        key = ensure_default_team(settings.api_key_file, make_session_factory(engine))
        engine.dispose()
        if key is not None:
            typer.echo(f"Created team 'default'. API key (shown once, also saved to {settings.api_key_file}):")
            typer.echo(f"  {key}")
        elif settings.api_key_file.exists():
            typer.echo(f"API key of team 'default': {settings.api_key_file}")
    url = f"http://{settings.host}:{settings.port}"
    typer.echo(f"ActTail API on {url} ({settings.executor} executor); API docs at {url}/docs")
    typer.echo(f"Dashboard: {url}/ui (log in with a team API key)")
    common: dict[str, Any] = {
        "host": settings.host, "port": settings.port, "log_level": "info", "timeout_keep_alive": settings.api_keep_alive_s,
    }  # fmt: skip
    if settings.api_workers == 1:
        uvicorn.run(create_app(settings), **common)
        return
    # Worker processes build their own app from the environment: hand the command line's overrides on.
    os.environ["ACTTAIL_DATABASE_URL"] = settings.database_url
    os.environ["ACTTAIL_EXECUTOR"] = settings.executor
    typer.echo(f"{settings.api_workers} worker processes")
    uvicorn.run("api.app:create_app", factory=True, workers=settings.api_workers, **common)


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="Target revision.")] = "head", db: DbOpt = None) -> None:
    """Apply migrations up to REVISION (default head)."""
    from acttail.store import migrate

    settings = build_settings(db)
    migrate.upgrade(settings.database_url, revision)
    typer.echo(f"database at revision {revision}")


@db_app.command("downgrade")
def db_downgrade(
    revision: Annotated[str, typer.Argument(help="Target revision: an id, -1, or base.")], db: DbOpt = None
) -> None:
    """Revert migrations down to REVISION."""
    from acttail.store import migrate

    settings = build_settings(db)
    migrate.downgrade(settings.database_url, revision)
    typer.echo(f"database downgraded to {revision}")


@db_app.command("current")
def db_current(db: DbOpt = None) -> None:
    """Print the database's revision and the newest one available."""
    from acttail.store import migrate
    from acttail.store.db import make_engine

    engine = make_engine(build_settings(db).database_url)
    try:
        typer.echo(f"current: {migrate.current_revision(engine)}  head: {migrate.head_revision()}")
    finally:
        engine.dispose()


def _session_factory(db: str | None) -> Any:
    from acttail.store import migrate
    from acttail.store.db import make_engine, make_session_factory

    settings = build_settings(db)
    if settings.auto_migrate:
        migrate.upgrade(settings.database_url)
    return make_session_factory(make_engine(settings.database_url))


@admin_app.command("create-team")
def create_team(name: Annotated[str, typer.Argument(help="Team name (1-100 characters).")], db: DbOpt = None) -> None:
    """Create a team (then give it a key with create-key)."""
    from acttail.store import teams
    from acttail.store.db import session_scope

    with session_scope(_session_factory(db)) as session:
        team = teams.create_team(name, db_session=session)
        typer.echo(f"created team {team.name!r} (id {team.id})")


@admin_app.command("create-key")
def create_key(
    team: Annotated[str, typer.Argument(help="Team name.")],
    label: Annotated[str, typer.Option("--label", help="A note to recognise the key by.")] = "",
    db: DbOpt = None,
) -> None:
    """Create an API key for TEAM and print it. It is stored hashed: this is the only time it is shown."""
    from acttail.store import teams
    from acttail.store.db import session_scope

    with session_scope(_session_factory(db)) as session:
        key = teams.create_api_key(teams.get_team_by_name(team, db_session=session), db_session=session, label=label)
    typer.echo(key)


@admin_app.command("revoke-key")
def revoke_key(
    prefix: Annotated[str, typer.Argument(help="The 12 hex characters after 'act_' in the key.")], db: DbOpt = None
) -> None:
    """Revoke an API key by its prefix."""
    from acttail.store import teams
    from acttail.store.db import session_scope

    with session_scope(_session_factory(db)) as session:
        teams.revoke_api_key(prefix, db_session=session)
    typer.echo(f"revoked key act_{prefix}_…")


def register(app: typer.Typer) -> None:
    """Attach this module's commands to the main app."""
    app.command("serve")(serve)
    app.add_typer(db_app, name="db")
    app.add_typer(admin_app, name="admin")
