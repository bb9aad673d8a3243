"""Tool calls, structured output and log-probabilities through chirond to fake-vllm engines, with
the real `openai` client (and LangChain's ChatOpenAI where installed): chirond streams from the
engine and assembles non-streaming answers, so these check its assembly against the shapes vLLM
sends (fake-vllm's shapes are themselves checked against vLLM's models in tests/conformance/)."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from chirond.daemon import Daemon
from tests.support.openai_cases import client

MODEL = "llama-8b"
MSGS: Any = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER: Any = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
                   "required": ["city", "unit"]}}}


async def test_tools_logprobs_and_json_through_chirond(daemon_factory: Any) -> None:
    d: Daemon = await daemon_factory()
    c = client(d)
    r = await c.chat.completions.create(model=MODEL, messages=MSGS, tools=[WEATHER], max_tokens=100)
    (call,) = r.choices[0].message.tool_calls or []
    assert r.choices[0].finish_reason == "tool_calls" and call.type == "function"
    assert call.function.name == "get_weather" and set(json.loads(call.function.arguments)) == {"city", "unit"}
    # Streamed: the openai client's own accumulation of tool-call deltas.
    s = await c.chat.completions.create(model=MODEL, messages=MSGS, tools=[WEATHER], max_tokens=100, stream=True)
    name, args, finish = "", "", None
    async for ch in s:
        for tc in (ch.choices[0].delta.tool_calls or []) if ch.choices else []:
            name += tc.function.name or "" if tc.function else ""
            args += tc.function.arguments or "" if tc.function else ""
        if ch.choices and ch.choices[0].finish_reason:
            finish = ch.choices[0].finish_reason
    assert (name, json.loads(args), finish) == ("get_weather", json.loads(call.function.arguments), "tool_calls")

    r = await c.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=5, logprobs=True, top_logprobs=3,
                                        extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    assert lp is not None and lp.content is not None and r.usage is not None
    assert len(lp.content) == r.usage.completion_tokens == 5
    assert "".join(t.token for t in lp.content) == r.choices[0].message.content
    assert all(len(t.top_logprobs) == 3 for t in lp.content)
    rc = await c.completions.create(model=MODEL, prompt="hi", max_tokens=4, logprobs=2,
                                    extra_body={"ignore_eos": True})
    clp = rc.choices[0].logprobs
    assert clp is not None and "".join(clp.tokens or []) == rc.choices[0].text
    assert clp.text_offset == [0, 4, 8, 12]

    schema = {"type": "object", "properties": {"answer": {"type": "string"}, "score": {"type": "integer"}},
              "required": ["answer", "score"]}
    r = await c.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=100, response_format={
        "type": "json_schema", "json_schema": {"name": "verdict", "schema": schema}})
    obj = json.loads(r.choices[0].message.content or "")
    assert set(obj) == {"answer", "score"} and isinstance(obj["score"], int)
    await c.close()


async def test_models_retrieve(daemon_factory: Any) -> None:
    d: Daemon = await daemon_factory()
    c = client(d)
    m = await c.models.retrieve(MODEL)
    assert m.id == MODEL and m.object == "model"
    assert m.model_dump().get("state") == "live"  # chirond's status fields, as in /v1/models
    with pytest.raises(openai.NotFoundError, match="llama-8b"):  # the message lists the served ones
        await c.models.retrieve("org/no-such-model")
    await c.close()


async def test_langchain_chat_openai_tools_and_structured_output(daemon_factory: Any) -> None:
    lc = pytest.importorskip("langchain_openai")
    from pydantic import BaseModel

    class Verdict(BaseModel):
        answer: str
        score: int

    d: Daemon = await daemon_factory()
    llm = lc.ChatOpenAI(model=MODEL, base_url=f"http://127.0.0.1:{d.port}/v1", api_key="none", max_tokens=100,
                        max_retries=0)
    msg = await llm.bind_tools([WEATHER]).ainvoke("What is the weather in Paris?")
    assert [tc["name"] for tc in msg.tool_calls] == ["get_weather"]
    assert set(msg.tool_calls[0]["args"]) == {"city", "unit"}
    v = await llm.with_structured_output(Verdict).ainvoke("Judge this.")
    assert isinstance(v, Verdict)
