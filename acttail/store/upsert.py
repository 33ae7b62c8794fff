"""Dialect-aware INSERT ... ON CONFLICT for PostgreSQL and SQLite (both support the syntax)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import Insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session


def insert_for(db_session: Session, table: Any) -> Any:
    """``INSERT`` construct of the session's dialect, which has ``on_conflict_do_*``."""
    name = db_session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"upserts are implemented for PostgreSQL and SQLite, not {name}")


def insert_ignore(db_session: Session, table: Any, values: dict[str, Any]) -> bool:
    """Insert unless a unique constraint already holds an equal key; True when a row was inserted."""
    # RETURNING, not rowcount: PostgreSQL drivers report -1 for INSERT ... RETURNING, and
    # ON CONFLICT DO NOTHING returns no row when it skipped (SQLite >= 3.35 behaves the same).
    primary = list(table.primary_key.columns)
    stmt: Insert = insert_for(db_session, table).values(**values).on_conflict_do_nothing().returning(*primary)
    return db_session.execute(stmt).first() is not None


def canonical_hash(value: Any) -> str:
    """sha256 of canonical JSON (sorted keys, no spaces): the same dict always hashes the same."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
