"""chirond's /v1/responses checks, the body sent upstream, and the event accumulator (pure)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from chirond.serve import responses_request as rq
from chirond.serve import responses_stream as rs
from chirond.serve.openai_errors import ApiError
from chirond.tokens import count_response_input


def parse(body: dict[str, Any]) -> Any:
    return rq.parse_responses(json.dumps(body).encode(), "application/json", 1 << 20)


def test_a_request_is_parsed_and_never_preemptible() -> None:
    p = parse({"model": "m", "input": "hello there", "instructions": "brief", "max_output_tokens": "7",
               "service_tier": "flex", "stream": True})
    assert (p.endpoint, p.model, p.stream, p.max_tokens, p.service_tier) == ("responses", "m", True, 7, "flex")
    assert p.input_tokens == count_response_input("hello there", "brief")
    assert not p.preemptible and not p.passthrough


def test_the_upstream_body_streams_and_stores_nothing() -> None:
    p = parse({"model": "m", "input": "hi", "store": True, "service_tier": "flex"})
    up = json.loads(rq.upstream_body(p, "m", 1))
    assert up == {"model": "m", "input": "hi", "store": False, "stream": True, "priority": 1, "service_tier": "flex"}


@pytest.mark.parametrize(("body", "param"), [
    ({"input": "x"}, "model"),
    ({"model": "m"}, "input"),
    ({"model": "m", "input": 3}, "input"),
    ({"model": "m", "input": ["text"]}, "input"),
    ({"model": "m", "input": "x", "previous_response_id": "resp_1"}, "previous_response_id"),
    ({"model": "m", "input": "x", "conversation": {"id": "c"}}, "conversation"),
    ({"model": "m", "input": "x", "background": True}, "background"),
    ({"model": "m", "input": "x", "prompt": {"id": "p"}}, "prompt"),
    ({"model": "m", "input": "x", "max_output_tokens": 0}, "max_output_tokens"),
    ({"model": "m", "input": "x", "temperature": 3}, "temperature"),
    ({"model": "m", "input": "x", "service_tier": "gold"}, "service_tier"),
])
def test_refused_with_the_param_named(body: dict[str, Any], param: str) -> None:
    with pytest.raises(ApiError) as info:
        parse(body)
    assert (info.value.status, info.value.param) == (400, param)


def test_the_accumulator_sees_the_first_output_the_end_and_the_engines_count() -> None:
    acc = rs.EventAccumulator()
    assert not acc.feed({"type": "response.created", "sequence_number": 0, "response": {}})
    assert acc.feed({"type": "response.output_text.delta", "sequence_number": 3, "delta": "abcdefgh"})
    assert not acc.feed({"type": "response.output_text.delta", "sequence_number": 4, "delta": "ijkl"})
    assert (acc.finished, acc.tokens, acc.sequence) == (False, 3, 5)  # an estimate until the usage comes
    acc.feed({"type": "response.completed", "sequence_number": 5, "response": {"usage": {"output_tokens": 4}}})
    assert (acc.finished, acc.tokens, acc.sequence) == (True, 4, 6)


def test_an_error_event_is_kept_and_chirond_sends_one_the_openai_client_raises_on() -> None:
    acc = rs.EventAccumulator()
    acc.feed({"error": {"message": "boom", "code": 500}})
    assert acc.error == {"message": "boom", "code": 500}
    frame = rs.error_event(ApiError.upstream("lost"), 7)
    name, data = frame.decode().strip().split("\n")
    obj = json.loads(data.removeprefix("data: "))
    assert name == "event: error" and obj["type"] == "error" and obj["sequence_number"] == 7
    assert obj["error"]["message"] == "lost" == obj["message"]
