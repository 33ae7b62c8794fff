"""Typed dependencies: settings, one DB session per request, the caller's team, the dispatcher.

A request holds a database connection only while its handler runs: the session is created behind
the pool gate (``api.db_gate``) and closed as soon as the handler and its serialisation return
(``scope="function"``), on the event loop, so giving the connection back never waits for a free
thread. Authentication reads the per-process verified-key cache first and asks the database only
on a miss, in a transaction of its own that ends before the handler starts. Reads (GET, HEAD)
run without a transaction at all (``read_engine``: autocommit on the same pool).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from acttail.settings import Settings
from acttail.store import teams
from acttail.store.errors import AuthenticationError
from acttail.store.key_cache import TeamRef
from api.db_gate import DbGate
from api.dispatch import JobDispatcher

READ_METHODS = frozenset({"GET", "HEAD"})
_bearer = HTTPBearer(auto_error=False, description="An API key from `acttail admin create-key TEAM`.")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_session(request: Request) -> AsyncIterator[Session]:
    """A session for this handler; handlers commit explicitly, anything uncommitted is rolled back."""
    gate: DbGate = request.app.state.db_gate
    await gate.acquire()
    try:
        # GET and HEAD never write: their statements autocommit one by one, so a read costs no
        # BEGIN/ROLLBACK round trips and its connection is never "idle in transaction".
        bind = request.app.state.read_engine if request.method in READ_METHODS else request.app.state.engine
        session: Session = request.app.state.session_factory(bind=bind)
        try:
            yield session
        finally:
            session.close()  # rolls back and returns the connection: one loopback round trip at most
    finally:
        gate.release()


def get_dispatcher(request: Request) -> JobDispatcher:
    return request.app.state.dispatcher


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
DispatcherDep = Annotated[JobDispatcher, Depends(get_dispatcher)]


def _authenticate_in_db(key: str, db_session: Session, ttl_s: float) -> TeamRef:
    try:
        return teams.authenticate(key, db_session=db_session, cache_ttl_s=ttl_s)
    finally:
        db_session.rollback()  # end the read: the connection goes back to the pool before the handler runs


async def get_team(
    request: Request,
    db_session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> TeamRef:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise AuthenticationError("missing API key: send 'Authorization: Bearer <key>'")
    key = credentials.credentials.strip()
    team = teams.cached_team(key, database=request.app.state.database_key)
    if team is not None:
        return team
    return await run_in_threadpool(_authenticate_in_db, key, db_session, request.app.state.settings.auth_cache_ttl_s)


TeamDep = Annotated[TeamRef, Depends(get_team)]
