"""Job liveness: jobs.claimed_by, heartbeat_at, dispatched_at and dispatches (the reaper's inputs).

A worker claims a job with its delivery's ID and beats ``heartbeat_at`` while it runs; the API's
reaper re-enqueues a running job whose heartbeat is stale and a queued job the broker lost,
counting ``dispatches`` against ``ACTTAIL_JOB_MAX_ATTEMPTS`` (api.reaper). Rows from before this
revision were each dispatched once: ``dispatches`` = 1 and ``dispatched_at`` = ``updated_at``.

Revision ID: 20261201_0003
Revises: 20261130_0002
Create Date: 2026-12-01 22:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261201_0003"
down_revision: str | None = "20261130_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claimed_by", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("dispatches", sa.Integer(), server_default="0", nullable=False))
    op.execute("UPDATE jobs SET dispatches = 1, dispatched_at = updated_at")


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("dispatches")
        batch_op.drop_column("dispatched_at")
        batch_op.drop_column("heartbeat_at")
        batch_op.drop_column("claimed_by")
