"""Webhook notices for regressed or failed runs: one JSON POST, its outcome recorded, never raised."""

from __future__ import annotations

from typing import Any

import httpx
import structlog

from service.store.store import utcnow

log = structlog.get_logger()
TIMEOUT_S = 10.0


def post(url: str, payload: dict[str, Any]) -> dict[str, Any]:
    """POST `payload`; what happened, for the run record ({"status_code"} or {"error"})."""
    at = utcnow().isoformat()
    try:
        response = httpx.post(url, json=payload, timeout=TIMEOUT_S, follow_redirects=False)
    except httpx.HTTPError as exc:
        log.warning("schedule.webhook_failed", url=url, error=str(exc))
        return {"url": url, "at": at, "error": f"{type(exc).__name__}: {exc}"}
    if response.status_code >= 400:
        log.warning("schedule.webhook_rejected", url=url, status=response.status_code)
    return {"url": url, "at": at, "status_code": response.status_code}
