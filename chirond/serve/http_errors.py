"""The one error middleware of the HTTP API: every failure a handler raises leaves as an
OpenAI-shaped JSON error, never aiohttp's text/plain page.

- `ApiError`: as raised.
- aiohttp's own HTTP exceptions (404 no route, 405, 413 body over `client_max_size`, ...): their
  status, in OpenAI's shape.
- storage failures (SQLite errors, a full or read-only disk): 503 `storage_error` with Retry-After;
  nothing was accepted, so the client may simply retry.
- anything else: 500 `server_error`, logged with its traceback.

The request id (set on `request["request_id"]` by the request-id middleware, which sits outside
this one) goes into the `x-request-id` header of the error and into the message of a 5xx, so a
user can quote it. Errors aiohttp answers before any middleware runs (malformed request lines,
oversized headers) are shaped by chirond.serve.http_server."""

from __future__ import annotations

import asyncio
import errno
import logging
import sqlite3
from typing import Any

from aiohttp import web

from chirond.serve.openai_errors import ApiError

log = logging.getLogger(__name__)

STORAGE_RETRY_AFTER_S = 30
_STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG})


def storage_error(e: BaseException) -> ApiError:
    """503 for a failure of chirond's own storage; says why without paths or SQL."""
    detail = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    return ApiError.unavailable(
        f"chirond could not store your request ({detail}); nothing was kept. Retry later.",
        STORAGE_RETRY_AFTER_S,
        code="storage_error",
    )


def is_storage_failure(e: BaseException) -> bool:
    return isinstance(e, sqlite3.Error) or (isinstance(e, OSError) and e.errno in _STORAGE_ERRNOS)


def from_http_exception(e: web.HTTPException, request: web.Request, max_body_bytes: int) -> ApiError:
    if e.status == 413:
        return ApiError.too_large(max_body_bytes)
    if e.status == 404:
        return ApiError(404, f"no route {request.method} {request.path}", "invalid_request_error")
    if e.status == 405:
        return ApiError(405, f"method {request.method} not allowed on {request.path}", "invalid_request_error")
    return ApiError(e.status, e.reason or f"HTTP {e.status}")


def error_response(err: ApiError, request_id: str | None = None) -> web.Response:
    headers = dict(err.headers)
    if request_id:
        headers["x-request-id"] = request_id
    return web.json_response(err.body(), status=err.status, headers=headers)


def error_middleware(max_body_bytes: int) -> Any:
    """The middleware; `max_body_bytes` names the limit in a 413."""

    @web.middleware
    async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
        rid = request.get("request_id")
        try:
            return await handler(request)
        except asyncio.CancelledError:
            raise
        except ApiError as e:
            err = e
        except web.HTTPException as e:
            if e.status < 400:  # a redirect or success raised as an exception: not an error
                raise
            err = from_http_exception(e, request, max_body_bytes)
        except Exception as e:
            if is_storage_failure(e):
                log.error("%s %s: storage failure: %s", request.method, request.path, e)
                err = storage_error(e)
            else:
                log.exception("%s %s failed (request id %s)", request.method, request.path, rid)
                err = ApiError(500, "The server had an error while processing your request.", code="internal_error")
        if err.status >= 500 and rid:
            err = ApiError(
                err.status,
                f"{err.message} (request id {rid})",
                err.type,
                err.param,
                err.code,
                err.headers,
            )
        return error_response(err, rid)

    return errors
