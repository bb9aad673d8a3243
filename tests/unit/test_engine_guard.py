"""chirond's engine guard (chirond/engine_guard.py) as an ASGI middleware, and how chirond adds it
to vLLM commands (chirond/engines.py). Against vLLM's real app: tests/conformance/test_engine_guard.py."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from chirond import engine_guard
from chirond.engine_guard import MIDDLEWARE, EngineGuard, authorized
from chirond.engines import guarded, is_vllm_server, write_guard


async def _inner(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"inner"})


def call(path: str, headers: list[tuple[bytes, bytes]] | None = None, *, kind: str = "http",
         keys: tuple[str, ...] = ("k1",), root_path: str = "") -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(m: Any) -> None:
        sent.append(dict(m))

    async def receive() -> Any:
        return {"type": "http.request", "body": b""}

    scope = {"type": kind, "path": path, "headers": headers or [], "method": "POST", "root_path": root_path}
    asyncio.run(EngineGuard(_inner, keys)(scope, receive, send))
    return sent


@pytest.mark.parametrize("path", ["/invocations", "/tokenize", "/v1/chat/completions", "/pooling", "/ping",
                                  "/load", "/version", "/scale_elastic_ep", "/health/", "/health/../v1/models",
                                  "/HEALTH", "/", "/a-route-a-later-vllm-adds"])
def test_every_path_but_health_and_metrics_needs_the_key(path: str) -> None:
    for headers in ([], [(b"authorization", b"Bearer wrong")], [(b"authorization", b"k1")],
                    [(b"authorization", b"Basic k1")], [(b"x-api-key", b"k1")]):
        sent = call(path, headers)
        assert sent[0]["status"] == 401 and sent[1]["body"] == b'{"error":"Unauthorized"}', (path, headers)
    assert call(path, [(b"Authorization", b"Bearer k1")])[0]["status"] == 200


@pytest.mark.parametrize("path", ["/health", "/metrics", "/metrics/"])
def test_open_paths(path: str) -> None:
    assert call(path)[0]["status"] == 200


def test_without_a_key_it_fails_closed() -> None:
    assert call("/invocations", [(b"authorization", b"Bearer ")], keys=())[0]["status"] == 401
    assert call("/health", keys=())[0]["status"] == 200
    assert not authorized("/v1/models", "Bearer ", ())


def test_root_path_and_websockets() -> None:
    assert call("/api/health", root_path="/api")[0]["status"] == 200
    assert call("/api/invocations", root_path="/api")[0]["status"] == 401
    assert call("/v1/realtime", kind="websocket") == [{"type": "websocket.close", "code": 1008}]


def test_key_comes_from_vllm_api_key() -> None:
    assert engine_guard.keys_from_env({"VLLM_API_KEY": " s3cret "}) == ("s3cret",)
    assert engine_guard.keys_from_env({}) == ()


@pytest.mark.parametrize(("argv", "vllm"), [
    (("vllm", "serve", "m", "--port", "{port}"), True),
    (("/opt/venv/bin/vllm", "serve", "m"), True),
    (("apptainer", "exec", "--nv", "img.sif", "vllm", "serve", "m"), True),
    (("python3", "-m", "vllm.entrypoints.openai.api_server", "--model", "m"), True),
    (("python3", "-m", "chirond", "fake-vllm", "--port", "{port}"), False),
    (("./my-wrapper.sh", "vllm"), False),
])
def test_guard_is_added_to_vllm_commands(argv: tuple[str, ...], vllm: bool) -> None:
    assert is_vllm_server(argv) is vllm
    out = guarded(argv)
    assert out == ((*argv, "--middleware", MIDDLEWARE) if vllm else argv)
    assert guarded(out) == out  # once


def test_write_guard(tmp_path: Path) -> None:
    folder = write_guard(tmp_path / "g")
    assert (folder / "chirond_engine_guard.py").read_text() == engine_guard.source()
    assert "import chirond" not in engine_guard.source()  # a compute node has no chirond
