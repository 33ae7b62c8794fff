"""Engine and session factories for PostgreSQL and SQLite.

Data-access functions take a keyword-only ``db_session`` and only flush; the caller (a request,
a job stage) commits once with :func:`session_scope`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 30_000


def make_engine(database_url: str, **kwargs: Any) -> Engine:
    """An engine for ``database_url``; SQLite gets WAL, foreign keys and a busy timeout.

    WAL lets the API read while an embedded worker thread writes; the busy timeout makes
    concurrent writers wait for the lock instead of failing with "database is locked".
    """
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        connect_args = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        engine = create_engine(url, connect_args=connect_args, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def pool_options(
    database_url: str, *, size: int, overflow: int, timeout_s: float, statement_timeout_s: float = 0.0
) -> dict[str, Any]:
    """``make_engine`` keyword arguments for a server process: a bounded pool that fails fast.

    ``timeout_s`` is how long a checkout waits before raising (the API turns that into a 503);
    on PostgreSQL ``statement_timeout_s`` also bounds every statement and any transaction left
    idle, so no connection can be held by a forgotten transaction (0 leaves both unbounded).
    An in-memory SQLite database keeps its single-connection pool.
    """
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
        return {}
    # No pre-ping: it costs a round trip per checkout, one in two of a typical read. A connection
    # the server dropped fails its first statement instead, which invalidates the whole pool
    # (the API answers that one request 503, ``api.errors``).
    options: dict[str, Any] = {
        "pool_size": size, "max_overflow": overflow, "pool_timeout": timeout_s, "pool_pre_ping": False,
    }  # fmt: skip
    if url.get_backend_name() == "postgresql" and statement_timeout_s > 0:
        ms = int(statement_timeout_s * 1000)
        options["connect_args"] = {"options": f"-c statement_timeout={ms} -c idle_in_transaction_session_timeout={ms}"}
    return options


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False, autoflush=False)


@contextmanager
def session_scope(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any exception."""
    session = session_factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
