"""fake-vllm's POST /v1/responses, streamed and not, against vLLM 0.33's own code: each answer and
each event validates against vLLM's (the openai SDK's) models with no undeclared key, and equals,
up to random ids and times, what vLLM's builders make of the same request and the same text
(probes/responses_answers.py): the echoed settings, the output items, the event sequence with its
indices and sequence numbers, the terminal event and its status."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from chirond.fakevllm import FakeVllm

ROOT = Path(__file__).resolve().parents[2]
MODEL = "llama-8b"  # what the `fake` fixture serves (conftest.py), with a context of 4096
MAX_MODEL_LEN = 4096
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
REQUESTS: dict[str, dict[str, Any]] = {
    "plain": {"model": MODEL, "input": "Say hello"},
    "capped": {"input": "Say hello", "max_output_tokens": 3, "ignore_eos": True},
    "items": {"model": MODEL, "instructions": "Be brief", "max_output_tokens": 50, "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Again"}]},
    "settings": {"input": "x", "temperature": 0.3, "top_p": 0.9, "service_tier": "flex", "metadata": {"k": "v"},
                 "user": "u1", "presence_penalty": 0.5, "store": False, "parallel_tool_calls": False},
    "tools": {"input": "Weather in Paris?", "tools": [WEATHER], "max_output_tokens": 100},
    "tool-named": {"input": "Weather?", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "get_weather"}},
    "json": {"input": "Judge", "max_output_tokens": 100, "text": {"format": {
        "type": "json_schema", "name": "verdict", "schema": WEATHER["parameters"]}}},
}


async def _answers(s: FakeVllm) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as h:
        for label, body in REQUESTS.items():
            async with h.post(s.url + "/v1/responses", json=body) as r:
                assert r.status == 200, await r.text()
                out.append({"label": label, "body": body, "max_model_len": MAX_MODEL_LEN, "stream": False,
                            "answer": await r.json()})
            async with h.post(s.url + "/v1/responses", json={**body, "stream": True}) as r:
                assert r.status == 200
                raw = await r.text()
            events = []
            for block in filter(None, raw.split("\n\n")):
                name, data = block.split("\n")
                ev = json.loads(data.removeprefix("data: "))
                assert name == f"event: {ev['type']}"
                events.append(ev)
            out.append({"label": f"{label}-stream", "body": {**body, "stream": True}, "max_model_len": MAX_MODEL_LEN,
                        "stream": True, "events": events})
    return out


async def test_responses_answers_match_vllms_builders(fake: FakeVllm, probe: Callable[..., Any]) -> None:
    answers = await _answers(fake)
    problems = probe("responses_answers", answers)
    assert set(problems) == {a["label"] for a in answers}
    assert {label: p for label, p in problems.items() if p} == {}
