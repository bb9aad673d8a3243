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
    "service-tier-upper": {"model": M, "messages": MSGS, "service_tier": "FLEX"},
    "service-tier-number": {"model": M, "messages": MSGS, "service_tier": 1},
    "unknown-field": {"model": M, "messages": MSGS, "frobnicate": 1},
    "no-model": {"messages": MSGS},
    "no-messages": {"model": M},
    "messages-not-list": {"model": M, "messages": "hi"},
    "max-tokens-zero": {"model": M, "messages": MSGS, "max_tokens": 0},
    "max-tokens-string": {"model": M, "messages": MSGS, "max_tokens": "ten"},
    "max-tokens-numeric-string": {"model": M, "messages": MSGS, "max_tokens": "10"},
    "max-tokens-spaced-string": {"model": M, "messages": MSGS, "max_tokens": " 1_0 "},
    "max-tokens-float-string": {"model": M, "messages": MSGS, "max_tokens": "10.5"},
    "max-tokens-zero-string": {"model": M, "messages": MSGS, "max_tokens": "0"},
    "max-tokens-integral-float": {"model": M, "messages": MSGS, "max_tokens": 10.0},
    "max-tokens-true": {"model": M, "messages": MSGS, "max_tokens": True},
    "max-completion-tokens-string": {"model": M, "messages": MSGS, "max_completion_tokens": "7"},
    "temperature-string": {"model": M, "messages": MSGS, "temperature": "0.5"},
    "temperature-string-high": {"model": M, "messages": MSGS, "temperature": "2.5"},
    "n-string-1": {"model": M, "messages": MSGS, "n": "1"},
    "stream-yes": {"model": M, "messages": MSGS, "stream": "yes"},
    "stream-one": {"model": M, "messages": MSGS, "stream": 1},
    "stream-maybe": {"model": M, "messages": MSGS, "stream": "maybe"},
    "temperature-high": {"model": M, "messages": MSGS, "temperature": 3},
    "top-p-zero": {"model": M, "messages": MSGS, "top_p": 0},
    "n-2": {"model": M, "messages": MSGS, "n": 2},
    "n-0": {"model": M, "messages": MSGS, "n": 0},
    "n-string-3": {"model": M, "messages": MSGS, "n": "3", "stream": True},
    "n-fraction": {"model": M, "messages": MSGS, "n": 1.5},
    "stream-options-no-stream": {"model": M, "messages": MSGS, "stream_options": {"include_usage": True}},
    "top-logprobs-without-logprobs": {"model": M, "messages": MSGS, "top_logprobs": 2},
    "top-logprobs-string": {"model": M, "messages": MSGS, "logprobs": True, "top_logprobs": "2"},
    "custom-role": {"model": M, "messages": [{"role": "robot", "content": "hi"}]},
    "custom-role-no-content": {"model": M, "messages": [{"role": "robot"}]},
    "presence-penalty-high": {"model": M, "messages": MSGS, "presence_penalty": 5},
    "frequency-penalty-low": {"model": M, "messages": MSGS, "frequency_penalty": -3},
    "penalty-string": {"model": M, "messages": MSGS, "presence_penalty": "1.5"},
}
COMPLETIONS: dict[str, dict[str, Any]] = {
    "plain": {"model": M, "prompt": "hi"},
    "token-ids": {"model": M, "prompt": [1, 2, 3]},
    "echo": {"model": M, "prompt": "hi", "echo": True, "max_tokens": 2},
    "logprobs": {"model": M, "prompt": "hi", "logprobs": 2},
    "no-prompt": {"model": M},
    "empty-list": {"model": M, "prompt": []},
    "empty-list-in-list": {"model": M, "prompt": [[]]},
    "max-tokens-string": {"model": M, "prompt": "hi", "max_tokens": "10"},
    "logprobs-string": {"model": M, "prompt": "hi", "logprobs": "2"},
    "two-prompts": {"model": M, "prompt": ["a", "b"]},
    "max-tokens-negative": {"model": M, "prompt": "hi", "max_tokens": -1},
    "prompt-logprobs-stream": {"model": M, "prompt": "hi", "prompt_logprobs": 1, "stream": True},
    "prompt-logprobs": {"model": M, "prompt": "hi", "prompt_logprobs": 1},
    "best-of": {"model": M, "prompt": "hi", "best_of": 2},
    "n-2": {"model": M, "prompt": "hi", "n": 2},
}
# (endpoint, label) -> (chirond's verdict, vLLM's verdict, why they differ). Verdicts are
# "ok" or "400:param".
DIFFERENCES: dict[tuple[str, str], str] = {
    ("chat", "no-model"): "chirond serves several models and routes on the name; vLLM falls back to its only one",
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
