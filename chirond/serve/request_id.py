"""Request ids and the access log: the outermost middleware. Every request gets an id (the client's
`X-Request-Id` when it is a sane token, else a fresh one), kept as `request["request_id"]` for the
handlers and the error middleware, sent back as `x-request-id` on every response (streams and
errors too: it is set as the response is prepared), and logged in one access line per request
with what the handler recorded in `request["access"]` (user, model, class, tokens, times, instance).
Scrapes of /metrics and /health are logged at DEBUG: a Prometheus every 15 s would drown the rest."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from typing import Any

from aiohttp import web

HEADER = "X-Request-Id"
_SANE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_QUIET_PATHS = frozenset({"/metrics", "/health"})

access_log = logging.getLogger("chirond.access")


def new_id() -> str:
    return "req-" + uuid.uuid4().hex[:24]


def _request_id(request: web.Request) -> str:
    given = request.headers.get(HEADER, "")
    return given if _SANE.fullmatch(given) else new_id()


@web.middleware
async def request_id_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    rid = request["request_id"] = _request_id(request)
    access: dict[str, Any] = {}
    request["access"] = access
    t0 = time.monotonic()
    status = 499  # the client left (the handler was cancelled) unless a response says otherwise
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    except web.HTTPException as e:  # aiohttp's own (a route it does not know), when nothing shaped it
        status = e.status
        raise
    except asyncio.CancelledError:
        raise
    except Exception:  # escaped every other middleware: aiohttp answers 500
        status = 500
        raise
    finally:
        fields = {"request_id": rid, "method": request.method, "path": request.path, "status": status,
                  **access, "duration_s": time.monotonic() - t0}
        level = logging.DEBUG if request.path in _QUIET_PATHS and status < 400 else logging.INFO
        if access_log.isEnabledFor(level):
            access_log.log(level, "%s %s %d", request.method, request.path, status, extra={"fields": fields})


async def _set_header(request: web.Request, response: web.StreamResponse) -> None:
    rid = request.get("request_id")
    if rid is not None:
        response.headers[HEADER] = rid


def install(app: web.Application) -> None:
    """Outermost middleware and the response header, on `app`."""
    app.middlewares.insert(0, request_id_middleware)
    app.on_response_prepare.append(_set_header)
