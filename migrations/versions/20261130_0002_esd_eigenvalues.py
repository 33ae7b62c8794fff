"""ESD eigenvalues: esd_projections.eigenvalues, float32 little-endian bytes per projection.

Runs stored before this revision keep NULL (the ESD plot endpoint says their eigenvalues are not
stored); new runs from workers and ``acttail run`` fill it.

Revision ID: 20261130_0002
Revises: 20261129_0001
Create Date: 2026-11-30 05:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261130_0002"
down_revision: str | None = "20261129_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch: SQLite rebuilds the table; PostgreSQL gets a plain ALTER TABLE ... ADD COLUMN (bytea).
    with op.batch_alter_table("esd_projections", schema=None) as batch_op:
        batch_op.add_column(sa.Column("eigenvalues", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("esd_projections", schema=None) as batch_op:
        batch_op.drop_column("eigenvalues")
