"""vLLM's real FastAPI app (build_app, every task's routers, no engine) with chirond's engine guard
added through `--middleware`, as `vllm serve` adds it. Payload: {"argv": [...], "tasks": [...]}.
Answers, per route: the status without a key, with a wrong key, and with the right key (a route
handler without an engine behind it may fail with 500: only 401 matters), and the same without
the guard (to show what the guard closes)."""

from __future__ import annotations

import os
import re
import warnings

from vllm_cli import answer, read_payload, serve_args

warnings.simplefilter("ignore")
payload = read_payload()
key = os.environ["VLLM_API_KEY"]


def statuses(argv: list[str]) -> dict[str, dict[str, int]]:
    from fastapi.testclient import TestClient
    from starlette.routing import Mount, Route, WebSocketRoute
    from vllm.entrypoints.launchers.app import build_app

    app = build_app(serve_args(argv), supported_tasks=tuple(payload["tasks"]))
    client = TestClient(app, raise_server_exceptions=False)  # no `with`: no lifespan, so no engine
    targets: set[tuple[str, str]] = {("POST", "/invocations"), ("GET", "/a-route-a-later-vllm-adds")}
    for r in app.routes:
        if isinstance(r, WebSocketRoute):
            continue
        path = re.sub(r"\{[^}]+\}", "x", r.path)
        if isinstance(r, Mount):
            targets.add(("GET", path))
        elif isinstance(r, Route):
            for m in sorted(r.methods or {"GET"}):
                if m != "HEAD":
                    targets.add((m, path))
    out: dict[str, dict[str, int]] = {}
    for method, path in sorted(targets):
        got = {}
        for name, headers in (("none", {}), ("wrong", {"Authorization": "Bearer wrong"}),
                              ("key", {"Authorization": f"Bearer {key}"})):
            got[name] = client.request(method, path, headers=headers, json={}).status_code
        out[f"{method} {path}"] = got
    return out


answer({"guarded": statuses(payload["argv"]), "bare": statuses(payload["bare_argv"])})
