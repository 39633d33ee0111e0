"""Request dependencies: the store, the settings, bearer-token authentication, and the mapping of the
preflight's domain errors onto HTTP."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Coroutine, Iterable
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, Response, status
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import Message

from service.config import Settings
from service.preflight import Problem, SpecRefused
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


class BodyLimitRoute(APIRoute):
    """Routes whose request bodies may not exceed `Settings.max_spec_bytes` (413 with the limit named).

    FastAPI reads a JSON body whole before any dependency runs, so the limit is enforced here, while
    the body streams in: an oversized spec is refused after `max_spec_bytes` bytes, never buffered whole.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def limited(request: Request) -> Response:
            if request.method not in BODY_METHODS:
                return await handler(request)
            limit = get_settings(request).max_spec_bytes
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                return _too_large(limit)
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    return _too_large(limit)
            replayed = False

            async def receive() -> Message:  # the buffered body once, then the real channel (disconnects)
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": bytes(body), "more_body": False}
                return await request.receive()

            return await handler(Request(request.scope, receive))

        return limited


BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse({"detail": f"request body exceeds {limit} bytes (the server's PRUNESEARCH_MAX_SPEC_BYTES)"},
                        status_code=status.HTTP_413_CONTENT_TOO_LARGE)


def check_active_limit(store: JobStore, settings: Settings, owner: str) -> None:
    """429 when `owner` already has `max_active_jobs_per_token` jobs queued or running."""
    limit = settings.max_active_jobs_per_token
    active = store.active_count(owner)
    if active >= limit:
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS,
                            detail=f"token {owner!r} already has {active} queued or running jobs; the limit is "
                                   f"{limit} (PRUNESEARCH_MAX_ACTIVE_JOBS_PER_TOKEN): wait for one to finish or "
                                   "cancel one")


REFUSAL_STATUS = {"invalid": status.HTTP_422_UNPROCESSABLE_CONTENT, "unsatisfiable": status.HTTP_400_BAD_REQUEST,
                  "unavailable": status.HTTP_503_SERVICE_UNAVAILABLE}


def error_items(problems: Iterable[Problem], where: str = "body") -> list[dict[str, Any]]:
    """Refusals in FastAPI's 422 item shape: each under `body.<field>` (or `query.<parameter>`)."""
    return [{"loc": [where, *loc], "msg": msg, "type": "value_error"} for loc, msg in problems]


async def spec_refused(request: Request, exc: SpecRefused) -> JSONResponse:
    """A preflight refusal in FastAPI's error shape: each problem under `body.<field>`; a check that
    could not run (503) as one message."""
    code = REFUSAL_STATUS[exc.kind]
    if exc.kind == "unavailable":
        return JSONResponse({"detail": str(exc)}, status_code=code)
    return JSONResponse({"detail": error_items(exc.problems, exc.where)}, status_code=code)
