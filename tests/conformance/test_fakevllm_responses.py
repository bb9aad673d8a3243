"""fake-vllm's answers, streamed and not, its error bodies and /v1/models, validated by vLLM
0.33's own pydantic response models; a key that vLLM's model does not declare counts as a
difference too (the models accept extra keys, so validation alone would not see one)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from chirond.fakevllm import FakeVllm

ROOT = Path(__file__).resolve().parents[2]
MODEL = "llama-8b"
MSGS = [{"role": "user", "content": "Say hello"}]
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]},
                                     "days": {"type": "integer", "minimum": 1}},
    "required": ["city", "unit", "days"]}}}


async def _answers(s: FakeVllm) -> list[dict[str, Any]]:
    """(label, kind, body) of every answer shape fake-vllm gives."""
    out: list[dict[str, Any]] = []
    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("chat", "/v1/chat/completions", {"model": MODEL, "messages": MSGS, "max_tokens": 5}),
        ("chat-length", "/v1/chat/completions", {"messages": MSGS, "max_completion_tokens": 3, "ignore_eos": True}),
        ("completion", "/v1/completions", {"model": MODEL, "prompt": "Say hello", "max_tokens": 5}),
        ("completion-ids", "/v1/completions", {"model": MODEL, "prompt": [1, 2, 3], "max_tokens": 2}),
        ("chat-tools", "/v1/chat/completions", {"messages": MSGS, "tools": [WEATHER], "max_tokens": 100}),
        ("chat-tool-named", "/v1/chat/completions", {"messages": MSGS, "tools": [WEATHER], "max_tokens": 100,
                                                     "tool_choice": {"type": "function",
                                                                     "function": {"name": "get_weather"}}}),
        ("chat-logprobs", "/v1/chat/completions", {"messages": MSGS, "max_tokens": 4, "logprobs": True,
                                                   "top_logprobs": 3}),
        ("chat-json", "/v1/chat/completions", {"messages": MSGS, "max_tokens": 100, "response_format": {
            "type": "json_schema", "json_schema": {"name": "answer", "schema": WEATHER["function"]["parameters"]}}}),
        ("completion-logprobs", "/v1/completions", {"prompt": "Say hello", "max_tokens": 4, "logprobs": 2}),
        ("chat-n", "/v1/chat/completions", {"messages": MSGS, "max_tokens": 3, "n": 3}),
        ("completion-n", "/v1/completions", {"prompt": "Say hello", "max_tokens": 3, "n": 2, "ignore_eos": True}),
    ]
    async with aiohttp.ClientSession() as h:
        for label, path, body in requests:
            kind = "chat" if "chat" in path else "completion"
            async with h.post(s.url + path, json=body) as r:
                assert r.status == 200, await r.text()
                out.append({"label": label, "kind": kind, "body": await r.json()})
            for opts in ({}, {"stream_options": {"include_usage": True, "continuous_usage_stats": True}}):
                async with h.post(s.url + path, json={**body, "stream": True, **opts}) as r:
                    assert r.status == 200
                    events = [ln[6:] for ln in (await r.text()).split("\n\n") if ln.startswith("data: ")]
                assert events[-1] == "[DONE]"
                for i, ev in enumerate(events[:-1]):
                    out.append({"label": f"{label}-stream{'-usage' if opts else ''}[{i}]", "kind": f"{kind}_chunk",
                                "body": json.loads(ev)})
        errors: list[tuple[str, str, Any, str]] = [
            ("bad-json", "/v1/chat/completions", b"{nope", "application/json"),
            ("wrong-type", "/v1/chat/completions", {"messages": MSGS, "max_tokens": "ten"}, ""),
            ("no-messages", "/v1/chat/completions", {"model": MODEL}, ""),
            ("stream-options", "/v1/completions", {"prompt": "x", "stream_options": {"include_usage": True}}, ""),
            ("context", "/v1/completions", {"prompt": "x " * 20000, "max_tokens": 5}, ""),
            ("unknown-model", "/v1/completions", {"model": "nope", "prompt": "x"}, ""),
            ("media-type", "/v1/completions", b'{"prompt": "x"}', "text/plain"),
        ]
        for label, path, body, ctype in errors:
            kw: dict[str, Any] = {"json": body} if not ctype else {"data": body, "headers": {"Content-Type": ctype}}
            async with h.post(s.url + path, **kw) as r:
                assert r.status >= 400
                got = await r.json()
                assert got["error"]["code"] == r.status, label
                out.append({"label": f"error-{label}", "kind": "error", "body": got})
        async with h.get(s.url + "/v1/models") as r:
            out.append({"label": "models", "kind": "model_list", "body": await r.json()})
    return out


async def test_answers_validate_against_vllms_models(fake: FakeVllm, probe: Callable[..., Any]) -> None:
    answers = await _answers(fake)
    assert len(answers) > 60
    problems = probe("response_models", answers)
    assert set(problems) == {a["label"] for a in answers}
    bad = {label: p for label, p in problems.items() if p}
    assert bad == {}
