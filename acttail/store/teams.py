"""Teams and API keys; verified keys are cached briefly (``acttail.store.key_cache``)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from acttail.store import keys
from acttail.store.errors import AuthenticationError, ConflictError, NotFoundError
from acttail.store.key_cache import VERIFIED_KEYS, TeamRef
from acttail.store.orm import ApiKey, Team, utcnow
from acttail.store.upsert import insert_ignore

MAX_TEAM_NAME = 100


def create_team(name: str, *, db_session: Session) -> Team:
    """A new team; ConflictError if the name is taken."""
    name = name.strip()
    if not name or len(name) > MAX_TEAM_NAME:
        raise ConflictError(f"team name must be 1..{MAX_TEAM_NAME} characters")
    if not insert_ignore(db_session, Team.__table__, {"name": name, "created_at": utcnow()}):
        raise ConflictError(f"team {name!r} already exists")
    return get_team_by_name(name, db_session=db_session)


def get_team_by_name(name: str, *, db_session: Session) -> Team:
    team = db_session.scalar(select(Team).where(Team.name == name))
    if team is None:
        raise NotFoundError(f"no team named {name!r}")
    return team


def count_teams(*, db_session: Session) -> int:
    return int(db_session.scalar(select(func.count()).select_from(Team)) or 0)


def create_api_key(team: Team, *, db_session: Session, label: str = "") -> str:
    """Store a new key for ``team`` and return its plaintext (the only time it exists)."""
    new = keys.generate_key()
    db_session.add(ApiKey(team_id=team.id, prefix=new.prefix, key_hash=new.key_hash, label=label[:100]))
    db_session.flush()
    return new.plaintext


def database_key(db_session: Session) -> str:
    """Which database a session talks to, as the key cache's namespace."""
    bind = db_session.get_bind()
    return str(bind.engine.url)


def cached_team(plaintext: str, *, database: str) -> TeamRef | None:
    """The team of ``plaintext`` if this process verified it within the cache TTL, else None
    (the caller then asks the database with :func:`authenticate`)."""
    prefix = keys.parse_prefix(plaintext)
    hit = None if prefix is None else VERIFIED_KEYS.get(database, prefix)
    if hit is None or not keys.matches(plaintext, hit[1]):
        return None
    return hit[0]


def _key_row(prefix: str, *, db_session: Session) -> ApiKey:
    row = db_session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
    if row is None or row.revoked_at is not None:
        raise AuthenticationError("invalid or revoked API key")
    return row


def authenticate(plaintext: str, *, db_session: Session, cache_ttl_s: float = 0.0) -> TeamRef:
    """The team owning ``plaintext``; AuthenticationError for anything else (one message for all).
    A verified key is remembered for ``cache_ttl_s`` seconds (0: not at all)."""
    database = database_key(db_session)
    team = cached_team(plaintext, database=database)
    if team is not None:
        return team
    prefix = keys.parse_prefix(plaintext)
    if prefix is None:
        raise AuthenticationError("invalid or revoked API key")
    row = _key_row(prefix, db_session=db_session)
    if not keys.matches(plaintext, row.key_hash):
        raise AuthenticationError("invalid or revoked API key")
    team = TeamRef(id=row.team.id, name=row.team.name)
    VERIFIED_KEYS.put(database, prefix, team, row.key_hash, cache_ttl_s)
    return team


def team_of_key_prefix(prefix: str, *, db_session: Session, cache_ttl_s: float = 0.0) -> TeamRef:
    """The team of the unrevoked key with this lookup prefix (a dashboard session remembers only
    the prefix of the key it was opened with, so revoking the key ends the session)."""
    database = database_key(db_session)
    hit = VERIFIED_KEYS.get(database, prefix)
    if hit is not None:
        return hit[0]
    row = _key_row(prefix, db_session=db_session)
    team = TeamRef(id=row.team.id, name=row.team.name)
    VERIFIED_KEYS.put(database, prefix, team, row.key_hash, cache_ttl_s)
    return team


def revoke_api_key(prefix: str, *, db_session: Session) -> None:
    row = db_session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
    if row is None:
        raise NotFoundError(f"no API key with prefix {prefix!r}")
    row.revoked_at = utcnow()
    db_session.flush()
    VERIFIED_KEYS.invalidate(prefix)
