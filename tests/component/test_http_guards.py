"""The HTTP port's guards (chirond/serve/http_server.py, issue 13 items 4 and 8): aiohttp's own
protocol errors in OpenAI's shape, idle/slowloris/slow-body timeouts, and connection limits that
evict idle connections first, so an idle flood locks nobody out. Raw sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiohttp import web

from chirond.serve.http_errors import error_middleware
from chirond.serve.http_server import GuardedRunner, HttpLimits


@dataclass
class Srv:
    port: int
    runner: GuardedRunner
    release: asyncio.Event


@pytest.fixture
async def srv() -> AsyncIterator[Srv]:
    release = asyncio.Event()

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"got": len(await request.read())})

    async def busy(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({"ok": True})

    app = web.Application(middlewares=[error_middleware(1 << 20)])
    app.router.add_get("/health", health)
    app.router.add_post("/echo", echo)
    app.router.add_get("/busy", busy)
    limits = HttpLimits(idle_timeout_s=6.0, body_timeout_s=1.5, max_connections=40, max_connections_per_client=20,
                        header_timeout_s=1.0)
    runner = GuardedRunner(app, limits, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield Srv(runner.addresses[0][1], runner, release)
    finally:
        release.set()
        await runner.cleanup()


async def exchange(port: int, raw: bytes, wait_s: float = 10) -> bytes:
    """Sends `raw`, returns everything until the server closes (or `wait_s`)."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(raw)
    await w.drain()
    try:
        return await _read_all(r, wait_s)
    finally:
        w.close()


async def _read_all(r: asyncio.StreamReader, wait_s: float) -> bytes:
    """Everything until the server closes; AssertionError if it has not closed within `wait_s`."""
    out = b""
    try:
        async with asyncio.timeout(wait_s):
            while chunk := await r.read(65536):
                out += chunk
    except TimeoutError:
        raise AssertionError(f"the server kept the connection open past {wait_s} s; got {out[:200]!r}") from None
    except ConnectionError:
        pass
    return out


def parse(resp: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = resp.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    return status, headers, body


async def get_health(port: int) -> int:
    status, _, body = parse(await exchange(port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
    assert json.loads(body) == {"ok": True}
    return status


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",  # header over 8 KB
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"NOT AN HTTP REQUEST\r\n\r\n",
    ],
    ids=["big-header", "negative-length", "garbage"],
)
async def test_protocol_errors_are_openai_shaped(srv: Srv, raw: bytes) -> None:
    status, headers, body = parse(await exchange(srv.port, raw))
    assert status == 400 and headers["content-type"].startswith("application/json"), body
    err = json.loads(body)["error"]
    assert err["code"] == "bad_http_request" and err["type"] == "invalid_request_error" and err["message"]
    assert await get_health(srv.port) == 200


async def test_silent_and_slowloris_connections_are_closed(srv: Srv) -> None:
    r1, w1 = await asyncio.open_connection("127.0.0.1", srv.port)  # says nothing
    _r2, w2 = await asyncio.open_connection("127.0.0.1", srv.port)  # trickles a head that never ends
    closed = False
    for i in range(25):  # 25 x 0.2 s: past header_timeout_s = 1, before idle_timeout_s = 6 could close it
        try:
            w2.write(f"X-{i}: y\r\n".encode() if i else b"GET /health HTTP/1.1\r\n")
            await w2.drain()
        except ConnectionError:
            closed = True
            break
        await asyncio.sleep(0.2)
    assert closed, "a slowloris head kept its connection"
    assert await _read_all(r1, 10) == b""  # EOF: the silent one closed by the idle timeout
    w1.close()
    w2.close()


async def test_a_stalled_body_is_cut_off(srv: Srv) -> None:
    r, w = await asyncio.open_connection("127.0.0.1", srv.port)
    w.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
    await w.drain()
    got = await _read_all(r, 10)  # closed by the server, well before 10 s
    assert b'"got"' not in got  # the handler never saw a whole body
    w.close()
    # A body that keeps arriving, if slowly, is fine.
    r, w = await asyncio.open_connection("127.0.0.1", srv.port)
    w.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 4\r\n\r\n")
    for b in (b"ab", b"cd"):
        await asyncio.sleep(0.5)
        w.write(b)
    status, _, body = parse(await _read_all(r, 10))
    assert status == 200 and json.loads(body) == {"got": 4}
    w.close()


async def test_an_idle_flood_locks_nobody_out_and_busy_limits_answer_503(srv: Srv) -> None:
    flood = [await asyncio.open_connection("127.0.0.1", srv.port) for _ in range(60)]  # 3x the per-client cap
    try:
        assert len(srv.runner.table.all) <= 20
        for _ in range(5):
            assert await get_health(srv.port) == 200
        assert srv.runner.table.evicted >= 40
    finally:
        for _, w in flood:
            w.close()
    # Every counted connection busy: the next one is told to retry, in OpenAI's shape.
    busy = []
    for _ in range(20):
        r, w = await asyncio.open_connection("127.0.0.1", srv.port)
        w.write(b"GET /busy HTTP/1.1\r\nHost: x\r\n\r\n")
        await w.drain()
        busy.append((r, w))
    for _ in range(100):
        if sum(1 for h in srv.runner.table.all if not h.idle) == 20:
            break
        await asyncio.sleep(0.05)
    status, headers, body = parse(await exchange(srv.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert status == 503 and headers["retry-after"] == "1"
    assert json.loads(body)["error"]["code"] == "too_many_connections"
    srv.release.set()
    for _, w in busy:
        w.close()
    for _ in range(100):
        if not srv.runner.table.all:
            break
        await asyncio.sleep(0.05)
    assert await get_health(srv.port) == 200
