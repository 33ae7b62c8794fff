"""Initial schema: teams, API keys, models, ESD runs + projections, allocations, benchmarks, jobs.

Revision ID: 20261129_0001
Revises:
Create Date: 2026-11-29 02:15:10.654113
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261129_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.String(length=512), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("revision", sa.String(length=128), nullable=True),
        sa.Column("fingerprint", sa.String(length=128), nullable=False),
        sa.Column("architecture", sa.String(length=64), nullable=False),
        sa.Column("num_layers", sa.Integer(), nullable=False),
        sa.Column("projection_params", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_models")),
        sa.UniqueConstraint("fingerprint", name=op.f("uq_models_fingerprint")),
    )
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_models_model_id"), ["model_id"], unique=False)

    op.create_table(
        "teams",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_teams")),
        sa.UniqueConstraint("name", name=op.f("uq_teams_name")),
    )
    op.create_table(
        "allocations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_pk", sa.Integer(), nullable=False),
        sa.Column("method", sa.String(length=32), nullable=False),
        sa.Column("target", sa.Float(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("params_hash", sa.String(length=64), nullable=False),
        sa.Column("estimator", sa.String(length=32), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("team_id", sa.Integer(), nullable=False),
        sa.Column("shared", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_pk"], ["models.id"], name=op.f("fk_allocations_model_pk_models"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["team_id"], ["teams.id"], name=op.f("fk_allocations_team_id_teams"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_allocations")),
        sa.UniqueConstraint(
            "model_pk", "method", "target", "params_hash", "estimator", "team_id", name="uq_allocations_natural_key"
        ),
    )
    with op.batch_alter_table("allocations", schema=None) as batch_op:
        batch_op.create_index("ix_allocations_model_pk_target", ["model_pk", "target"], unique=False)
        batch_op.create_index(batch_op.f("ix_allocations_team_id"), ["team_id"], unique=False)

    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("team_id", sa.Integer(), nullable=False),
        sa.Column("prefix", sa.String(length=32), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("label", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], name=op.f("fk_api_keys_team_id_teams"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("prefix", name=op.f("uq_api_keys_prefix")),
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_keys_team_id"), ["team_id"], unique=False)

    op.create_table(
        "esd_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_pk", sa.Integer(), nullable=False),
        sa.Column("estimator", sa.String(length=32), nullable=False),
        sa.Column("elapsed_s", sa.Float(), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("team_id", sa.Integer(), nullable=True),
        sa.Column("shared", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_pk"], ["models.id"], name=op.f("fk_esd_runs_model_pk_models"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], name=op.f("fk_esd_runs_team_id_teams"), ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_esd_runs")),
        sa.UniqueConstraint("model_pk", "estimator", name=op.f("uq_esd_runs_model_pk_estimator")),
    )
    op.create_table(
        "benchmarks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_pk", sa.Integer(), nullable=False),
        sa.Column("allocation_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("metric", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("versions", sa.JSON(), nullable=False),
        sa.Column("team_id", sa.Integer(), nullable=False),
        sa.Column("shared", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["allocation_id"],
            ["allocations.id"],
            name=op.f("fk_benchmarks_allocation_id_allocations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["model_pk"], ["models.id"], name=op.f("fk_benchmarks_model_pk_models"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["team_id"], ["teams.id"], name=op.f("fk_benchmarks_team_id_teams"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_benchmarks")),
        sa.UniqueConstraint("model_pk", "kind", "metric", "key_hash", "team_id", name="uq_benchmarks_natural_key"),
    )
    with op.batch_alter_table("benchmarks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_benchmarks_allocation_id"), ["allocation_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_benchmarks_model_pk"), ["model_pk"], unique=False)
        batch_op.create_index(batch_op.f("ix_benchmarks_team_id"), ["team_id"], unique=False)

    op.create_table(
        "esd_projections",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("layer", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("d_out", sa.Integer(), nullable=False),
        sa.Column("d_in", sa.Integer(), nullable=False),
        sa.Column("param_count", sa.BigInteger(), nullable=False),
        sa.Column("alpha", sa.Float(), nullable=True),
        sa.Column("x_min", sa.Float(), nullable=True),
        sa.Column("ks_distance", sa.Float(), nullable=True),
        sa.Column("num_tail", sa.Integer(), nullable=True),
        sa.Column("spectral_norm", sa.Float(), nullable=True),
        sa.Column("log_frobenius_norm", sa.Float(), nullable=True),
        sa.Column("stable_rank", sa.Float(), nullable=True),
        sa.Column("alpha_weighted", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"], ["esd_runs.id"], name=op.f("fk_esd_projections_run_id_esd_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_esd_projections")),
        sa.UniqueConstraint("run_id", "name", name=op.f("uq_esd_projections_run_id_name")),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("team_id", sa.Integer(), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("model_id", sa.String(length=512), nullable=False),
        sa.Column("queue", sa.String(length=16), nullable=False),
        sa.Column("shared", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("stage", sa.String(length=64), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=128), nullable=True),
        sa.Column("active_key", sa.String(length=64), nullable=True),
        sa.Column("model_pk", sa.Integer(), nullable=True),
        sa.Column("esd_run_id", sa.Integer(), nullable=True),
        sa.Column("allocation_ids", sa.JSON(), nullable=False),
        sa.Column("benchmark_ids", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["esd_run_id"], ["esd_runs.id"], name=op.f("fk_jobs_esd_run_id_esd_runs"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(["model_pk"], ["models.id"], name=op.f("fk_jobs_model_pk_models"), ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], name=op.f("fk_jobs_team_id_teams"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sa.UniqueConstraint("team_id", "active_key", name=op.f("uq_jobs_team_id_active_key")),
        sa.UniqueConstraint("team_id", "idempotency_key", name=op.f("uq_jobs_team_id_idempotency_key")),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_jobs_model_id"), ["model_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_jobs_status"), ["status"], unique=False)
        batch_op.create_index("ix_jobs_team_id_created_at", ["team_id", "created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_team_id_created_at")
        batch_op.drop_index(batch_op.f("ix_jobs_status"))
        batch_op.drop_index(batch_op.f("ix_jobs_model_id"))

    op.drop_table("jobs")
    op.drop_table("esd_projections")
    with op.batch_alter_table("benchmarks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_benchmarks_team_id"))
        batch_op.drop_index(batch_op.f("ix_benchmarks_model_pk"))
        batch_op.drop_index(batch_op.f("ix_benchmarks_allocation_id"))

    op.drop_table("benchmarks")
    op.drop_table("esd_runs")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_keys_team_id"))

    op.drop_table("api_keys")
    with op.batch_alter_table("allocations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_allocations_team_id"))
        batch_op.drop_index("ix_allocations_model_pk_target")

    op.drop_table("allocations")
    op.drop_table("teams")
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_models_model_id"))

    op.drop_table("models")
