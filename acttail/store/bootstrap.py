"""The team ``default``: created with a key on first use, so the README's first commands work.

``acttail serve`` (embedded mode) and the API app create it when the database has no team yet;
``acttail run`` / ``acttail evaluate`` record their results under it and create it the same way
on an empty database. A team deployment, whose database already has other teams, never gets an
unasked-for ``default`` team with a key.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from acttail.store import teams
from acttail.store.db import session_scope
from acttail.store.errors import ConflictError, NotFoundError

log = logging.getLogger(__name__)

DEFAULT_TEAM = "default"


def write_key_file(path: Path, key: str) -> None:
    """Write ``key`` to ``path`` readable by the owner only (0600), never briefly world-readable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(key + "\n")
    os.chmod(path, 0o600)


def ensure_default_team(
    key_file: Path, session_factory: sessionmaker[Session], *, label: str = "created by acttail serve"
) -> str | None:
    """Create team "default" and a key when the database has no team yet; return the new key or None.

    The key is also written to ``key_file`` (``$ACTTAIL_HOME/api_key``, mode 0600) so scripts can
    read it.
    """
    with session_scope(session_factory) as session:
        if teams.count_teams(db_session=session) > 0:
            return None
        try:
            team = teams.create_team(DEFAULT_TEAM, db_session=session)
        except ConflictError:  # another process won the race
            return None
        key = teams.create_api_key(team, db_session=session, label=label)
    write_key_file(key_file, key)
    log.info("created team %r; its API key is in %s", DEFAULT_TEAM, key_file)
    return key


def default_team(key_file: Path, session_factory: sessionmaker[Session], *, label: str) -> tuple[int, str | None]:
    """(ID of team "default", its new key if this call created it); NotFoundError if only other teams exist."""
    key = ensure_default_team(key_file, session_factory, label=label)
    with session_scope(session_factory) as session:
        try:
            return teams.get_team_by_name(DEFAULT_TEAM, db_session=session).id, key
        except NotFoundError:
            raise NotFoundError(
                f"the database has teams but none named {DEFAULT_TEAM!r}; create it with "
                f"`acttail admin create-team {DEFAULT_TEAM}`"
            ) from None
