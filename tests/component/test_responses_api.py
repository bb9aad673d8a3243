"""POST /v1/responses through chirond to fake-vllm engines, with the real `openai` client and
LangChain's ChatOpenAI(use_responses_api=True): streamed and not, through the queues, classes,
quotas and usage accounting that chat goes through; stateful requests refused with a 400 naming
the parameter."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from typing import Any

import aiohttp
import openai
import pytest

from chirond.daemon import Daemon
from tests.support.daemon import ready_count
from tests.support.openai_cases import client
from tests.support.wait import wait_for

MODEL = "llama-8b"
WEATHER: Any = {"type": "function", "name": "get_weather", "description": "Current weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                               "required": ["city"]}}


def _counter(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_responses_streamed_and_not_with_usage_and_classes(daemon_factory: Any) -> None:
    d: Daemon = await daemon_factory(api__auth="keys")
    key = d.users.mint("alice")
    c = client(d, key)
    r = await c.responses.create(model=MODEL, input="Say hello", instructions="Be brief", max_output_tokens=6,
                                 extra_body={"ignore_eos": True})
    assert (r.object, r.status, r.model) == ("response", "incomplete", MODEL)
    assert r.incomplete_details is not None and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage is not None and r.usage.output_tokens == 6 and len(r.output_text) == 24  # 4 characters a token
    used = d.users.tokens_today("alice")
    assert used == r.usage.total_tokens  # accounted as chat is: the engine's counts

    events = []
    stream = await c.responses.create(model=MODEL, input="Say hello", max_output_tokens=5, stream=True,
                                      extra_body={"ignore_eos": True}, service_tier="flex")
    async for ev in stream:
        events.append(ev)
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.incomplete"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert final.output_text == text and final.usage is not None and final.usage.output_tokens == 5
    assert final.service_tier == "flex"
    assert d.users.tokens_today("alice") == used + final.usage.total_tokens

    async with aiohttp.ClientSession() as h, h.get(f"http://127.0.0.1:{d.port}/metrics") as m:
        prom = await m.text()
    assert _counter(prom, "chirond_requests_total", model=MODEL, **{"class": "interactive"}, outcome="ok") == 1
    assert _counter(prom, "chirond_requests_total", model=MODEL, **{"class": "batch"}, outcome="ok") == 1
    await c.close()


async def test_responses_tools_and_raw_events(daemon_factory: Any) -> None:
    d: Daemon = await daemon_factory()
    c = client(d)
    r = await c.responses.create(model=MODEL, input="Weather in Paris?", tools=[WEATHER], max_output_tokens=100)
    (call,) = [o for o in r.output if o.type == "function_call"]
    assert call.name == "get_weather" and set(json.loads(call.arguments)) == {"city"}
    # The events as vLLM frames them: an `event:` line naming each one, no [DONE].
    body = {"model": MODEL, "input": "hi", "max_output_tokens": 3, "stream": True}
    async with aiohttp.ClientSession() as h, h.post(f"http://127.0.0.1:{d.port}/v1/responses", json=body) as resp:
        assert resp.status == 200 and resp.content_type == "text/event-stream"
        raw = await resp.text()
    blocks = [b for b in raw.split("\n\n") if b and not b.startswith(":")]
    for b in blocks:
        name, data = b.split("\n")
        assert name == "event: " + json.loads(data.removeprefix("data: "))["type"]
    assert "[DONE]" not in raw
    await c.close()


@pytest.mark.parametrize(("extra", "param"), [
    ({"previous_response_id": "resp_123"}, "previous_response_id"),
    ({"conversation": "conv_1"}, "conversation"),
    ({"background": True}, "background"),
    ({"prompt": {"id": "pmpt_1"}}, "prompt"),
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"service_tier": "fast"}, "service_tier"),
])
async def test_stateful_and_bad_requests_get_a_400_naming_the_param(daemon_factory: Any, extra: dict[str, Any],
                                                                     param: str) -> None:
    d: Daemon = await daemon_factory()
    c = client(d)
    with pytest.raises(openai.BadRequestError) as info:
        await c.responses.create(model=MODEL, input="hi", extra_body=extra)
    assert isinstance(info.value.body, dict) and info.value.body.get("param") == param
    with pytest.raises(openai.NotFoundError):  # chirond stores nothing to retrieve
        await c.responses.retrieve("resp_123")
    await c.close()


async def test_langchain_chat_openai_with_the_responses_api(daemon_factory: Any) -> None:
    lc = pytest.importorskip("langchain_openai")
    d: Daemon = await daemon_factory()
    llm = lc.ChatOpenAI(model=MODEL, base_url=f"http://127.0.0.1:{d.port}/v1", api_key="none", max_tokens=8,
                        max_retries=0, use_responses_api=True)
    msg = await llm.ainvoke("Say hello")
    assert isinstance(msg.content, list) and msg.content and msg.text
    assert msg.usage_metadata is not None and msg.usage_metadata["output_tokens"] >= 1
    chunks = [ch async for ch in llm.astream("Say hello")]
    streamed = "".join(ch.text for ch in chunks)
    assert len(chunks) > 1 and streamed
    calls = await llm.bind_tools([WEATHER]).ainvoke("Weather in Paris?")
    assert [tc["name"] for tc in calls.tool_calls] == ["get_weather"]


async def test_a_lost_instance_restarts_a_waiting_answer_and_ends_a_started_stream(daemon_factory: Any) -> None:
    d: Daemon = await daemon_factory(daemon__policy="static", model__sim_speedup=1.0)
    c = client(d)

    def kill_the_instance() -> None:
        (inst,) = [i for i in d.instances.values() if i.routable]
        assert inst.job_id is not None
        os.kill(int(inst.job_id.split("-")[1]), signal.SIGKILL)

    # A started stream cannot be resumed: it ends with an error event, on which the openai client raises.
    s = await c.responses.create(model=MODEL, input="hi", max_output_tokens=400, stream=True,
                                 extra_body={"ignore_eos": True})
    deltas = 0
    with pytest.raises(openai.APIError, match=r"mid-stream|closed the stream|connection"):
        async for ev in s:
            if ev.type == "response.output_text.delta":
                deltas += 1
                if deltas == 3:
                    kill_the_instance()
    assert deltas >= 3
    await wait_for(lambda: ready_count(d) >= 1 and all(i.routable for i in d.instances.values()), 30,
                   "a replacement instance")
    # A non-streaming client has seen nothing: the failed attempt starts again, from scratch, on the replacement.
    task = asyncio.create_task(c.responses.create(model=MODEL, input="hi", max_output_tokens=300,
                                                  extra_body={"ignore_eos": True}))
    await wait_for(lambda: any(s.inflight for s in d.dispatcher.slots.values()), 10, "the request running")
    await asyncio.sleep(0.3)
    kill_the_instance()
    r = await task
    assert r.status == "incomplete" and r.usage is not None and r.usage.output_tokens == 300
    await c.close()
