"""A corpus of good and bad POST /v1/responses bodies judged by chirond's checks
(chirond.serve.responses_request.parse_responses) and by vLLM 0.33 (its ResponsesRequest model,
its sampling checks and its serving class's checks, store off): the same verdict, accepted or
refused with the same status and parameter. Where chirond differs on purpose, DIFFERENCES gives
chirond's verdict and why, and the test fails when that list is not exactly what it finds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chirond.serve.openai_errors import ApiError
from chirond.serve.openai_stream import _dumps
from chirond.serve.responses_request import parse_responses

M = "llama-8b"
BODIES: dict[str, dict[str, Any]] = {
    "plain": {"model": M, "input": "hi"},
    "items": {"model": M, "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
                                    {"role": "assistant", "content": "hello"}, {"role": "user", "content": "and?"}]},
    "all-common": {"model": M, "input": "hi", "instructions": "be brief", "max_output_tokens": 5, "temperature": 0.5,
                   "top_p": 0.9, "stream": True, "store": False, "metadata": {"k": "v"}, "user": "u"},
    "tools": {"model": M, "input": "hi", "tools": [{"type": "function", "name": "f", "parameters": {}}]},
    "json": {"model": M, "input": "hi", "text": {"format": {"type": "json_object"}}},
    "store-true": {"model": M, "input": "hi", "store": True},
    "service-tier-flex": {"model": M, "input": "hi", "service_tier": "flex"},
    "service-tier-scale": {"model": M, "input": "hi", "service_tier": "scale"},
    "service-tier-bad": {"model": M, "input": "hi", "service_tier": "fast"},
    "max-output-string": {"model": M, "input": "hi", "max_output_tokens": "10"},
    "max-output-zero": {"model": M, "input": "hi", "max_output_tokens": 0},
    "max-output-text": {"model": M, "input": "hi", "max_output_tokens": "ten"},
    "temperature-string": {"model": M, "input": "hi", "temperature": "0.5"},
    "temperature-negative": {"model": M, "input": "hi", "temperature": -1},
    "temperature-high": {"model": M, "input": "hi", "temperature": 3},
    "top-p-zero": {"model": M, "input": "hi", "top_p": 0},
    "top-p-two": {"model": M, "input": "hi", "top_p": 2},
    "frequency-penalty-low": {"model": M, "input": "hi", "frequency_penalty": -3},
    "store-string": {"model": M, "input": "hi", "store": "maybe"},
    "store-no": {"model": M, "input": "hi", "store": "no"},
    "stream-yes": {"model": M, "input": "hi", "stream": "yes"},
    "input-empty": {"model": M, "input": []},
    "input-item-not-object": {"model": M, "input": [5]},
    "presence-penalty-high": {"model": M, "input": "hi", "presence_penalty": 3},
    "no-input": {"model": M},
    "input-number": {"model": M, "input": 5},
    "prompt-template": {"model": M, "input": "hi", "prompt": {"id": "pmpt_1"}},
    "background-store-false": {"model": M, "input": "hi", "background": True, "store": False},
    "background": {"model": M, "input": "hi", "background": True},
    "previous-response": {"model": M, "input": "hi", "previous_response_id": "resp_1"},
    "conversation": {"model": M, "input": "hi", "conversation": "conv_1"},
    "no-model": {"input": "hi"},
    "unknown-field": {"model": M, "input": "hi", "frobnicate": 1},
}
# label -> (chirond's verdict, why it differs from vLLM's).
DIFFERENCES: dict[str, tuple[str, str]] = {
    "no-model": ("400:model", "chirond serves several models and routes on the name; vLLM falls back to its only one"),
    "previous-response": ("400:previous_response_id", "vLLM without its store answers 404 (no such response); "
                          "chirond says why: it keeps no responses"),
    "conversation": ("400:conversation", "vLLM ignores the field (not in its model); chirond refuses the stateful "
                     "request"),
    "max-output-zero": ("400:max_output_tokens", "both 400; vLLM's names its internal max_tokens, chirond's the "
                        "field sent"),
}


def chirond_verdict(body: dict[str, Any]) -> str:
    try:
        parse_responses(_dumps(body), "application/json", 1 << 20)
    except ApiError as e:
        return f"{e.status}:{e.param}"
    return "ok"


def test_same_verdict_as_vllm(probe: Callable[..., Any]) -> None:
    theirs = probe("request_verdicts", [{"label": k, "endpoint": "responses", "body": b} for k, b in BODIES.items()])
    found = {}
    for label, body in BODIES.items():
        t = theirs[label]
        vllm = "ok" if t["ok"] else f"{t['status']}:{t['param']}"
        ours = chirond_verdict(body)
        if ours != vllm:
            found[label] = ours
            print(f"{label}: chirond {ours}, vLLM {vllm} ({t.get('why', '')})")
    assert found == {label: verdict for label, (verdict, _) in DIFFERENCES.items()}
