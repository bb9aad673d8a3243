"""Hostile or unlucky requests get OpenAI-shaped errors, never aiohttp's text/plain 500, and the
daemon keeps serving (issue 13, items 7 and 8): lone surrogates, deep nesting, malformed multipart,
SQLite failures (503 storage_error with Retry-After), an unexpected exception in a handler."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from chirond.daemon import Daemon
from chirond.serve.http_errors import error_middleware
from tests.support.daemon import client

MODEL = "llama-8b"


def assert_shaped(status: int, ctype: str, body: bytes, want_status: int, code: str | None = None) -> dict:
    assert status == want_status, body[:300]
    assert ctype == "application/json", (ctype, body[:300])
    err = json.loads(body)["error"]
    assert set(err) >= {"message", "type", "param", "code"} and err["message"]
    if code is not None:
        assert err["code"] == code, err
    return dict(err)


async def post(s: aiohttp.ClientSession, url: str, data: bytes, ctype: str = "application/json") -> tuple:
    async with s.post(url, data=data, headers={"Content-Type": ctype}) as r:
        return r.status, r.content_type, await r.read(), CIMultiDict(r.headers)


async def test_hostile_bodies_get_shaped_errors_and_serving_goes_on(daemon_factory: Any) -> None:
    d: Daemon = await daemon_factory()
    base = f"http://127.0.0.1:{d.port}/v1"
    deep = "[" * 5000 + "]" * 5000
    async with aiohttp.ClientSession() as s:
        surrogate = b'{"model": "llama-8b", "messages": [{"role": "user", "content": "\\ud800"}], "max_tokens": 2}'
        st, ct, body, _ = await post(s, f"{base}/chat/completions", surrogate)
        assert "surrogate" in assert_shaped(st, ct, body, 400, "invalid_json")["message"]
        for path in ("/chat/completions", "/completions"):
            nested = f'{{"model": "llama-8b", "prompt": "hi", "messages": [], "metadata": {deep}}}'.encode()
            st, ct, body, _ = await post(s, base + path, nested)
            assert "levels deep" in assert_shaped(st, ct, body, 400, "invalid_json")["message"]
        meta = f'{{"input_file_id": "file-x", "endpoint": "/v1/chat/completions", "completion_window": "24h", ' \
               f'"metadata": {{"a": {deep}}}}}'.encode()
        st, ct, body, _ = await post(s, f"{base}/batches", meta)
        assert_shaped(st, ct, body, 400, "invalid_json")
        for bad in (b"--xyz\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc",  # never closed
                    b"garbage without any boundary"):
            st, ct, body, _ = await post(s, f"{base}/files", bad, "multipart/form-data; boundary=xyz")
            assert_shaped(st, ct, body, 400)
        st, ct, body, _ = await post(s, f"{base}/files", b"x", "multipart/form-data")  # no boundary at all
        assert_shaped(st, ct, body, 400)
    # aiohttp's own protocol errors, on the daemon's port (chirond/serve/http_server.py)
    for raw in (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
                b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n"):
        reader, writer = await asyncio.open_connection("127.0.0.1", d.port)
        writer.write(raw)
        resp = await asyncio.wait_for(reader.read(65536), 10)
        writer.close()
        head, _, body = resp.partition(b"\r\n\r\n")
        assert head.split(b" ")[1] == b"400" and b"application/json" in head, resp
        assert json.loads(body)["error"]["code"] == "bad_http_request"
    r = await client(d).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=2)
    assert r.choices[0].message.content


async def test_storage_failures_are_503_storage_error_with_retry_after(daemon_factory: Any) -> None:
    d: Daemon = await daemon_factory()
    base = f"http://127.0.0.1:{d.port}/v1"
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}}
    form_data = json.dumps(line).encode() + b"\n"

    def form() -> aiohttp.FormData:
        f = aiohttp.FormData()
        f.add_field("purpose", "batch")
        f.add_field("file", form_data, filename="in.jsonl")
        return f

    async with aiohttp.ClientSession() as s:
        async with s.post(f"{base}/files", data=form()) as r:
            assert r.status == 200
            fid = (await r.json())["id"]
        files_before = sorted(p.name for p in d.batch.store.files_dir.iterdir())
        d.batch.store._db.execute("PRAGMA query_only = 1")  # every write now fails inside SQLite
        try:
            async with s.post(f"{base}/files", data=form()) as r:
                err = assert_shaped(r.status, r.content_type, await r.read(), 503, "storage_error")
                assert int(r.headers["Retry-After"]) >= 1 and "Retry" in err["message"]
            assert sorted(p.name for p in d.batch.store.files_dir.iterdir()) == files_before, "bytes kept"
            create = {"input_file_id": fid, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
            async with s.post(f"{base}/batches", json=create) as r:
                assert_shaped(r.status, r.content_type, await r.read(), 503, "storage_error")
                assert "Retry-After" in r.headers
        finally:
            d.batch.store._db.execute("PRAGMA query_only = 0")
        async with s.post(f"{base}/batches", json=create) as r:  # space is back: no restart needed
            assert r.status == 200, await r.text()


async def test_an_unexpected_exception_is_a_shaped_500_with_the_request_id() -> None:
    @web.middleware
    async def request_id(request: web.Request, handler: Any) -> web.StreamResponse:
        request["request_id"] = "req-123"  # what the request-id middleware (outermost) sets
        return await handler(request)

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("a bug")

    app = web.Application(middlewares=[request_id, error_middleware(1024)])
    app.router.add_post("/x", broken)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with aiohttp.ClientSession() as s:
            st, ct, body, headers = await post(s, f"{url}/x", b"{}")
            err = assert_shaped(st, ct, body, 500, "internal_error")
            assert "req-123" in err["message"] and headers["x-request-id"] == "req-123"
            assert "a bug" not in err["message"]  # internals stay in the log
            async with s.get(f"{url}/nowhere") as r:
                assert_shaped(r.status, r.content_type, await r.read(), 404)
            async with s.get(f"{url}/x") as r:
                assert_shaped(r.status, r.content_type, await r.read(), 405)
    finally:
        await runner.cleanup()
