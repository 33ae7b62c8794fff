"""First start in embedded mode: a default team and its key, so the README's first command works."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from acttail.settings import Settings
from acttail.store import teams
from acttail.store.db import session_scope
from acttail.store.errors import ConflictError

log = logging.getLogger(__name__)

DEFAULT_TEAM = "default"


def write_key_file(path: Path, key: str) -> None:
    """Write ``key`` to ``path`` readable by the owner only (0600), never briefly world-readable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(key + "\n")
    os.chmod(path, 0o600)


def ensure_default_team(settings: Settings, session_factory: sessionmaker[Session]) -> str | None:
    """Create team "default" and a key when the database has no team yet; return the new key or None.

    The key is also written to ``$ACTTAIL_HOME/api_key`` (mode 0600) so scripts can read it.
    """
    with session_scope(session_factory) as session:
        if teams.count_teams(db_session=session) > 0:
            return None
        try:
            team = teams.create_team(DEFAULT_TEAM, db_session=session)
        except ConflictError:  # another process won the race
            return None
        key = teams.create_api_key(team, db_session=session, label="created by acttail serve")
    write_key_file(settings.api_key_file, key)
    log.info("created team %r; its API key is in %s", DEFAULT_TEAM, settings.api_key_file)
    return key
