"""Request dependencies: the store, the settings, and bearer-token authentication."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.config import Settings
from service.store import JobStore

bearer = HTTPBearer(auto_error=False)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_store(request: Request) -> JobStore:
    store: JobStore = request.app.state.store
    return store


def _match(token: str, tokens: dict[str, object]) -> str | None:
    """Name of the token that matches, compared in constant time against every configured one."""
    found = None
    for name, secret in tokens.items():
        value = secret.get_secret_value() if hasattr(secret, "get_secret_value") else str(secret)
        if hmac.compare_digest(token.encode(), value.encode()):
            found = name
    return found


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"})


def require_writer(creds: Credentials, settings: Annotated[Settings, Depends(get_settings)]) -> str:
    """Mutating endpoints: a write token is required (401 without or with an unknown one, 403 for a read token)."""
    if creds is None:
        raise _unauthorized("this endpoint needs a bearer token")
    name = _match(creds.credentials, dict(settings.tokens))
    if name is not None:
        return name
    if _match(creds.credentials, dict(settings.read_tokens)) is not None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="this token may only read")
    raise _unauthorized("unknown bearer token")


def require_reader(creds: Credentials, settings: Annotated[Settings, Depends(get_settings)]) -> str | None:
    if settings.open_reads:
        return None
    if creds is None:
        raise _unauthorized("reads need a bearer token on this server")
    name = _match(creds.credentials, {**settings.tokens, **settings.read_tokens})
    if name is None:
        raise _unauthorized("unknown bearer token")
    return name


StoreDep = Annotated[JobStore, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
Writer = Annotated[str, Depends(require_writer)]
Reader = Annotated[str | None, Depends(require_reader)]
