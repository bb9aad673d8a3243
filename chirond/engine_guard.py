"""chirond's engine guard: an ASGI middleware for stock `vllm serve --middleware`, so that no route
of an engine's port answers without chirond's key, except /health and /metrics (the daemon's
probes). vLLM's own `VLLM_API_KEY` check covers only paths under /v1, /v2, /inference and /cohere;
`POST /invocations` (chat and completions), `/tokenize`, `/pooling`, `/scale_elastic_ep` and any
route a later vLLM adds stay open to everyone who can reach the node.

Standard library only, and no import of chirond: the job script writes this file next to itself
as `chirond_engine_guard.py` and puts its folder on PYTHONPATH, so a compute node needs nothing
beyond vLLM. The key is vLLM's own `VLLM_API_KEY` (chirond sets it for every engine); without one
every guarded route is refused (fail closed). fake-vllm applies the same rule (`authorized`).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

MODULE_NAME = "chirond_engine_guard"  # the file name the job script writes, without .py
MIDDLEWARE = f"{MODULE_NAME}.EngineGuard"  # what `--middleware` names
OPEN_PATHS = frozenset({"/health", "/metrics", "/metrics/"})  # the daemon's probes need no key
UNAUTHORIZED_BODY = b'{"error":"Unauthorized"}'  # vLLM's own 401 body, so clients see one shape

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


def keys_from_env(environ: MutableMapping[str, str] | None = None) -> tuple[str, ...]:
    """The keys an engine takes: `VLLM_API_KEY` (vLLM reads one key; commas are not split)."""
    key = (os.environ if environ is None else environ).get("VLLM_API_KEY", "").strip()
    return (key,) if key else ()


def authorized(path: str, authorization: str | None, keys: Iterable[str]) -> bool:
    """Whether a request for `path` with this Authorization header may pass. Paths are compared
    exactly (the router does not normalise `..` either), so only the open paths themselves pass
    without a key; with no key configured nothing else passes."""
    if path in OPEN_PATHS:
        return True
    if not authorization:
        return False
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    ok = False
    for key in keys:  # compare against every key in constant time
        ok |= hmac.compare_digest(token.strip().encode(), key.encode())
    return ok


class EngineGuard:
    """`vllm serve --middleware chirond_engine_guard.EngineGuard`: vLLM adds it with
    `app.add_middleware`, so it sees every HTTP and WebSocket request before routing."""

    def __init__(self, app: App, keys: Iterable[str] | None = None) -> None:
        self.app = app
        self.keys = tuple(keys) if keys is not None else keys_from_env()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):  # lifespan
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):  # --root-path: routes are matched below it
            path = path[len(root):] or "/"
        auth = None
        for name, value in scope.get("headers", ()):
            if name.lower() == b"authorization":
                auth = value.decode("latin-1")
                break
        if authorized(path, auth, self.keys):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # before accept: a 403 handshake
            return
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(UNAUTHORIZED_BODY)).encode()),
                                (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": UNAUTHORIZED_BODY})


def source() -> str:
    """This module's text, as the job script writes it."""
    with open(__file__, encoding="utf-8") as f:
        return f.read()
