"""Request ids and the access log: the outermost middleware. Every request gets an id (the client's
`X-Request-Id` when it is a sane token, else a fresh one), kept as `request["request_id"]` for the
handlers and the error middleware, sent back as `x-request-id` on every response (streams and
errors too: it is set as the response is prepared), and logged in one access line per request
with what the handler recorded in `request["access"]` (user, model, class, tokens, times, instance).
Scrapes of /metrics and /health are logged at DEBUG: a Prometheus every 15 s would drown the rest."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web

HEADER = "X-Request-Id"
_SANE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_QUIET_PATHS = frozenset({"/metrics", "/health"})

access_log = logging.getLogger("chirond.access")
OnDone = Callable[[dict[str, Any]], None]


def new_id() -> str:
    return "req-" + uuid.uuid4().hex[:24]


def _request_id(request: web.Request) -> str:
    given = request.headers.get(HEADER, "")
    return given if _SANE.fullmatch(given) else new_id()


def request_id_middleware(on_done: OnDone | None = None) -> Any:
    """The middleware; `on_done` sees each access line's fields (the metrics count error codes)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        return await _handle(request, handler, on_done)

    return middleware


async def _handle(request: web.Request, handler: Any, on_done: OnDone | None) -> web.StreamResponse:
    rid = request["request_id"] = _request_id(request)
    access: dict[str, Any] = {}
    request["access"] = access
    t0 = time.monotonic()
    status = 499  # the client left (the handler was cancelled) unless a response says otherwise
    resp_body: bytes | None = None
    try:
        resp = await handler(request)
        status = resp.status
        if isinstance(resp, web.Response) and isinstance(resp.body, bytes) and len(resp.body) < 65536:
            resp_body = resp.body
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
        if status >= 400 and resp_body is not None:
            fields["error_code"] = error_code(resp_body)
        if on_done is not None:
            on_done(fields)
        level = logging.DEBUG if request.path in _QUIET_PATHS and status < 400 else logging.INFO
        if access_log.isEnabledFor(level):
            access_log.log(level, "%s %s %d", request.method, request.path, status, extra={"fields": fields})


def error_code(body: bytes) -> str | None:
    """The `error.code` (else `error.type`) of an OpenAI-shaped error body, for the log and the metrics."""
    try:
        err = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return None
    if not isinstance(err, dict):
        return None
    code = err.get("code") or err.get("type")
    return str(code) if code is not None else None


async def _set_header(request: web.Request, response: web.StreamResponse) -> None:
    rid = request.get("request_id")
    if rid is not None:
        response.headers[HEADER] = rid


def install(app: web.Application, on_done: OnDone | None = None) -> None:
    """Outermost middleware and the response header, on `app`; `on_done` sees each access line's
    fields (the metrics count error codes from it)."""
    app.middlewares.insert(0, request_id_middleware(on_done))
    app.on_response_prepare.append(_set_header)
