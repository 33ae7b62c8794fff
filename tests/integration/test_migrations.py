"""Alembic upgrade/downgrade on PostgreSQL and SQLite, and the ORM matching the migrated schema."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from acttail.store import migrate
from acttail.store.db import make_engine
from acttail.store.orm import Base
from acttail.store.spectra import decode_eigenvalues, encode_eigenvalues

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


def _projection_columns(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return {column["name"] for column in inspect(engine).get_columns("esd_projections")}
    finally:
        engine.dispose()


def test_eigenvalues_revision_up_and_down_keeps_the_rows(empty_url: str) -> None:
    """20261130_0002 adds esd_projections.eigenvalues (NULL for runs stored before it) and drops it again."""
    migrate.upgrade(empty_url, "20261129_0001")
    assert "eigenvalues" not in _projection_columns(empty_url)
    engine = make_engine(empty_url)
    with engine.begin() as connection:  # a run stored before the revision
        connection.execute(
            text(
                "INSERT INTO models (id, model_id, source, fingerprint, architecture, num_layers, projection_params, "
                "created_at) VALUES (1, 'org/old', 'hub', 'fp-old', 'llama', 1, 16, CURRENT_TIMESTAMP)"
            )
        )
        connection.execute(
            text(
                "INSERT INTO esd_runs (id, model_pk, estimator, elapsed_s, meta, shared, created_at) "
                "VALUES (1, 1, 'ks', 0.0, '{}', true, CURRENT_TIMESTAMP)"
            )
        )
        connection.execute(text(
            "INSERT INTO esd_projections (id, run_id, name, layer, kind, d_out, d_in, param_count, alpha) "
            "VALUES (1, 1, 'model.layers.0.self_attn.q_proj', 0, 'q', 4, 4, 16, 2.5)"))  # fmt: skip

    migrate.upgrade(empty_url, "20261130_0002")
    assert migrate.current_revision(engine) == "20261130_0002"
    blob = encode_eigenvalues([0.5, 4.0, 1.0, 2.0], expected=4)
    with engine.begin() as connection:
        assert connection.execute(text("SELECT eigenvalues, alpha FROM esd_projections")).one() == (None, 2.5)
        connection.execute(text("UPDATE esd_projections SET eigenvalues = :blob"), {"blob": blob})
        stored = connection.execute(text("SELECT eigenvalues FROM esd_projections")).scalar_one()
    assert bytes(stored) == blob and decode_eigenvalues(bytes(stored)).tolist() == [0.5, 1.0, 2.0, 4.0]

    migrate.downgrade(empty_url, "20261129_0001")
    assert "eigenvalues" not in _projection_columns(empty_url)
    with engine.connect() as connection:  # the statistics survive the table rebuild (SQLite batch mode)
        assert connection.execute(text("SELECT name, alpha FROM esd_projections")).one() == (
            "model.layers.0.self_attn.q_proj", 2.5)  # fmt: skip
    migrate.upgrade(empty_url)
    assert "eigenvalues" in _projection_columns(empty_url)
    engine.dispose()


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


def _job_columns(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return {column["name"] for column in inspect(engine).get_columns("jobs")}
    finally:
        engine.dispose()


LIVENESS_COLUMNS = {"claimed_by", "heartbeat_at", "dispatched_at", "dispatches"}


def test_job_liveness_revision_backfills_and_downgrades(empty_url: str) -> None:
    """20261201_0003 adds the reaper's columns; a job stored before it counts as dispatched once, then."""
    migrate.upgrade(empty_url, "20261130_0002")
    assert not LIVENESS_COLUMNS & _job_columns(empty_url)
    engine = make_engine(empty_url)
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO teams (id, name, created_at) VALUES (1, 'lab', CURRENT_TIMESTAMP)"))
        connection.execute(text(
            "INSERT INTO jobs (id, team_id, request, request_hash, model_id, queue, shared, status, stage, progress, "
            "attempts, active_key, allocation_ids, benchmark_ids, created_at, updated_at) VALUES ('j-old', 1, '{}', "
            "'h', 'org/m', 'cpu', false, 'queued', 'queued', 0.0, 0, 'h', '[]', '[]', :at, :at)"),
            {"at": "2026-11-30 10:00:00"})  # fmt: skip

    migrate.upgrade(empty_url, "20261201_0003")
    assert _job_columns(empty_url) >= LIVENESS_COLUMNS
    with engine.connect() as connection:
        row = connection.execute(
            text("SELECT dispatches, dispatched_at, updated_at, heartbeat_at, claimed_by FROM jobs")
        ).one()
    assert (row.dispatches, row.heartbeat_at, row.claimed_by) == (1, None, None)
    assert row.dispatched_at == row.updated_at is not None

    migrate.downgrade(empty_url, "20261130_0002")
    assert not LIVENESS_COLUMNS & _job_columns(empty_url)
    with engine.connect() as connection:  # the job survives the table rebuild (SQLite batch mode)
        assert connection.execute(text("SELECT id, status FROM jobs")).one() == ("j-old", "queued")
    migrate.upgrade(empty_url)
    assert _job_columns(empty_url) >= LIVENESS_COLUMNS
    engine.dispose()


def test_upload_placeholder_revision_neutralises_upload_claims_only(empty_url: str) -> None:
    """20261201_0004: a models row an upload created stops carrying the uploader's claim; rows
    from loaded weights are untouched."""
    migrate.upgrade(empty_url, "20261201_0003")
    engine = make_engine(empty_url)
    insert = text(
        "INSERT INTO models (model_id, source, revision, fingerprint, architecture, num_layers, projection_params, "
        "created_at) VALUES (:m, :s, :r, :f, :a, :n, :p, CURRENT_TIMESTAMP)"
    )
    with engine.begin() as connection:
        connection.execute(insert, {"m": "evil/renamed", "s": "upload", "r": "main", "f": "fp-claim", "a": "",
                                    "n": 1, "p": 1})  # fmt: skip
        connection.execute(insert, {"m": "org/real", "s": "hub", "r": "main", "f": "fp-real", "a": "llama",
                                    "n": 2, "p": 16384})  # fmt: skip
    migrate.upgrade(empty_url)
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT fingerprint, model_id, source, revision, num_layers, projection_params FROM models "
                 "ORDER BY fingerprint")
        ).all()  # fmt: skip
    assert [tuple(r) for r in rows] == [
        ("fp-claim", "fp-claim", "upload", None, 0, 0),
        ("fp-real", "org/real", "hub", "main", 2, 16384),
    ]
    migrate.downgrade(empty_url, "20261201_0003")  # keeps the placeholders
    migrate.upgrade(empty_url)
    engine.dispose()
