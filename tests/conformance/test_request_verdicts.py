"""A corpus of good and bad requests judged by chirond's request checks
(chirond.serve.openai_request.parse_request) and by vLLM 0.33's request models and sampling checks:
the same verdict (accepted, or 400 naming the same parameter). Where chirond differs on purpose or
not yet, the difference is listed in DIFFERENCES with why, and the test fails when the list is not
exactly what it finds: a fixed difference must leave the list, a new one must be explained."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chirond.serve.openai_errors import ApiError
from chirond.serve.openai_request import parse_request
from chirond.serve.openai_stream import _dumps
from tests.support.verdicts import differences

M = "llama-8b"
MSGS = [{"role": "user", "content": "hi"}]
CHAT: dict[str, dict[str, Any]] = {
    "plain": {"model": M, "messages": MSGS},
    "all-common": {"model": M, "messages": MSGS, "max_tokens": 5, "temperature": 0.7, "top_p": 0.9, "seed": 1,
                   "stop": ["\n"], "stream": True, "stream_options": {"include_usage": True}},
    "max-completion-tokens": {"model": M, "messages": MSGS, "max_completion_tokens": 5},
    "tools": {"model": M, "messages": MSGS, "tools": [{"type": "function", "function": {"name": "f"}}]},
    "logprobs": {"model": M, "messages": MSGS, "logprobs": True, "top_logprobs": 2},
    "json": {"model": M, "messages": MSGS, "response_format": {"type": "json_object"}},
    "service-tier-flex": {"model": M, "messages": MSGS, "service_tier": "flex"},
    "service-tier-scale": {"model": M, "messages": MSGS, "service_tier": "scale"},
    "unknown-field": {"model": M, "messages": MSGS, "frobnicate": 1},
    "no-model": {"messages": MSGS},
    "no-messages": {"model": M},
    "messages-not-list": {"model": M, "messages": "hi"},
    "max-tokens-zero": {"model": M, "messages": MSGS, "max_tokens": 0},
    "max-tokens-string": {"model": M, "messages": MSGS, "max_tokens": "ten"},
    "max-tokens-numeric-string": {"model": M, "messages": MSGS, "max_tokens": "10"},
    "temperature-high": {"model": M, "messages": MSGS, "temperature": 3},
    "top-p-zero": {"model": M, "messages": MSGS, "top_p": 0},
    "n-2": {"model": M, "messages": MSGS, "n": 2},
    "stream-options-no-stream": {"model": M, "messages": MSGS, "stream_options": {"include_usage": True}},
    "top-logprobs-without-logprobs": {"model": M, "messages": MSGS, "top_logprobs": 2},
    "bad-role": {"model": M, "messages": [{"role": "robot", "content": "hi"}]},
    "presence-penalty-high": {"model": M, "messages": MSGS, "presence_penalty": 5},
}
COMPLETIONS: dict[str, dict[str, Any]] = {
    "plain": {"model": M, "prompt": "hi"},
    "token-ids": {"model": M, "prompt": [1, 2, 3]},
    "echo": {"model": M, "prompt": "hi", "echo": True, "max_tokens": 2},
    "logprobs": {"model": M, "prompt": "hi", "logprobs": 2},
    "no-prompt": {"model": M},
    "empty-list": {"model": M, "prompt": []},
    "two-prompts": {"model": M, "prompt": ["a", "b"]},
    "max-tokens-negative": {"model": M, "prompt": "hi", "max_tokens": -1},
    "prompt-logprobs-stream": {"model": M, "prompt": "hi", "prompt_logprobs": 1, "stream": True},
    "prompt-logprobs": {"model": M, "prompt": "hi", "prompt_logprobs": 1},
    "best-of": {"model": M, "prompt": "hi", "best_of": 2},
}
# (endpoint, label) -> (chirond's verdict, vLLM's verdict, why they differ). Verdicts are
# "ok" or "400:param".
DIFFERENCES: dict[tuple[str, str], str] = {
    ("chat", "no-model"): "chirond serves several models and routes on the name; vLLM falls back to its only one",
    ("chat", "n-2"): "chirond schedules and preempts single sequences; a clear 400 says so",
    ("chat", "service-tier-scale"): "not yet: chirond takes auto, default, flex, priority only",
    ("chat", "max-tokens-numeric-string"): "not yet: vLLM's pydantic coerces '10'; chirond wants an integer",
    ("chat", "bad-role"): "not yet: vLLM takes any role (a custom message); chirond only OpenAI's and vLLM's",
    ("chat", "presence-penalty-high"): "both 400; vLLM's names no parameter, chirond's names presence_penalty",
    ("completions", "empty-list"): "not yet: vLLM's model accepts prompt: [] (its renderer refuses later)",
    ("completions", "two-prompts"): "chirond sizes and schedules one prompt per request",
}


def chirond_verdict(endpoint: str, body: dict[str, Any]) -> str:
    try:
        parse_request(endpoint, _dumps(body), "application/json", 1 << 20)
    except ApiError as e:
        return f"400:{e.param}"
    return "ok"


def test_same_verdict_as_vllm(probe: Callable[..., Any]) -> None:
    corpus = [("chat", k, v) for k, v in CHAT.items()] + [("completions", k, v) for k, v in COMPLETIONS.items()]
    theirs = probe("request_verdicts", [{"label": f"{e}:{k}", "endpoint": e, "body": b} for e, k, b in corpus])
    found = differences(corpus, theirs, chirond_verdict)
    assert sorted(found) == sorted(DIFFERENCES), "\n".join(f"{k}: {v}" for k, v in sorted(found.items()))
