"""`chiron load` end to end: the real openai client against a tiny OpenAI-format server in the
test's event loop (streaming and not, chat and completions, chirond's extra /models fields)."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from rich.console import Console

from chirond import loadgen
from chirond.loadgen import EndpointError, LoadConfig, parse_mix, run_load
from chirond.tokens import count_messages, count_prompt

MODEL = "tiny-1b"
DELAY_S = 0.05  # before the first content token


@dataclass
class Seen:
    path: str
    stream: bool
    max_tokens: int
    service_tier: str | None
    class_header: str | None
    ignore_eos: bool
    prompt_tokens: int


@dataclass
class FakeOpenAI:
    """Answers like vLLM: a role chunk at once, then after DELAY_S one chunk per token, a finish
    chunk and a usage chunk with no choices. `fail_every` n: every n-th request gets a 503;
    `hang_batch`: batch requests never answer (until the test ends)."""

    fail_every: int = 0
    hang_batch: bool = False
    on_request: asyncio.Event | None = None  # set when the first generation request arrives
    cut_streams: bool = False  # drop the connection after the first token of every stream
    seen: list[Seen] = field(default_factory=list)
    model_polls: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)
    _n: itertools.count[int] = field(default_factory=itertools.count)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.generate)
        app.router.add_post("/v1/completions", self.generate)
        return app

    async def models(self, request: web.Request) -> web.Response:
        self.model_polls += 1
        ready = 1 if self.model_polls <= 2 else 2  # "scales up" after the first poll of the run
        return web.json_response({"object": "list", "data": [{
            "id": MODEL, "object": "model", "owned_by": "chirond", "state": "live",
            "instances": {"ready": ready, "starting": 2 - ready, "pending": 0, "draining": 0},
            "eta_s": None, "queue": {"interactive": 0, "batch": 0}, "slo": {"ttft_s": 0.8, "tpot_s": 0.05},
        }]})

    async def generate(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        chat = request.path.endswith("/chat/completions")
        prompt = count_messages(body["messages"]) if chat else count_prompt(body["prompt"])
        stream = bool(body.get("stream"))
        n = int(body["max_tokens"])
        self.seen.append(Seen("chat" if chat else "completions", stream, n, body.get("service_tier"),
                              request.headers.get("X-Chirond-Class"), body.get("ignore_eos") is True, prompt))
        if self.on_request is not None:
            self.on_request.set()
        if self.fail_every and next(self._n) % self.fail_every == self.fail_every - 1:
            err = {"error": {"message": "no capacity", "type": "server_error", "code": 503}}
            return web.json_response(err, status=503)
        if self.hang_batch and body.get("service_tier") == "flex":
            await self.release.wait()
        usage = {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}
        if not stream:
            await asyncio.sleep(DELAY_S)
            return web.json_response(_full(chat, n, usage))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if chat:
            await _sse(resp, _chunk(chat, {"role": "assistant", "content": ""}))
        await asyncio.sleep(DELAY_S)
        for _ in range(n):
            await _sse(resp, _chunk(chat, {"content": "tok "}))
            await asyncio.sleep(0.001)
            if self.cut_streams and request.transport is not None:
                request.transport.close()
                return resp
        await _sse(resp, _chunk(chat, {} if chat else {"content": ""}, finish="length"))
        await _sse(resp, {**_chunk(chat, {}), "choices": [], "usage": usage})
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


def _chunk(chat: bool, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    if chat:
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": delta.get("content", ""), "finish_reason": finish, "logprobs": None}
        obj = "text_completion"
    return {"id": "cmpl-1", "object": obj, "created": int(time.time()), "model": MODEL, "choices": [choice]}


def _full(chat: bool, n: int, usage: dict[str, int]) -> dict[str, Any]:
    text = "tok " * n
    if chat:
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                  "finish_reason": "length", "logprobs": None}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "finish_reason": "length", "logprobs": None}
        obj = "text_completion"
    return {"id": "cmpl-1", "object": obj, "created": int(time.time()), "model": MODEL, "choices": [choice],
            "usage": usage}


async def _sse(resp: web.StreamResponse, obj: dict[str, Any]) -> None:
    await resp.write(b"data: " + json.dumps(obj).encode() + b"\n\n")


@pytest.fixture
async def serve() -> AsyncIterator[Any]:
    servers: list[tuple[TestServer, FakeOpenAI]] = []

    async def start(fake: FakeOpenAI) -> str:
        server = TestServer(fake.app(), host="127.0.0.1")
        await server.start_server()
        servers.append((server, fake))
        return str(server.make_url("/v1"))

    yield start
    for server, fake in servers:
        fake.release.set()
        await server.close()


def small(base_url: str, **over: Any) -> LoadConfig:
    cfg = LoadConfig(base_url=base_url, api_key="test", duration_s=1.0, rate=20.0, max_input_tokens=64,
                     max_output_tokens=8, batch_requests=6, batch_concurrency=2, drain_s=20.0, timeout_s=20.0,
                     mix=parse_mix("chat-stream=1,completions-stream=1,chat=1"), show_progress=False)
    return replace(cfg, **over)


async def test_drives_every_path_and_measures(serve: Any) -> None:
    fake = FakeOpenAI()
    result = await run_load(small(await serve(fake)))

    recs = result.records
    interactive = [r for r in recs if r.cls == "interactive"]
    batch = [r for r in recs if r.cls == "batch"]
    assert len(interactive) == 20 and len(batch) == 6
    assert all(r.outcome == "ok" for r in recs), [r.detail for r in recs if r.outcome != "ok"]
    assert len(fake.seen) == len(recs)
    assert result.model == MODEL  # the first model GET /models lists
    assert (result.slo.ttft_s, result.slo.tpot_s, result.slo_source) == (0.8, 0.05, "endpoint")

    # every path the mix asks for was used, and the server saw what the records say was sent
    sent = sorted((r.api, r.stream) for r in interactive)
    got = sorted((s.path, s.stream) for s in fake.seen if s.service_tier is None)
    assert sent == got
    assert {("chat", True), ("completions", True), ("chat", False)} <= set(sent)

    # batch: service_tier flex and chirond's header; interactive: neither
    flex = [s for s in fake.seen if s.service_tier == "flex"]
    assert len(flex) == 6
    assert all(s.class_header == "batch" and s.path == "chat" and not s.stream for s in flex)
    assert all(s.class_header is None for s in fake.seen if s.service_tier is None)
    assert all(s.ignore_eos for s in fake.seen)

    for r in recs:
        assert r.completion_tokens == r.max_tokens
        assert r.prompt_tokens == r.input_tokens  # prompts are built to the wanted token count
        assert r.ttft_s is not None and r.ttft_s >= DELAY_S  # the role chunk carries no content
        assert r.e2e_s is not None and r.e2e_s >= r.ttft_s
        if r.stream:
            assert r.tpot_s is not None and r.tpot_s >= 0
    assert sorted(s.max_tokens for s in fake.seen) == sorted(r.max_tokens for r in recs)

    s = result.summaries
    assert (s["interactive"].requests, s["interactive"].ok, s["interactive"].errors) == (20, 20, 0)
    assert s["batch"].attainment == 1.0
    assert result.all_answered
    # the instances were polled, at the start and once more at the end
    assert fake.model_polls >= 3
    assert result.samples[0].ready == 1 and result.samples[-1].ready == 2

    out = json.loads(json.dumps(result.to_json()))
    assert len(out["requests"]) == 26 and out["summary"]["classes"]["batch"]["ok"] == 6
    assert out["summary"]["scale_events"][0]["ready"] == 1 and out["summary"]["peak_ready"] == 2


async def test_503s_are_counted_as_errors(serve: Any) -> None:
    fake = FakeOpenAI(fail_every=3)
    result = await run_load(small(await serve(fake)))

    errors = [r for r in result.records if r.outcome == "error"]
    assert len(errors) == len(result.records) // 3
    assert all(r.status == 503 and r.error == "HTTP 503" for r in errors)
    assert all(r.outcome == "ok" for r in result.records if r not in errors)
    assert len(fake.seen) == len(result.records)  # no retries
    totals = loadgen.error_breakdown(result.records)["HTTP 503"]
    assert sum(totals.values()) == len(errors)
    s = result.summaries
    assert s["interactive"].errors + s["batch"].errors == len(errors)
    assert s["batch"].attainment == s["batch"].ok / s["batch"].requests < 1.0
    assert result.all_answered  # error answers are answers

    console = Console(file=io.StringIO(), width=100)
    loadgen.print_report(result, console)
    report = console.file.getvalue()  # type: ignore[attr-defined]
    assert "HTTP 503" in report and "SLO attainment" in report and "peak 2 ready" in report


async def test_a_dropped_stream_is_a_connection_error(serve: Any) -> None:
    result = await run_load(small(await serve(FakeOpenAI(cut_streams=True))))

    streamed = [r for r in result.records if r.stream]
    assert streamed and all(r.outcome == "error" and r.error == "connection error" for r in streamed)
    assert all(r.outcome == "ok" for r in result.records if not r.stream)
    assert result.all_answered


async def test_deadline_cancels_outstanding_requests(serve: Any) -> None:
    fake = FakeOpenAI(hang_batch=True)
    result = await run_load(small(await serve(fake), duration_s=0.5, rate=10.0, drain_s=0.5))

    batch = [r for r in result.records if r.cls == "batch"]
    assert [r.outcome for r in batch].count("unfinished") == 2  # the two batch workers' requests
    assert [r.outcome for r in batch].count("unsent") == 4
    assert all(r.outcome == "ok" for r in result.records if r.cls == "interactive")
    assert not result.all_answered
    s = result.summaries["batch"]
    assert (s.unfinished, s.unsent, s.attainment) == (6, 4, 0.0)


async def test_stop_ends_the_run_early_and_keeps_the_records(serve: Any) -> None:
    stop = asyncio.Event()
    fake = FakeOpenAI(on_request=stop)  # stop as soon as the first request arrives
    result = await run_load(small(await serve(fake), duration_s=30.0, batch_requests=0), stop=stop)

    assert result.interrupted
    outcomes = [r.outcome for r in result.records]
    assert len(outcomes) == 600
    assert outcomes.count("unsent") > 500  # arrivals were due over 30 s
    assert set(outcomes) <= {"ok", "unfinished", "unsent"}
    assert len(fake.seen) == len(outcomes) - outcomes.count("unsent")


async def test_unreachable_endpoint_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(EndpointError, match=rf"cannot reach http://127.0.0.1:{port}/v1: is chirond running\?"):
        await run_load(LoadConfig(base_url=f"http://127.0.0.1:{port}/v1", show_progress=False))


async def test_against_chirond(daemon_factory: Any) -> None:
    """The product demo's path: the load driver in front of the real daemon and simulated engines."""
    d = await daemon_factory()
    result = await run_load(small(f"http://127.0.0.1:{d.port}/v1", rate=5.0, batch_requests=3, drain_s=60.0))

    assert [r.outcome for r in result.records] == ["ok"] * 8, [r.detail for r in result.records]
    assert all(r.completion_tokens == r.max_tokens for r in result.records)
    assert (result.model, result.slo.ttft_s, result.slo.tpot_s, result.slo_source) == ("llama-8b", 2.0, 0.2, "endpoint")
    assert result.samples and all(s.ready >= 1 and s.state == "live" for s in result.samples)
