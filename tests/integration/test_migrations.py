"""Alembic upgrade/downgrade on PostgreSQL and SQLite, and the ORM matching the migrated schema."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from acttail.store import migrate
from acttail.store.db import make_engine
from acttail.store.orm import Base

pytestmark = pytest.mark.integration

TABLES = {"teams", "api_keys", "models", "esd_runs", "esd_projections", "allocations", "benchmarks", "jobs"}


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'migrate.db'}"
    new_pg_database: Callable[[], str] = request.getfixturevalue("new_pg_database")
    return new_pg_database()


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(empty_url: str) -> None:
    migrate.upgrade(empty_url)
    assert _tables(empty_url) == TABLES
    engine = make_engine(empty_url)
    assert migrate.current_revision(engine) == migrate.head_revision()
    engine.dispose()

    migrate.downgrade(empty_url, "base")
    assert _tables(empty_url) == set()

    migrate.upgrade(empty_url)
    migrate.upgrade(empty_url)  # idempotent
    assert _tables(empty_url) == TABLES


def test_orm_matches_migrated_schema(empty_url: str) -> None:
    """No drift: autogenerate against the migrated database finds nothing to change."""
    migrate.upgrade(empty_url)
    engine = make_engine(empty_url)
    try:
        with engine.connect() as connection:
            diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_revisions_are_date_prefixed() -> None:
    versions = sorted(p.name for p in (migrate.migrations_dir() / "versions").glob("*.py") if p.name != "__init__.py")
    assert versions, "no revisions found"
    for name in versions:
        assert name[:8].isdigit() and name[8] == "_", f"{name} is not YYYYMMDD_NNNN_<slug>.py"


def test_cli_db_and_admin_commands(tmp_path: Path) -> None:
    """`acttail db upgrade/current/downgrade` and `acttail admin create-team/create-key` (exit codes, output)."""
    from typer.testing import CliRunner

    from acttail.cli import app
    from acttail.store import teams
    from acttail.store.db import make_session_factory, session_scope

    db = str(tmp_path / "cli.db")
    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade", "--db", db]).exit_code == 0
    current = runner.invoke(app, ["db", "current", "--db", db])
    assert f"current: {migrate.head_revision()}" in current.output
    assert runner.invoke(app, ["admin", "create-team", "lab", "--db", db]).output.startswith("created team 'lab'")
    duplicate = runner.invoke(app, ["admin", "create-team", "lab", "--db", db])
    assert duplicate.exit_code != 0 and "already exists" in str(duplicate.exception)
    key = runner.invoke(app, ["admin", "create-key", "lab", "--db", db]).output.strip()
    engine = make_engine(f"sqlite:///{db}")
    with session_scope(make_session_factory(engine)) as session:
        assert teams.authenticate(key, db_session=session).name == "lab"
    engine.dispose()
    assert runner.invoke(app, ["db", "downgrade", "base", "--db", db]).exit_code == 0
    assert _tables(f"sqlite:///{db}") == set()
