"""Alembic scripts (env.py + date-prefixed revisions); a package so wheels can ship them."""
