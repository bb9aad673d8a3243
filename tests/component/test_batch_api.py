"""The Files and Batches routes over a real BatchStore (SQLite in tmp_path), served by aiohttp on
127.0.0.1 and driven by the real `openai` client, for two users. Lines are not executed here (that
is the runner's job): the test plays the runner by leasing and recording lines in the store."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from chirond import batch_cli
from chirond.batch.store import BatchLimits, BatchStore, LineResult
from chirond.serve.batch_api import BatchApi
from chirond.serve.http_errors import error_middleware
from chirond.serve.openai_api import ApiError

MODEL = "llama-8b"
KEYS = {"key-alice": "alice", "key-bob": "bob"}
MAX_FILE = 2 << 20
QUOTA_LINES = 50


def auth(request: web.Request) -> str:
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    user = KEYS.get(key.strip()) if scheme.lower() == "bearer" else None
    if user is None:
        raise ApiError.unauthorized()
    return user


@dataclass
class Server:
    store: BatchStore
    url: str
    files_dir: Path
    created: list[str] = field(default_factory=list)
    clients: list[openai.AsyncOpenAI] = field(default_factory=list)

    def client(self, key: str = "key-alice") -> openai.AsyncOpenAI:
        c = openai.AsyncOpenAI(base_url=self.url, api_key=key, max_retries=0, timeout=20)
        self.clients.append(c)
        return c

    def finish(self, batch_id: str, answer: Callable[[int], tuple[int, dict | None]] | None = None) -> None:
        """Play the runner: validate, lease every line, record an answer for each, finalize."""
        self.store.validate(batch_id)
        for _ in range(100):
            lines = self.store.next_lines(MODEL, 64)
            if not lines:
                break
            results = []
            for ln in lines:
                status, body = answer(ln.idx) if answer else (200, completion(ln.custom_id))
                results.append(LineResult(ln.batch_id, ln.idx, status, body))
            self.store.record(results)
        for _ in range(10):
            if self.store.batch_status(batch_id) in batch_cli.TERMINAL:
                break
            self.store.tick()


def completion(text: str) -> dict:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }


def chat_line(cid: str, model: str = MODEL, url: str = "/v1/chat/completions") -> dict:
    return {
        "custom_id": cid,
        "method": "POST",
        "url": url,
        "body": {"model": model, "messages": [{"role": "user", "content": f"say {cid}"}]},
    }


def jsonl(lines: list[dict]) -> bytes:
    return b"".join(json.dumps(x).encode() + b"\n" for x in lines)


def quota(user: str, lines: int) -> str | None:
    return f"{user} may queue {QUOTA_LINES} lines; this file has {lines}" if lines > QUOTA_LINES else None


@contextlib.asynccontextmanager
async def serving(api: BatchApi) -> AsyncIterator[int]:
    """The routes of `api` on 127.0.0.1; yields the port."""
    app = web.Application(middlewares=[error_middleware(1 << 20)])
    api.add_routes(app)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    files_dir = tmp_path / "files"
    store = BatchStore(tmp_path / "chirond.db", files_dir, BatchLimits(max_file_bytes=MAX_FILE), [MODEL])
    store.open()
    srv = Server(store, "", files_dir)
    try:
        async with serving(BatchApi(store, auth, srv.created.append, quota)) as port:
            srv.url = f"http://127.0.0.1:{port}/v1"
            try:
                yield srv
            finally:
                for c in srv.clients:
                    await c.close()
    finally:
        store.close()


async def upload(c: openai.AsyncOpenAI, data: bytes, name: str = "in.jsonl") -> Any:
    return await c.files.create(file=(name, data), purpose="batch")


# ---------------------------------------------------------------- files


async def test_files_roundtrip_and_isolation(server: Server) -> None:
    alice, bob = server.client(), server.client("key-bob")
    # bigger than one read chunk of the server, so the upload and the download stream in parts
    data = jsonl([chat_line(f"r{i}") for i in range(10_000)])
    assert 512 * 1024 < len(data) < MAX_FILE
    f = await upload(alice, data, "big.jsonl")
    assert (f.object, f.purpose, f.filename, f.bytes) == ("file", "batch", "big.jsonl", len(data))
    assert f.id.startswith("file-")
    assert (await alice.files.retrieve(f.id)).id == f.id
    assert (await alice.files.content(f.id)).content == data
    assert [x.id async for x in alice.files.list()] == [f.id]
    assert [x.id async for x in bob.files.list()] == []
    for call in (bob.files.retrieve, bob.files.content, bob.files.delete):
        with pytest.raises(openai.NotFoundError):
            await call(f.id)
    d = await alice.files.delete(f.id)
    assert (d.id, d.deleted) == (f.id, True)
    with pytest.raises(openai.NotFoundError):
        await alice.files.retrieve(f.id)
    with pytest.raises(openai.NotFoundError):
        await alice.files.content(f.id)


def open_by_this_process(path: Path) -> bool:
    for fd in Path("/proc/self/fd").iterdir():
        try:
            if os.readlink(fd).startswith(str(path)):
                return True
        except OSError:
            continue
    return False


async def test_a_download_nobody_reads_is_cut_off_and_lets_a_deleted_file_go(tmp_path: Path) -> None:
    # A client that asks for a large file and then stops reading would keep it open (and, once the
    # file is deleted, its space taken) for as long as it likes: after write_timeout_s without
    # progress the connection is closed and the file with it.
    store = BatchStore(tmp_path / "chirond.db", tmp_path / "files", BatchLimits(max_file_bytes=64 << 20), [MODEL])
    store.open()
    try:
        up = store.new_upload()
        line = json.dumps(chat_line("x" * 400)).encode() + b"\n"
        for _ in range((32 << 20) // len(line)):  # 32 MiB: far more than the sockets' buffers hold
            up.write(line)
        fid = up.commit("alice", "big.jsonl", "batch")["id"]
        path = store.files_dir / fid
        async with serving(BatchApi(store, auth, lambda b: None, write_timeout_s=1.0)) as port:
            await stall_a_download_then_delete(store, port, fid, path)
    finally:
        store.close()


async def stall_a_download_then_delete(store: BatchStore, port: int, fid: str, path: Path) -> None:
    """Asks for the file, reads the status line and nothing more, deletes the file; the server
    must then let go of it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /v1/files/{fid}/content HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer key-alice\r\n\r\n"
                 .encode())
    assert (await reader.readline()).startswith(b"HTTP/1.1 200")  # and then not another byte is read
    for _ in range(100):  # bounded: until the server is stuck writing with the file open
        if open_by_this_process(path):
            break
        await asyncio.sleep(0.05)
    assert open_by_this_process(path)
    store.delete_file("alice", fid)
    for _ in range(200):  # bounded: the stalled download is cut off, the deleted file closed
        if not open_by_this_process(path):
            break
        await asyncio.sleep(0.1)
    assert not open_by_this_process(path)
    writer.close()


async def test_files_list_pages(server: Server) -> None:
    alice = server.client()
    ids = [(await upload(alice, jsonl([chat_line(str(i))]))).id for i in range(3)]
    page = await alice.files.list(limit=2, order="asc")
    assert [x.id for x in page.data] == ids[:2] and page.has_more
    assert [x.id async for x in alice.files.list(limit=2, order="asc")] == ids  # the client follows `after`
    assert [x.id async for x in alice.files.list(order="desc")] == ids[::-1]


async def test_oversized_upload_is_413_naming_the_limit_and_leaves_nothing(server: Server) -> None:
    alice = server.client()
    # over the limit but under the Content-Length early check: the store stops it while streaming
    streamed = b"x" * (MAX_FILE + MAX_FILE // 4)
    # far over: refused from the Content-Length alone
    early = b"x" * (MAX_FILE * 3)
    for data in (streamed, early):
        with pytest.raises(openai.APIStatusError) as ei:
            await upload(alice, data)
        assert ei.value.status_code == 413
        assert str(MAX_FILE) in ei.value.message
    assert [x async for x in alice.files.list()] == []
    leftovers = [p for p in server.files_dir.rglob("*") if p.is_file()]
    assert leftovers == []


async def test_upload_bad_input(server: Server) -> None:
    alice = server.client()
    with pytest.raises(openai.BadRequestError) as ei:
        await alice.files.create(file=("a.jsonl", b"{}\n"), purpose="fine-tune")
    assert ei.value.body["param"] == "purpose"  # type: ignore[index]
    headers = {"Authorization": "Bearer key-alice"}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server.url}/files", json={"purpose": "batch"}, headers=headers) as r:
            assert r.status == 415
            assert "multipart/form-data" in (await r.json())["error"]["message"]
        form = aiohttp.FormData(default_to_multipart=True)
        form.add_field("purpose", "batch")
        async with http.post(f"{server.url}/files", data=form, headers=headers) as r:
            body = await r.json()
            assert (r.status, body["error"]["param"]) == (400, "file")
        form = aiohttp.FormData()
        form.add_field("file", b"{}\n", filename="a.jsonl")
        async with http.post(f"{server.url}/files", data=form, headers=headers) as r:
            body = await r.json()
            assert (r.status, body["error"]["param"]) == (400, "purpose")
        async with http.get(f"{server.url}/files") as r:  # no key
            assert r.status == 401
        bad = {**headers, "Content-Type": "multipart/form-data; boundary=xyz"}
        async with http.post(f"{server.url}/files", data=b"garbage without parts", headers=bad) as r:
            assert r.status == 400
            assert (await r.json())["error"]["param"] in ("file", "purpose")
    assert [x async for x in alice.files.list()] == []


async def test_upload_with_fields_in_any_order(server: Server) -> None:
    """curl -F file=@x -F purpose=batch sends the file first; an unknown small field is ignored."""
    form = aiohttp.FormData()
    form.add_field("file", jsonl([chat_line("a")]), filename="curl.jsonl")
    form.add_field("expires_after[anchor]", "created_at")
    form.add_field("purpose", "batch")
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{server.url}/files", data=form, headers={"Authorization": "Bearer key-alice"}) as r,
    ):
        body = await r.json()
        assert (r.status, body["filename"], body["purpose"]) == (200, "curl.jsonl", "batch")
    assert (await server.client().files.content(body["id"])).content == jsonl([chat_line("a")])


# ---------------------------------------------------------------- batches


async def test_batch_lifecycle_with_a_bad_line(server: Server) -> None:
    alice = server.client()
    lines = [chat_line("a"), chat_line("bad", model="no-such-model"), chat_line("b")]
    f = await upload(alice, jsonl(lines))
    b = await alice.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"project": "x"}
    )
    assert (b.status, b.input_file_id, b.metadata) == ("validating", f.id, {"project": "x"})
    assert server.created == [b.id]
    server.store.validate(b.id)
    b = await alice.batches.retrieve(b.id)
    assert b.status == "in_progress"
    assert b.request_counts is not None and b.request_counts.total >= 2
    server.finish(b.id)
    b = await alice.batches.retrieve(b.id)
    assert b.status == "completed"
    assert b.request_counts is not None
    assert (b.request_counts.completed, b.request_counts.failed) == (2, 1)
    assert b.output_file_id and b.error_file_id
    out = [json.loads(x) for x in (await alice.files.content(b.output_file_id)).content.splitlines()]
    assert sorted(x["custom_id"] for x in out) == ["a", "b"]
    assert all(x["response"]["status_code"] == 200 and x["error"] is None for x in out)
    errs = [json.loads(x) for x in (await alice.files.content(b.error_file_id)).content.splitlines()]
    assert [x["custom_id"] for x in errs] == ["bad"]
    assert "no-such-model" in errs[0]["error"]["message"]
    # bob sees none of it
    bob = server.client("key-bob")
    for call in (bob.batches.retrieve, bob.batches.cancel):
        with pytest.raises(openai.NotFoundError):
            await call(b.id)
    with pytest.raises(openai.NotFoundError):
        await bob.files.content(b.output_file_id)
    assert (await bob.batches.list()).data == []


async def test_batch_list_cancel_and_windows(server: Server) -> None:
    alice = server.client()
    f = await upload(alice, jsonl([chat_line("a"), chat_line("b")]))
    b1 = await alice.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    week: Any = "7d"  # a chirond extension: the client's type says "24h" only
    b2 = await alice.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window=week)
    assert b2.completion_window == "7d"
    page = await alice.batches.list(limit=1)
    assert [x.id for x in page.data] == [b2.id] and page.has_more
    assert [x.id async for x in alice.batches.list(limit=1)] == [b2.id, b1.id]
    server.store.validate(b1.id)
    c = await alice.batches.cancel(b1.id)
    assert c.status in ("cancelling", "cancelled")
    server.store.tick()
    assert (await alice.batches.retrieve(b1.id)).status == "cancelled"


async def test_batch_create_bad_input(server: Server) -> None:
    alice, bob = server.client(), server.client("key-bob")
    f = await upload(alice, jsonl([chat_line("a")]))
    bad: Any = "5s"
    with pytest.raises(openai.BadRequestError):
        await alice.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h")
    with pytest.raises(openai.BadRequestError):
        await alice.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window=bad)
    with pytest.raises(openai.NotFoundError):  # another user's file
        await bob.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        await alice.batches.retrieve("batch_nope")
    headers = {"Authorization": "Bearer key-alice"}
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{server.url}/batches", data=b"{nope", headers={**headers, "Content-Type": "application/json"}
        ) as r:
            assert (r.status, (await r.json())["error"]["code"]) == (400, "invalid_json")
        async with http.post(
            f"{server.url}/batches", json={"input_file_id": f.id, "endpoint": "/v1/chat/completions"}, headers=headers
        ) as r:
            body = await r.json()
            assert (r.status, body["error"]["param"]) == (400, "completion_window")
        async with http.post(
            f"{server.url}/batches",
            json={
                "input_file_id": f.id,
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
                "metadata": {"k": 1},
            },
            headers=headers,
        ) as r:
            assert (r.status, (await r.json())["error"]["param"]) == (400, "metadata")
        huge = {"input_file_id": f.id, "endpoint": "/v1/chat/completions", "completion_window": "24h", "x": "y" * 70000}
        async with http.post(f"{server.url}/batches", json=huge, headers=headers) as r:
            assert (r.status, (await r.json())["error"]["code"]) == (413, "request_too_large")
        async with http.get(f"{server.url}/batches?limit=0", headers=headers) as r:
            assert (r.status, (await r.json())["error"]["param"]) == (400, "limit")
    assert server.created == []
    assert (await alice.batches.list()).data == []


async def test_lines_quota_is_429(server: Server) -> None:
    alice = server.client()
    f = await upload(alice, jsonl([chat_line(str(i)) for i in range(QUOTA_LINES + 1)]))
    with pytest.raises(openai.RateLimitError) as ei:
        await alice.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert f"this file has {QUOTA_LINES + 1}" in ei.value.message
    assert server.created == []


# ---------------------------------------------------------------- the CLI against the same server


def _cli(argv: list[str]) -> Any:
    ap = batch_cli.argparse.ArgumentParser(prog="chiron")
    batch_cli.add_parsers(ap.add_subparsers(dest="cmd", required=True))
    return ap.parse_args(argv)


async def test_cli_submit_wait_results_list_status_cancel(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # rich tables: room for whole ids
    conn = ["--url", server.url, "--api-key", "key-alice", "--timeout", "20"]
    src = tmp_path / "prompts.jsonl"
    src.write_text(
        '{"prompt": "one"}\n{"messages": [{"role": "user", "content": "two"}], "custom_id": "two"}\n'
        '{"prompt": "three", "model": "no-such-model"}\n'
    )
    args = _cli(
        ["batch", "submit", str(src), "--model", MODEL, "--wait", "--poll-s", "0.05", "--metadata", "team=a", *conn]
    )
    cli = asyncio.create_task(asyncio.to_thread(args.func, args))
    try:
        for _ in range(2000):  # the runner's part: wait for the batch to be created, then run it
            if server.created or cli.done():
                break
            await asyncio.sleep(0.01)
        assert server.created, "the CLI created no batch"
        batch_id = server.created[0]
        server.finish(batch_id)
        assert await cli == 0  # completed (one line failed: that is in the errors file, not the exit status)
    finally:
        if not cli.done():  # a failed check above: end the batch, so the CLI's wait ends and its thread too
            for row in server.store.list_batches("alice", None, 100)[0]:
                server.store.cancel("alice", row["id"])
            server.store.tick()
            await cli
    out = [json.loads(x) for x in (tmp_path / "prompts.output.jsonl").read_text().splitlines()]
    assert sorted(x["custom_id"] for x in out) == ["line-1", "two"]
    errs = [json.loads(x) for x in (tmp_path / "prompts.errors.jsonl").read_text().splitlines()]
    assert [x["custom_id"] for x in errs] == ["line-3"]
    b = await server.client().batches.retrieve(batch_id)
    assert b.metadata == {"team": "a"}
    text = capsys.readouterr().out
    assert batch_id in text and "prompts.output.jsonl" in text

    args = _cli(["batch", "results", batch_id, "--out", str(tmp_path / "again.jsonl"), *conn])
    assert await asyncio.to_thread(args.func, args) == 0
    assert (tmp_path / "again.jsonl").read_bytes() == (tmp_path / "prompts.output.jsonl").read_bytes()
    assert (tmp_path / "again.errors.jsonl").read_bytes() == (tmp_path / "prompts.errors.jsonl").read_bytes()

    args = _cli(["batch", "submit", str(src), "--model", MODEL, "--window", "1h", *conn])
    assert await asyncio.to_thread(args.func, args) == 0
    second = server.created[1]
    for argv in (["list"], ["status", second]):
        args = _cli(["batch", *argv, *conn])
        assert await asyncio.to_thread(args.func, args) == 0
    text = capsys.readouterr().out
    assert batch_id in text and second in text and "validating" in text

    args = _cli(["batch", "results", second, *conn])
    assert await asyncio.to_thread(args.func, args) == 2
    assert "error: batch " + second + " is validating" in capsys.readouterr().err
    server.store.validate(second)
    args = _cli(["batch", "cancel", second, *conn])
    assert await asyncio.to_thread(args.func, args) == 0
    assert server.store.batch_status(second) in ("cancelling", "cancelled")

    args = _cli(["batch", "status", second, "--url", server.url, "--api-key", "key-bob", "--timeout", "20"])
    assert await asyncio.to_thread(args.func, args) == 2
    assert capsys.readouterr().err.startswith("error: 404: ")


async def test_cli_rejects_bad_input_before_uploading(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "p.jsonl"
    src.write_text('{"prompt": "a"}\n')
    args = _cli(["batch", "submit", str(src), "--url", server.url, "--api-key", "key-alice", "--timeout", "20"])
    assert await asyncio.to_thread(args.func, args) == 2
    assert "line 1: the request names no model: pass --model" in capsys.readouterr().err
    assert [x async for x in server.client().files.list()] == []
