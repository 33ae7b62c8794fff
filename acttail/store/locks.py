"""Cross-worker mutual exclusion for expensive, shareable work (one ESD run per model).

On PostgreSQL a session-level advisory lock is held on a dedicated connection for the duration:
it serialises workers on different machines, and the server drops it when a killed worker's
connection dies, so a crash never leaves it stuck. On SQLite (embedded mode: one process) a
per-key thread lock does the same. Either way the unique constraints in ``acttail.store`` remain
the correctness backstop; the lock only avoids computing the same spectrum twice.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


def advisory_key(name: str) -> int:
    """A signed 64-bit integer for ``pg_advisory_lock`` (first 8 bytes of sha256)."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big", signed=True)


def _engine_of(session_factory: sessionmaker[Session]) -> Engine:
    engine = session_factory.kw.get("bind")
    if engine is None:
        raise ValueError("session_factory has no bound engine")
    return engine


@contextmanager
def esd_lock(session_factory: sessionmaker[Session], name: str) -> Iterator[None]:
    """Hold the lock ``name`` (blocking) while the body runs."""
    engine = _engine_of(session_factory)
    if engine.dialect.name == "postgresql":
        key = advisory_key(name)
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            conn.commit()
            try:
                yield
            finally:
                try:
                    conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                    conn.commit()
                except DBAPIError:  # connection already gone: the server released the lock with it
                    conn.invalidate()
        return
    with _thread_locks_guard:
        lock = _thread_locks.setdefault(name, threading.Lock())
    with lock:
        yield
