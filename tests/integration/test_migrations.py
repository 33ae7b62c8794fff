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
