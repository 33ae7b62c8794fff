"""Dashboard sessions: a signed cookie bound to an API key, per-session CSRF tokens.

The key is typed once on the login page and checked like a bearer key. The session cookie
(Starlette's SessionMiddleware, signed with ``ACTTAIL_SESSION_SECRET`` or a secret generated
into ``$ACTTAIL_HOME/session_secret``) then holds the team ID and the key's public lookup
prefix, never the secret part: a leaked cookie is not a key, and revoking the key ends the
session at the next request. Every form carries the session's CSRF token.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from acttail.errors import ActTailError
from acttail.settings import Settings
from acttail.store import keys, teams
from acttail.store.errors import AuthenticationError
from acttail.store.key_cache import TeamRef
from api.deps import SessionDep

COOKIE_NAME = "acttail_session"
MAX_AGE_S = 12 * 3600
_SECRET_BYTES = 48


class LoginRequired(AuthenticationError):
    """No dashboard session, or its key was revoked: pages redirect to the login page, data answers 401."""


class CsrfError(ActTailError):
    """A form came without this session's CSRF token (403)."""


def session_secret(settings: Settings) -> str:
    """The configured secret, else the one in ``$ACTTAIL_HOME/session_secret`` (created 0600 on first use).

    Created with O_EXCL, so two processes starting together end up with the same secret.
    """
    if settings.session_secret is not None:
        return settings.session_secret.get_secret_value()
    path: Path = settings.session_secret_file
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        secret = path.read_text(encoding="utf-8").strip()
        if len(secret) < 32:
            raise ActTailError(f"{path} holds no usable secret; delete it to generate a new one") from None
        return secret
    secret = secrets.token_urlsafe(_SECRET_BYTES)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(secret + "\n")
    return secret


def csrf_token(request: Request) -> str:
    """This session's CSRF token (created on first use)."""
    token = request.session.get("csrf")
    if not token:
        token = request.session["csrf"] = secrets.token_urlsafe(32)
    return str(token)


def check_csrf(request: Request, submitted: str) -> None:
    expected = request.session.get("csrf")
    if not expected or not submitted or not hmac.compare_digest(str(expected), submitted):
        raise CsrfError("the form's security token is missing or stale; reload the page and submit again")


def log_in(request: Request, key: str, *, db_session: Session) -> TeamRef:
    """Check ``key`` and bind a fresh session to it (new CSRF token: no session fixation)."""
    team = teams.authenticate(key.strip(), db_session=db_session)
    prefix = keys.parse_prefix(key.strip())
    request.session.clear()
    request.session.update(team_id=team.id, team=team.name, key_prefix=prefix, csrf=secrets.token_urlsafe(32))
    return team


def log_out(request: Request) -> None:
    request.session.clear()


def session_team(request: Request, db_session: SessionDep) -> TeamRef:
    """The team of the logged-in session, with its key still valid; else LoginRequired."""
    prefix, team_id = request.session.get("key_prefix"), request.session.get("team_id")
    if not prefix or team_id is None:
        raise LoginRequired("log in with your team's API key")
    try:
        team = teams.team_of_key_prefix(
            str(prefix), db_session=db_session, cache_ttl_s=request.app.state.settings.auth_cache_ttl_s
        )
    except AuthenticationError:
        request.session.clear()
        raise LoginRequired("the API key of this session was revoked; log in again") from None
    if team.id != team_id:
        request.session.clear()
        raise LoginRequired("log in with your team's API key")
    return team


UiTeamDep = Annotated[TeamRef, Depends(session_team)]
