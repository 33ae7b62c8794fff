"""Upload placeholders: model rows only uploads created now name nothing.

Before this revision an uploaded allocation for unknown weights created the shared ``models`` row
with the uploader's ``model_id``, layer count and parameter total, and a later job that loaded
those weights showed them (issue 14). Uploads now only claim (``catalog.claim_model``): the row of
``source = 'upload'`` is a placeholder named by its fingerprint, filled in by the first job that
loads the weights. This revision turns the existing upload rows into such placeholders. Each
claim survives in its uploader's allocation document, so the listing still shows it there.
Downgrading keeps the placeholders (the claims were never facts to restore).

Revision ID: 20261201_0004
Revises: 20261201_0003
Create Date: 2026-12-01 23:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261201_0004"
down_revision: str | None = "20261201_0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        sa.text(
            "UPDATE models SET model_id = fingerprint, revision = NULL, architecture = '', num_layers = 0, "
            "projection_params = 0 WHERE source = 'upload'"
        )
    )


def downgrade() -> None:
    pass
