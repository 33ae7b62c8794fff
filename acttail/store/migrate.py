"""Alembic, configured in code so ``acttail db upgrade`` works without an alembic.ini on disk.

The scripts live in ``migrations/`` at the repository root (env.py + date-prefixed revisions);
``alembic.ini`` there is only for developers who run ``alembic`` by hand. On PostgreSQL an
advisory lock serialises concurrent upgrades (API and worker containers starting together).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text

from acttail.store.db import make_engine

ADVISORY_LOCK_ID = 0x41637454  # "ActT"


def migrations_dir() -> Path:
    """The Alembic script directory: next to the package in a checkout, or the installed package."""
    here = Path(__file__).resolve().parents[2] / "migrations"
    if (here / "env.py").is_file():
        return here
    spec = importlib.util.find_spec("migrations")
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations)))
        if (path / "env.py").is_file():
            return path
    raise FileNotFoundError("Alembic scripts not found: expected a 'migrations' directory with env.py")


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def _run(engine: Engine, database_url: str, fn: str, revision: str) -> None:
    config = alembic_config(database_url)
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": ADVISORY_LOCK_ID})
        config.attributes["connection"] = connection
        getattr(command, fn)(config, revision)


def upgrade(database_url: str, revision: str = "head", *, engine: Engine | None = None) -> None:
    """Bring the schema up to ``revision`` (idempotent)."""
    own = engine is None
    engine = engine or make_engine(database_url)
    try:
        _run(engine, database_url, "upgrade", revision)
    finally:
        if own:
            engine.dispose()


def downgrade(database_url: str, revision: str, *, engine: Engine | None = None) -> None:
    """Step the schema down to ``revision`` (``-1``, a revision id, or ``base``)."""
    own = engine is None
    engine = engine or make_engine(database_url)
    try:
        _run(engine, database_url, "downgrade", revision)
    finally:
        if own:
            engine.dispose()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory(str(migrations_dir())).get_current_head()
