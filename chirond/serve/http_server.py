"""The HTTP server under the API app: aiohttp's, with the guards a public port needs and the
error shape of the rest of the API.

- Errors aiohttp answers itself, before any middleware runs (a malformed request line, headers
  over `max_field_size`, `Content-Length: -5`), are OpenAI-shaped JSON too (`handle_error`).
- Idle timeout: aiohttp's keep-alive timer, started when a connection opens and again after each
  response, closes a connection that has sent no new request by then (`idle_timeout_s`).
- Header timeout: a request head whose first bytes came `header_timeout_s` ago and is still not
  whole is cut off, however slowly it trickles (slowloris heads).
- Body timeout: a request whose body stops arriving for `body_timeout_s` (while chirond is ready
  to read it) is cut off (slowloris bodies).
- Connection limits, global and per client address: a new connection over a limit first evicts
  the oldest idle connection (no request in progress) that counts against the same limit, so
  idle floods cannot lock anyone out; only when every counted connection is busy is the new one
  answered 503 and closed.

aiohttp builds the protocol object through `Server.__call__`; `GuardedRunner` hands it a Server
that builds `GuardedHandler`s. That is the one place tied to aiohttp's internals (`_make_server`,
and the handler's `_request_in_progress`, `_current_request`, `_reading_paused` attributes), all
present in aiohttp 3.9 to 3.14; tests/component/test_http_guards.py checks the behaviour.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from chirond.serve.openai_errors import ApiError

log = logging.getLogger(__name__)

WATCH_PERIOD_S = 1.0


@dataclass(frozen=True, slots=True)
class HttpLimits:
    idle_timeout_s: float = 75.0
    body_timeout_s: float = 30.0
    max_connections: int = 1000
    max_connections_per_client: int = 200
    header_timeout_s: float = 10.0


class ConnectionTable:
    """Open connections, oldest first, overall and per client address."""

    def __init__(self, limits: HttpLimits) -> None:
        self.limits = limits
        self.all: OrderedDict[GuardedHandler, None] = OrderedDict()
        self.by_client: dict[str, OrderedDict[GuardedHandler, None]] = {}
        self.evicted = 0
        self.refused = 0

    def admit(self, h: GuardedHandler) -> bool:
        """Registers `h` unless a limit is full of busy connections; evicts an idle one if needed."""
        mine = self.by_client.get(h.client, OrderedDict())
        for pool, limit in ((mine, self.limits.max_connections_per_client), (self.all, self.limits.max_connections)):
            if len(pool) >= limit:
                victim = next((c for c in pool if c.idle), None)
                if victim is None:
                    self.refused += 1
                    return False
                self.evicted += 1
                victim.force_close()
                self.remove(victim)
        self.all[h] = None
        self.by_client.setdefault(h.client, OrderedDict())[h] = None
        return True

    def remove(self, h: GuardedHandler) -> None:
        self.all.pop(h, None)
        mine = self.by_client.get(h.client)
        if mine is not None:
            mine.pop(h, None)
            if not mine:
                del self.by_client[h.client]


def _json_error(status: int, message: str, code: str) -> tuple[bytes, str]:
    err = ApiError(status, message, code=code)
    return json.dumps(err.body()).encode(), "application/json"


class GuardedHandler(RequestHandler):
    """One connection (aiohttp's protocol object) with a watchdog and a place in the table."""

    table: ConnectionTable  # set by GuardedServer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self.client = str(peer[0]) if isinstance(peer, tuple | list) and peer else "unix"
        self.last_rx = time.monotonic()
        self.head_since: float | None = None  # when the first bytes of a head not yet whole came
        self._watch: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        if not self.table.admit(self):
            body, _ = _json_error(503, "chirond has too many open connections; retry later.", "too_many_connections")
            head = (
                f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                "Retry-After: 1\r\nConnection: close\r\n\r\n"
            ).encode()
            if self.transport is not None:
                self.transport.write(head + body)
            self.force_close()
            return
        self._watch = self._loop.call_later(WATCH_PERIOD_S, self._check)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.table.remove(self)
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.last_rx = time.monotonic()
        heads = self._request_count
        super().data_received(data)
        if self._request_count != heads:  # a whole head arrived (aiohttp counts parsed ones)
            self.head_since = None
        elif self.head_since is None and not self._request_in_progress and data:
            self.head_since = self.last_rx
    @property
    def idle(self) -> bool:
        """No request being handled: a connection between requests, or still sending a head."""
        return not self._request_in_progress

    def _check(self) -> None:
        self._watch = None
        if self._force_close or self.transport is None:
            return
        now = time.monotonic()
        if self.head_since is not None and now - self.head_since > self.table.limits.header_timeout_s:
            log.info("closing a connection from %s: its request head never ended", self.client)
            self.force_close()
            return
        req = self._current_request
        waiting_for_body = req is not None and not req.content.is_eof() and not self._reading_paused
        if waiting_for_body and time.monotonic() - self.last_rx > self.table.limits.body_timeout_s:
            log.info("closing a connection from %s: its request body stalled", self.client)
            self.force_close()  # aiohttp cancels the handler (handler_cancellation)
            return
        self._watch = self._loop.call_later(WATCH_PERIOD_S, self._check)

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        """aiohttp's own error page, in OpenAI's shape (status kept; connection closed as before)."""
        resp = super().handle_error(request, status, exc, message)
        if status >= 500:
            text, code = "The server had an error while processing your request.", "internal_error"
        else:
            detail = (message or (exc and str(exc)) or "bad request").strip().splitlines()[0]  # no parser caret
            text = f"Malformed HTTP request: {detail}"
            code = "bad_http_request"
        body, ctype = _json_error(status, text[:500], code)
        shaped = web.Response(status=status, body=body, content_type=ctype)
        shaped.force_close()
        del resp
        return shaped


class GuardedServer(web.Server):
    def __init__(self, *args: Any, table: ConnectionTable, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.table = table

    def __call__(self) -> RequestHandler:
        h = GuardedHandler(self, loop=self._loop, **self._kwargs)
        h.table = self.table
        return h


class GuardedRunner(web.AppRunner):
    """web.AppRunner whose connections are GuardedHandlers under `limits`."""

    def __init__(self, app: web.Application, limits: HttpLimits, **kwargs: Any) -> None:
        super().__init__(app, keepalive_timeout=limits.idle_timeout_s, **kwargs)
        self.table = ConnectionTable(limits)

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        return GuardedServer(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=plain._loop,
            table=self.table,
            **plain._kwargs,
        )
