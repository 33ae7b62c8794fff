"""Typed dependencies: settings, one DB session per request, the caller's team, the dispatcher."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from acttail.settings import Settings
from acttail.store import teams
from acttail.store.errors import AuthenticationError
from acttail.store.orm import Team
from api.dispatch import JobDispatcher

_bearer = HTTPBearer(auto_error=False, description="An API key from `acttail admin create-key TEAM`.")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    """A session for this request; handlers commit explicitly, anything uncommitted is rolled back."""
    session: Session = request.app.state.session_factory()
    try:
        yield session
    finally:
        session.rollback()
        session.close()


def get_dispatcher(request: Request) -> JobDispatcher:
    return request.app.state.dispatcher


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
DispatcherDep = Annotated[JobDispatcher, Depends(get_dispatcher)]


def get_team(
    db_session: SessionDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Team:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise AuthenticationError("missing API key: send 'Authorization: Bearer <key>'")
    return teams.authenticate(credentials.credentials.strip(), db_session=db_session)


TeamDep = Annotated[Team, Depends(get_team)]
