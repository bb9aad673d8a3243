"""Waiting that shows: a stream for a scaled-to-zero model gets its headers and a keep-alive comment
with the model's state and ETA at once, then its answer; a non-streaming answer says how long it
queued and waited for a start; a model that cannot start answers 503 with Retry-After at once."""

from __future__ import annotations

import time
from typing import Any

import aiohttp

from chirond.daemon import Daemon
from chirond.serve.api import QUEUE_HEADER, START_HEADER
from tests.support.daemon import client, ready_count

MODEL = "llama-8b"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


async def test_a_stream_waiting_for_a_cold_start_gets_headers_and_keepalives_then_its_answer(
    daemon_factory: Any,
) -> None:
    d: Daemon = await daemon_factory(wait_ready=0, model__min_instances=0, model__initial_instances=0,
                                     model__sim_startup_s=3.0, api__keepalive_s=2.0)
    url = f"http://127.0.0.1:{d.port}/v1/chat/completions"
    async with aiohttp.ClientSession() as s:
        t0 = time.monotonic()
        async with s.post(url, json={**BODY, "stream": True}) as r:
            headers_s = time.monotonic() - t0
            assert r.status == 200 and r.headers["Content-Type"] == "text/event-stream"
            first = await r.content.readline()
            first_s = time.monotonic() - t0
            assert ready_count(d) == 0  # it came while the instance was still starting
            assert first.startswith(b": chirond: waiting for an instance of llama-8b; state=")
            assert b"eta_s=" in first and b"queued=1/0" in first
            rest = (await r.read()).decode()
    assert headers_s < 1.0 and first_s < 1.0
    comments = [x for x in rest.splitlines() if x.startswith(":")]
    assert comments, "keep-alive comments while the instance starts"
    data = [x for x in rest.splitlines() if x.startswith("data: ")]
    assert data[-1] == "data: [DONE]" and any('"content"' in x for x in data)
    # The openai client skips the comments: the same stream reads as a normal one.
    stream = await client(d).chat.completions.create(model=MODEL, messages=BODY["messages"], max_tokens=4,
                                                     stream=True)
    assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])


async def test_a_non_streaming_answer_says_how_long_it_queued_and_waited_for_a_start(daemon_factory: Any) -> None:
    d: Daemon = await daemon_factory(wait_ready=0, model__min_instances=0, model__initial_instances=0,
                                     model__sim_startup_s=1.5)
    raw = await client(d).chat.completions.with_raw_response.create(model=MODEL, messages=BODY["messages"],
                                                                    max_tokens=4)
    assert raw.parse().choices[0].message.content
    queued, started = float(raw.headers[QUEUE_HEADER]), float(raw.headers[START_HEADER])
    assert queued >= 1.5 and started == queued  # all of it waiting for the start
    warm = await client(d).chat.completions.with_raw_response.create(model=MODEL, messages=BODY["messages"],
                                                                     max_tokens=4)
    assert float(warm.headers[START_HEADER]) == 0.0 and float(warm.headers[QUEUE_HEADER]) < queued


async def test_a_disabled_model_answers_503_with_retry_after_at_once(daemon_factory: Any) -> None:
    d: Daemon = await daemon_factory(wait_ready=0, model__min_instances=0, model__initial_instances=0,
                                     model__max_instances=0)
    url = f"http://127.0.0.1:{d.port}/v1/chat/completions"
    async with aiohttp.ClientSession() as s:
        for stream in (False, True):
            t0 = time.monotonic()
            async with s.post(url, json={**BODY, "stream": stream}) as r:
                elapsed = time.monotonic() - t0
                body = await r.json()
                assert r.status == 503 and int(r.headers["Retry-After"]) > 0
                assert body["error"]["code"] == "model_disabled" and "disabled" in body["error"]["message"]
            assert elapsed < 1.0
    assert not d.gateway.jobs


async def test_a_model_whose_launches_are_refused_fails_waiting_requests_and_new_ones_at_once(
    daemon_factory: Any,
) -> None:
    d: Daemon = await daemon_factory(wait_ready=0, model__min_instances=0, model__initial_instances=0,
                                     model__command=("/nonexistent/vllm", "serve"), api__keepalive_s=0.3)
    url = f"http://127.0.0.1:{d.port}/v1/chat/completions"
    async with aiohttp.ClientSession() as s:
        # The first request queues; the launch it causes is refused; it is told so, not left to max_wait_s.
        async with s.post(url, json={**BODY, "stream": True}) as r:
            text = (await r.read()).decode()
        assert r.status == 200 and text.startswith(": chirond: waiting")
        assert '"code":"launch_refused"' in text.replace(" ", "") and "/nonexistent/vllm" in text
        assert text.rstrip().endswith("data: [DONE]")
        async with s.post(url, json=BODY) as r:
            body = await r.json()
        assert r.status == 503 and r.headers["Retry-After"] and body["error"]["code"] == "launch_refused"
