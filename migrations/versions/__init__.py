"""Alembic revisions, ids YYYYMMDD_NNNN."""
