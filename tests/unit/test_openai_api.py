"""chirond.serve.openai_api: errors as the openai client sees them, request validation, upstream and
continuation bodies, the SSE parser, stream accumulation and assembly, and the resumed-stream rewrite."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types import Completion
from openai.types.chat import ChatCompletion

from chirond.lax_values import lax_int
from chirond.model import ReqClass
from chirond.serve import openai_api as oa
from chirond.tokens import count_messages, count_prompt, count_text

try:  # the openai client's HTTP library: httpx2 in recent releases, httpx before
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx  # type: ignore[no-redef]

JSON = "application/json"
LIMIT = 1 << 20


def chat_body(**kw: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "Say hi"}], **kw}


def comp_body(**kw: Any) -> dict[str, Any]:
    return {"model": "m", "prompt": "The capital of France is", **kw}


def parse(endpoint: str, body: object, content_type: str | None = JSON, limit: int = LIMIT) -> oa.ParsedRequest:
    return oa.parse_request(endpoint, json.dumps(body).encode(), content_type, limit)


def events(text: str) -> list[bytes]:
    """JSON payloads of a recorded SSE stream (one `data:` line per event), without the final [DONE]."""
    lines = text.strip().splitlines()
    return [line[len("data: ") :].encode() for line in lines if line.startswith("data: ") and line != "data: [DONE]"]


def feed_all(payloads: list[bytes], acc: oa.StreamAccumulator | None = None) -> oa.StreamAccumulator:
    acc = acc or oa.StreamAccumulator()
    for p in payloads:
        if p != oa.DONE:
            acc.feed(oa.parse_chunk(p))
    return acc


def openai_client(handler: Callable[[Any], Any]) -> openai.OpenAI:
    return openai.OpenAI(
        api_key="x",
        base_url="http://chirond.test/v1",
        max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
    )


def sse_response(body: bytes) -> Callable[[Any], Any]:
    return lambda request: httpx.Response(200, content=body, headers={"Content-Type": "text/event-stream"})


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("status", "type_"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "invalid_request_error"),
        (413, "invalid_request_error"),
        (415, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "server_error"),
        (502, "server_error"),
        (503, "server_error"),
        (504, "server_error"),
    ],
)
def test_error_default_type(status: int, type_: str) -> None:
    err = oa.ApiError(status, "boom")
    assert err.type == type_
    assert err.body() == {"error": {"message": "boom", "type": type_, "param": None, "code": None}}
    assert str(err) == "boom"


def test_error_body_shape_and_explicit_fields() -> None:
    err = oa.ApiError(404, "no route", "invalid_request_error", param="path", code="x", headers={"A": "b"})
    assert err.body() == {
        "error": {"message": "no route", "type": "invalid_request_error", "param": "path", "code": "x"}
    }
    assert err.headers == {"A": "b"}
    assert oa.ApiError(400, "m").headers == {}


def test_error_constructors() -> None:
    e = oa.ApiError.unknown_model("llama-70b", ["llama-8b", "qwen"])
    assert (e.status, e.param, e.code) == (404, "model", "model_not_found")
    assert "llama-70b" in e.message and "llama-8b, qwen" in e.message
    e = oa.ApiError.queue_full("m", "batch", 100, 2.2)
    assert (e.status, e.type, e.code, e.headers) == (
        429,
        "rate_limit_error",
        "rate_limit_exceeded",
        {"Retry-After": "3"},
    )
    e = oa.ApiError.unavailable("no capacity for 'm' within 60 s", 0.1)
    assert (e.status, e.type, e.code, e.headers) == (503, "server_error", "overloaded", {"Retry-After": "1"})
    assert oa.ApiError.unavailable("waited", 5, code="queue_timeout").code == "queue_timeout"
    e = oa.ApiError.upstream("instance 3 failed")
    assert (e.status, e.type, e.code) == (502, "server_error", "upstream_error")
    assert oa.ApiError.upstream("slow", 504).status == 504
    e = oa.ApiError.unauthorized()
    assert (e.status, e.type, e.code) == (401, "authentication_error", "invalid_api_key")
    e = oa.ApiError.too_large(1000, 2000)
    assert e.status == 413 and "1000" in e.message and "2000" in e.message
    e = oa.ApiError.unsupported_media_type("text/plain")
    assert e.status == 415 and "text/plain" in e.message and "application/json" in e.message
    e = oa.ApiError.invalid("temperature", "bad")
    assert (e.status, e.param) == (400, "temperature")


def test_error_from_upstream_error_object() -> None:
    e = oa.ApiError.from_error_object(
        {"message": "too long", "type": "BadRequestError", "param": "input_tokens", "code": 400}
    )
    assert (e.status, e.message, e.param, e.code) == (400, "too long", "input_tokens", None)
    assert oa.ApiError.from_error_object({"message": "dead", "code": 500}).status == 500
    assert oa.ApiError.from_error_object({"message": "x", "code": "weird"}).status == 502
    assert oa.ApiError.from_error_object("Unauthorized").message == "Unauthorized"


ERRORS = [
    (oa.ApiError.bad_json("Expecting value"), openai.BadRequestError),
    (oa.ApiError.invalid("top_p", "'top_p' must be a number"), openai.BadRequestError),
    (oa.ApiError.unauthorized(), openai.AuthenticationError),
    (oa.ApiError(403, "not yours"), openai.PermissionDeniedError),
    (oa.ApiError.unknown_model("x", ["m"]), openai.NotFoundError),
    (oa.ApiError.too_large(10), openai.APIStatusError),
    (oa.ApiError.unsupported_media_type(None), openai.APIStatusError),
    (oa.ApiError.queue_full("m", "interactive", 5, 1), openai.RateLimitError),
    (oa.ApiError.upstream("instance failed"), openai.InternalServerError),
    (oa.ApiError.unavailable("no capacity", 5), openai.InternalServerError),
]


@pytest.mark.parametrize(("err", "exc"), ERRORS, ids=[f"{e.status}-{e.code}" for e, _ in ERRORS])
def test_openai_client_raises_the_right_exception(err: oa.ApiError, exc: type[openai.APIStatusError]) -> None:
    def handler(request: Any) -> Any:
        return httpx.Response(err.status, json=err.body(), headers=err.headers)

    client = openai_client(handler)
    with pytest.raises(exc) as info:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    e = info.value
    assert type(e) is exc  # not merely a subclass: 413/415 must not read as e.g. BadRequestError
    assert e.status_code == err.status
    assert err.message in e.message
    assert (e.code, e.param, e.type) == (err.code, err.param, err.type)
    if "Retry-After" in err.headers:
        assert e.response.headers["Retry-After"] == err.headers["Retry-After"]


def test_error_event_raises_in_the_openai_stream() -> None:
    good = oa.sse_event(
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}, "finish_reason": None}],
        }
    )
    body = good + oa.error_event(oa.ApiError.upstream("instance 2 was lost mid-stream"))
    assert body.endswith(b"data: [DONE]\n\n")
    client = openai_client(sse_response(body))
    stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
    it = iter(stream)
    assert next(it).choices[0].delta.content == "Hi"
    with pytest.raises(openai.APIError, match="lost mid-stream"):
        next(it)


# ---------------------------------------------------------------- parsing


def test_parse_chat_fields() -> None:
    body = chat_body(
        stream=True,
        stream_options={"include_usage": True},
        max_completion_tokens=50,
        max_tokens=9,
        service_tier="flex",
        temperature=0.7,
        top_p=1,
        extra_field={"kept": 1},
    )
    p = parse("chat", body)
    assert (p.endpoint, p.model, p.stream, p.include_usage, p.max_tokens, p.service_tier) == (
        "chat",
        "m",
        True,
        True,
        50,
        "flex",
    )
    assert p.body == body
    assert p.input_tokens == count_messages(body["messages"])


def test_parse_chat_defaults() -> None:
    p = parse("chat", chat_body(max_tokens=7, stream=None, service_tier=None))
    assert (p.stream, p.include_usage, p.max_tokens, p.service_tier) == (False, False, 7, None)
    assert parse("chat", chat_body()).max_tokens is None  # up to the context limit, as in vLLM
    assert parse("chat", chat_body(stream=True, stream_options={})).include_usage is False


@pytest.mark.parametrize(
    "prompt",
    ["Hello there", "", ["Hello there"], [1, 2, 3, 4], [[5, 6, 7]], [0]],
)
def test_parse_completions_prompt_forms(prompt: object) -> None:
    p = parse("completions", comp_body(prompt=prompt))
    assert p.input_tokens == count_prompt(prompt)
    assert p.max_tokens == oa.COMPLETIONS_DEFAULT_MAX_TOKENS  # vLLM's default when absent
    assert parse("completions", comp_body(prompt=prompt, max_tokens=200)).max_tokens == 200


@pytest.mark.parametrize(
    ("content_type", "ok"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("Application/JSON;charset=UTF-8", True),
        (None, False),
        ("", False),
        ("text/plain", False),
        ("application/x-www-form-urlencoded", False),  # curl -d without -H
        ("application/jsonx", False),
    ],
)
def test_content_type(content_type: str | None, ok: bool) -> None:
    if ok:
        assert parse("chat", chat_body(), content_type).model == "m"
    else:
        with pytest.raises(oa.ApiError) as info:
            parse("chat", chat_body(), content_type)
        assert info.value.status == 415


def test_body_too_large() -> None:
    raw = json.dumps(chat_body()).encode()
    assert oa.parse_request("chat", raw, JSON, len(raw)).model == "m"
    with pytest.raises(oa.ApiError) as info:
        oa.parse_request("chat", raw, JSON, len(raw) - 1)
    assert info.value.status == 413
    with pytest.raises(oa.ApiError) as info:  # the size is checked before anything else
        oa.parse_request("chat", b"x" * 100, "text/plain", 10)
    assert info.value.status == 413


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b"not json",
        b"\xff\xfe{}",
        b'{"model": "m", "temperature": NaN}',
        b"[" * 100_000,
        b'"str"',
        b"[1, 2]",
        b"null",
        b"{} {}",
    ],
)
def test_bad_json(raw: bytes) -> None:
    with pytest.raises(oa.ApiError) as info:
        oa.parse_request("chat", raw, JSON, 1 << 30)
    assert (info.value.status, info.value.param) == (400, None)
    assert "JSON" in info.value.message or "UTF-8" in info.value.message


def test_unknown_endpoint_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        oa.parse_request("embeddings", b"{}", JSON, LIMIT)


def _without(key: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda b: {k: v for k, v in b.items() if k != key}


def _set(**kw: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda b: {**b, **kw}


def _msgs(*messages: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda b: {**b, "messages": list(messages)}


# (endpoint, how to break a valid body, param, a phrase of the message)
INVALID = [
    ("chat", _without("model"), "model", "model"),
    ("chat", _set(model=""), "model", "non-empty string"),
    ("chat", _set(model=3), "model", "non-empty string"),
    ("completions", _set(model=None), "model", "model"),
    ("chat", _without("messages"), "messages", "non-empty array"),
    ("chat", _set(messages=[]), "messages", "non-empty array"),
    ("chat", _set(messages="hi"), "messages", "non-empty array"),
    ("chat", _msgs("hi"), "messages[0]", "object"),
    ("chat", _msgs({"content": "hi"}), "messages[0].role", "must be a string"),
    ("chat", _msgs({"role": 1, "content": "hi"}), "messages[0].role", "must be a string"),
    (
        "chat",
        _msgs({"role": "user", "content": "a"}, {"role": "user", "content": 5}),
        "messages[1].content",
        "string, an array of content parts, or null",
    ),
    ("chat", _msgs({"role": "user", "content": ["text"]}), "messages[0].content", "parts must be objects"),
    ("completions", _without("prompt"), "prompt", "prompt"),
    ("completions", _set(prompt=["a", "b"]), "prompt", "one prompt per request"),
    ("completions", _set(prompt=[[1, 2], [3]]), "prompt", "one prompt per request"),
    ("completions", _set(prompt=[1, "a"]), "prompt", "string, an array of token ids"),
    ("completions", _set(prompt=[-1, 2]), "prompt", "string, an array of token ids"),
    ("completions", _set(prompt=[True]), "prompt", "string, an array of token ids"),
    ("completions", _set(prompt={"text": "a"}), "prompt", "string, an array of token ids"),
    ("completions", _set(prompt=7), "prompt", "string, an array of token ids"),
    ("chat", _set(n=0), None, "at least 1"),
    ("completions", _set(n=-2), None, "at least 1"),
    ("chat", _set(n="two"), "n", "integer >= 1"),
    ("chat", _set(n=1.5), "n", "integer >= 1"),
    ("chat", _set(max_tokens=0), "max_tokens", "integer >= 1"),
    ("chat", _set(max_tokens=1.5), "max_tokens", "integer >= 1"),
    ("completions", _set(max_tokens="ten"), "max_tokens", "integer >= 1"),
    ("completions", _set(max_tokens="10.5"), "max_tokens", "integer >= 1"),
    ("chat", _set(max_tokens="0"), "max_tokens", "integer >= 1"),
    ("chat", _set(max_completion_tokens=-3), "max_completion_tokens", "integer >= 1"),
    ("chat", _set(temperature=2.5), "temperature", "[0, 2]"),
    ("chat", _set(temperature=-0.1), "temperature", "[0, 2]"),
    ("completions", _set(temperature="hot"), "temperature", "[0, 2]"),
    ("chat", _set(temperature="2.5"), "temperature", "[0, 2]"),
    ("chat", _set(presence_penalty=2.5), None, "[-2, 2]"),
    ("chat", _set(logprobs=True, top_logprobs="2"), "top_logprobs", "must be an integer"),
    ("completions", _set(logprobs="2"), "logprobs", "must be an integer"),
    ("chat", _set(top_p=0), "top_p", "(0, 1]"),
    ("chat", _set(top_p=1.01), "top_p", "(0, 1]"),
    ("chat", _set(stream="maybe"), "stream", "boolean"),
    ("chat", _set(stream=2), "stream", "boolean"),
    ("chat", _set(stream_options={"include_usage": True}), "stream_options", "when `stream=True`"),
    ("completions", _set(stream=False, stream_options={}), "stream_options", "when `stream=True`"),
    ("chat", _set(stream=True, stream_options=[1]), "stream_options", "object"),
    ("chat", _set(stream=True, stream_options={"include_usage": "sure"}), "stream_options.include_usage", "boolean"),
    (
        "chat",
        _set(stream=True, stream_options={"continuous_usage_stats": 3}),
        "stream_options.continuous_usage_stats",
        "boolean",
    ),
]


@pytest.mark.parametrize(
    ("endpoint", "mutate", "param", "phrase"), INVALID, ids=[f"{e}-{p}-{i}" for i, (e, _, p, _) in enumerate(INVALID)]
)
def test_invalid_field(
    endpoint: str, mutate: Callable[[dict[str, Any]], dict[str, Any]], param: str, phrase: str
) -> None:
    base = chat_body() if endpoint == "chat" else comp_body()
    parse(endpoint, base)  # the unbroken body is valid
    with pytest.raises(oa.ApiError) as info:
        parse(endpoint, mutate(base))
    err = info.value
    assert (err.status, err.param, err.type) == (400, param, "invalid_request_error")
    assert phrase in err.message


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": r, "content": "x"} for r in ("system", "developer", "user", "assistant", "tool", "function")],
        [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {}}]}],
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": []}],
        [{"role": "assistant"}],
    ],
)
def test_valid_messages(messages: list[dict[str, Any]]) -> None:
    assert parse("chat", chat_body(messages=messages)).input_tokens == count_messages(messages)


@pytest.mark.parametrize(
    ("field", "value", "read"),
    [("max_tokens", "10", 10), ("max_tokens", " 1_0 ", 10), ("max_tokens", "10.0", 10), ("max_tokens", 10.0, 10),
     ("max_tokens", True, 1), ("max_completion_tokens", "7", 7), ("temperature", "0.5", 0.5),
     ("temperature", False, 0.0), ("n", "1", 1), ("stream", "yes", True), ("stream", 0, False),
     ("echo", "false", False), ("continue_final_message", "no", False), ("use_beam_search", "0", False)],
)
def test_values_read_as_vllm_reads_them(field: str, value: Any, read: Any) -> None:
    """pydantic's lax mode, as vLLM's request models: the body sent on carries the value read."""
    p = parse("chat", chat_body(**{field: value}))
    assert p.body[field] == read and type(p.body[field]) is type(read)
    if field == "max_tokens":
        assert p.max_tokens == read


@pytest.mark.parametrize(
    "extra",
    [{"messages": [{"role": "robot", "content": "hi"}]}, {"service_tier": "scale"}, {"service_tier": 1}],
)
def test_accepted_as_vllm_accepts(extra: dict[str, Any]) -> None:
    p = parse("chat", chat_body(**extra))
    assert oa.request_class(p, None) is ReqClass.INTERACTIVE


@pytest.mark.parametrize(("endpoint", "stream"), [("chat", False), ("chat", True), ("completions", False)])
def test_several_choices_are_served_never_preempted(endpoint: str, stream: bool) -> None:
    base = chat_body(max_tokens=10) if endpoint == "chat" else comp_body(max_tokens=10)
    p = parse(endpoint, {**base, "n": "3", "stream": stream})
    assert (p.n, p.body["n"], p.output_cap, p.preemptible) == (3, 3, 30, False)
    assert p.passthrough is not stream  # a non-streaming client gets vLLM's own answer, whole
    one = parse(endpoint, {**base, "n": 1})
    assert (one.n, one.output_cap, one.preemptible, one.passthrough) == (1, 10, True, False)


def test_empty_prompt_list_goes_to_the_engine() -> None:
    assert parse("completions", comp_body(prompt=[])).input_tokens == 0


@pytest.mark.parametrize(
    ("tier", "header", "cls"),
    [
        (None, None, ReqClass.INTERACTIVE),
        ("flex", None, ReqClass.BATCH),
        ("auto", None, ReqClass.INTERACTIVE),
        ("priority", "", ReqClass.INTERACTIVE),
        ("default", "batch", ReqClass.BATCH),
        (None, "Batch", ReqClass.BATCH),
        (None, " FLEX ", ReqClass.BATCH),
        (None, "interactive", ReqClass.INTERACTIVE),
        (None, "batched", ReqClass.INTERACTIVE),
    ],
)
def test_request_class(tier: str | None, header: str | None, cls: ReqClass) -> None:
    body = chat_body(service_tier=tier) if tier else chat_body()
    assert oa.request_class(parse("chat", body), header) is cls


# ---------------------------------------------------------------- upstream bodies


def test_upstream_body_non_streaming_client() -> None:
    body = chat_body(service_tier="flex", temperature=0.2, seed=7, logprobs=True, model="alias")
    out = json.loads(oa.upstream_body(parse("chat", body), "meta-llama/Llama-3.1-8B", 3))
    assert out == {
        **{k: v for k, v in body.items() if k != "service_tier"},
        "model": "meta-llama/Llama-3.1-8B",
        "stream": True,
        "stream_options": {"include_usage": True},
        "priority": 3,
    }


def test_upstream_body_keeps_client_priority_when_none_given() -> None:
    out = json.loads(oa.upstream_body(parse("completions", comp_body(priority=-5)), "m", None))
    assert out["priority"] == -5
    assert "priority" not in json.loads(oa.upstream_body(parse("completions", comp_body()), "m", None))


def test_upstream_body_stream_options() -> None:
    p = parse("chat", chat_body(stream=True, stream_options={"include_usage": True, "continuous_usage_stats": True}))
    assert json.loads(oa.upstream_body(p, "m", None))["stream_options"] == {
        "include_usage": True,
        "continuous_usage_stats": True,
    }
    # Without include_usage the client never saw per-chunk usage: do not start sending it.
    p = parse("chat", chat_body(stream=True, stream_options={"include_usage": False, "continuous_usage_stats": True}))
    assert json.loads(oa.upstream_body(p, "m", None))["stream_options"] == {"include_usage": True}


def test_upstream_body_keeps_unicode_and_does_not_touch_the_parsed_body() -> None:
    body = chat_body(messages=[{"role": "user", "content": "Grüße, 世界"}], stream=False)
    p = parse("chat", body)
    raw = oa.upstream_body(p, "m", 1)
    assert "Grüße, 世界".encode() in raw
    assert p.body == body


def test_continuation_chat() -> None:
    body = chat_body(max_completion_tokens=100, min_tokens=20, temperature=0.5, service_tier="flex")
    p = parse("chat", body)
    out = json.loads(oa.continuation_body(p, "served", "Hello, wor", 4, 2) or b"")
    assert out["messages"] == [*body["messages"], {"role": "assistant", "content": "Hello, wor"}]
    assert (out["continue_final_message"], out["add_generation_prompt"]) == (True, False)
    assert (out["max_completion_tokens"], out["min_tokens"]) == (96, 16)
    assert "max_tokens" not in out
    assert (out["model"], out["stream"], out["priority"], out["temperature"]) == ("served", True, 2, 0.5)
    assert out["stream_options"] == {"include_usage": True}
    assert "service_tier" not in out
    assert p.body == body  # the client's messages list was not extended in place


def test_continuation_chat_both_caps_and_no_cap() -> None:
    p = parse("chat", chat_body(max_tokens=30, max_completion_tokens=10))
    out = json.loads(oa.continuation_body(p, "m", "abc", 3, None) or b"")
    assert (out["max_tokens"], out["max_completion_tokens"]) == (7, 7)  # vLLM uses max_completion_tokens first
    out = json.loads(oa.continuation_body(parse("chat", chat_body()), "m", "abc", 3, None) or b"")
    assert "max_tokens" not in out and "max_completion_tokens" not in out


def test_continuation_extends_a_clients_own_final_assistant_message() -> None:
    msgs = [{"role": "user", "content": "Write a poem"}, {"role": "assistant", "content": "Roses are"}]
    p = parse("chat", chat_body(messages=msgs, continue_final_message=True, add_generation_prompt=False))
    out = json.loads(oa.continuation_body(p, "m", " red,", 2, None) or b"")
    assert out["messages"] == [msgs[0], {"role": "assistant", "content": "Roses are red,"}]
    parts = [{"role": "user", "content": "x"}, {"role": "assistant", "content": [{"type": "text", "text": "a"}]}]
    p = parse("chat", chat_body(messages=parts, continue_final_message=True))
    assert oa.continuation_body(p, "m", " b", 1, None) is None


@pytest.mark.parametrize("prompt", ["Once upon", ["Once upon"]])
def test_continuation_completions(prompt: object) -> None:
    p = parse("completions", comp_body(prompt=prompt, max_tokens=50, stop=["\n"]))
    out = json.loads(oa.continuation_body(p, "m", " a time", 2, None) or b"")
    assert (out["prompt"], out["max_tokens"], out["stop"]) == ("Once upon a time", 48, ["\n"])
    # The client relied on vLLM's default of 16: the continuation must not get 16 more.
    out = json.loads(
        oa.continuation_body(parse("completions", comp_body(prompt=prompt)), "m", " a time", 5, None) or b""
    )
    assert out["max_tokens"] == 11


@pytest.mark.parametrize(
    ("endpoint", "body", "tokens"),
    [
        ("completions", comp_body(prompt=[1, 2, 3]), 1),
        ("completions", comp_body(prompt=[[1, 2, 3]]), 1),
        ("completions", comp_body(echo=True), 1),
        ("completions", comp_body(prompt_logprobs=1), 1),
        ("chat", chat_body(echo=True), 1),
        ("chat", chat_body(response_format={"type": "json_object"}), 1),
        ("chat", chat_body(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}), 1),
        ("completions", comp_body(guided_json={"type": "object"}), 1),
        ("chat", chat_body(structured_outputs={"choice": ["a", "b"]}), 1),
        ("chat", chat_body(max_tokens=10), 10),
        ("completions", comp_body(), 16),
    ],
)
def test_continuation_impossible(endpoint: str, body: dict[str, Any], tokens: int) -> None:
    assert oa.continuation_body(parse(endpoint, body), "m", "some text", tokens, None) is None


def test_continuation_allows_plain_text_response_format() -> None:
    p = parse("chat", chat_body(response_format={"type": "text"}))
    assert oa.continuation_body(p, "m", "x", 1, None) is not None


def test_continuation_of_nothing_is_the_original_request() -> None:
    p = parse("completions", comp_body(prompt=[1, 2, 3]))
    assert oa.continuation_body(p, "m", "", 0, 4) == oa.upstream_body(p, "m", 4)


def test_resume_body_refuses_tool_calls_and_reasoning_in_progress() -> None:
    p = parse("chat", chat_body(max_tokens=100))
    acc = feed_all(events(CHAT_STREAM)[:3])
    assert json.loads(oa.resume_body(p, acc, "m", None) or b"")["messages"][-1] == {
        "role": "assistant",
        "content": "Hello, wor",
    }
    assert json.loads(oa.resume_body(p, acc, "m", None) or b"")["max_tokens"] == 100 - acc.tokens
    assert oa.resume_body(p, feed_all(events(TOOL_STREAM)[:3]), "m", None) is None
    assert oa.resume_body(p, feed_all(events(REASONING_STREAM)[:2]), "m", None) is None
    errored = feed_all([b'{"error": {"message": "engine dead", "code": 500}}'])
    assert oa.resume_body(p, errored, "m", None) is None


# ---------------------------------------------------------------- SSE parser


SSE_SAMPLE = (
    b'data: {"a":1}\n\n'
    b": keep-alive\n\n"
    b'data: {"b":"x y"}\n\n'
    b'event: ping\nid: 4\ndata: {"c":\ndata: 2}\n\n'
    b"retry: 10\n\n"
    b'data:{"d":[]}\n\n'
    b"\n\n"
    b"data: [DONE]\n\n"
)
SSE_EXPECTED = [b'{"a":1}', b'{"b":"x y"}', b'{"c":\n2}', b'{"d":[]}', b"[DONE]"]


def test_sse_parser_whole() -> None:
    p = oa.SseParser()
    assert p.feed(SSE_SAMPLE) == SSE_EXPECTED
    assert p.pending == 0


@pytest.mark.parametrize("newline", [b"\r\n", b"\r"])
def test_sse_parser_other_line_ends(newline: bytes) -> None:
    assert oa.SseParser().feed(SSE_SAMPLE.replace(b"\n", newline)) == SSE_EXPECTED


def test_sse_parser_split_crlf_and_byte_by_byte() -> None:
    p = oa.SseParser()
    assert p.feed(b'data: {"a":1}\r') == []
    assert p.feed(b"\n\r") == [b'{"a":1}']  # a CR ends the blank line at once (CR-only streams exist)...
    assert p.feed(b"\n") == []  # ...and the LF of its CRLF is not another blank line
    assert p.feed(b'data: {"b":2}\r\n\r\n') == [b'{"b":2}']
    assert p.pending == 0
    data = SSE_SAMPLE.replace(b"\n", b"\r\n")
    p = oa.SseParser()
    out = [e for i in range(len(data)) for e in p.feed(data[i : i + 1])]
    assert out == SSE_EXPECTED


def test_sse_parser_incomplete_event_is_pending() -> None:
    p = oa.SseParser()
    assert p.feed(b'data: {"a":1}\n\ndata: {"b"') == [b'{"a":1}']
    assert p.pending == len(b'data: {"b"')
    assert p.feed(b":2}\n\n") == [b'{"b":2}']


def test_sse_parser_event_size_limit() -> None:
    p = oa.SseParser(max_event_bytes=100)
    assert p.feed(b"data: " + b"x" * 90) == []
    with pytest.raises(oa.ApiError) as info:
        p.feed(b"x" * 20)
    assert info.value.status == 502


@settings(max_examples=300, deadline=None)
@given(
    cuts=st.lists(st.integers(min_value=0, max_value=len(SSE_SAMPLE) * 2), max_size=30),
    newline=st.sampled_from([b"\n", b"\r\n", b"\r"]),
)
def test_sse_parser_any_split_gives_the_same_events(cuts: list[int], newline: bytes) -> None:
    data = SSE_SAMPLE.replace(b"\n", newline)
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    p = oa.SseParser()
    out = [e for a, b in itertools.pairwise(points) for e in p.feed(data[a:b])]
    assert out == SSE_EXPECTED
    assert p.pending == 0


def test_parse_chunk() -> None:
    assert oa.parse_chunk(b'{"a": 1} ') == {"a": 1}
    assert oa.parse_chunk('{"t": "Grüße"}'.encode()) == {"t": "Grüße"}
    for bad in (b"", b"{", b"[1]", b'{"a":1} x', b"\xff"):
        with pytest.raises(oa.ApiError) as info:
            oa.parse_chunk(bad)
        assert info.value.status == 502


# ---------------------------------------------------------------- recorded vLLM-style streams

CHAT_STREAM = """
data: {"id":"chatcmpl-abc","object":"chat.completion.chunk","created":1700000001,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-abc","object":"chat.completion.chunk","created":1700000001,"model":"m","choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":{"content":[{"token":"Hello","logprob":-0.25,"bytes":[72,101,108,108,111],"top_logprobs":[{"token":"Hello","logprob":-0.25,"bytes":[72,101,108,108,111]},{"token":"Hi","logprob":-1.5,"bytes":[72,105]}]}]},"finish_reason":null,"token_ids":null}]}

data: {"id":"chatcmpl-abc","object":"chat.completion.chunk","created":1700000001,"model":"m","choices":[{"index":0,"delta":{"content":", wor"},"logprobs":{"content":[{"token":",","logprob":-0.1,"bytes":[44],"top_logprobs":[]},{"token":" wor","logprob":-0.3,"bytes":[32,119,111,114],"top_logprobs":[]}]},"finish_reason":null,"token_ids":null}]}

data: {"id":"chatcmpl-abc","object":"chat.completion.chunk","created":1700000001,"model":"m","choices":[{"index":0,"delta":{"content":"ld!"},"logprobs":{"content":[{"token":"ld!","logprob":-0.05,"bytes":null,"top_logprobs":[]}]},"finish_reason":"stop","stop_reason":null,"token_ids":null}]}

data: {"id":"chatcmpl-abc","object":"chat.completion.chunk","created":1700000001,"model":"m","choices":[],"usage":{"prompt_tokens":12,"total_tokens":16,"completion_tokens":4},"system_fingerprint":"vllm-0.33.0-abcdef12"}

data: [DONE]
"""  # noqa: E501

TOOL_STREAM = """
data: {"id":"chatcmpl-t","object":"chat.completion.chunk","created":1700000002,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-t","object":"chat.completion.chunk","created":1700000002,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"id":"chatcmpl-tool-1a","type":"function","index":0,"function":{"name":"get_weather"}}]},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-t","object":"chat.completion.chunk","created":1700000002,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\\"city\\": \\""}}]},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-t","object":"chat.completion.chunk","created":1700000002,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"Paris\\"}"}}]},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-t","object":"chat.completion.chunk","created":1700000002,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"id":"chatcmpl-tool-2b","type":"function","index":1,"function":{"name":"get_time","arguments":""}}]},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-t","object":"chat.completion.chunk","created":1700000002,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"arguments":"{}"}}]},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-t","object":"chat.completion.chunk","created":1700000002,"model":"m","choices":[{"index":0,"delta":{"content":""},"logprobs":null,"finish_reason":"tool_calls","stop_reason":null}]}

data: {"id":"chatcmpl-t","object":"chat.completion.chunk","created":1700000002,"model":"m","choices":[],"usage":{"prompt_tokens":80,"total_tokens":101,"completion_tokens":21}}

data: [DONE]
"""  # noqa: E501

REASONING_STREAM = """
data: {"id":"chatcmpl-r","object":"chat.completion.chunk","created":3,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-r","object":"chat.completion.chunk","created":3,"model":"m","choices":[{"index":0,"delta":{"reasoning":"Think","reasoning_content":"Think"},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-r","object":"chat.completion.chunk","created":3,"model":"m","choices":[{"index":0,"delta":{"reasoning":"ing.","reasoning_content":"ing."},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-r","object":"chat.completion.chunk","created":3,"model":"m","choices":[{"index":0,"delta":{"content":"42"},"logprobs":null,"finish_reason":"length","stop_reason":null}]}

data: {"id":"chatcmpl-r","object":"chat.completion.chunk","created":3,"model":"m","choices":[],"usage":{"prompt_tokens":5,"total_tokens":9,"completion_tokens":4}}

data: [DONE]
"""  # noqa: E501

COMPLETIONS_STREAM = """
data: {"id":"cmpl-c","object":"text_completion","created":1700000004,"model":"m","choices":[{"index":0,"text":" Paris","logprobs":{"text_offset":[0],"token_logprobs":[-0.2],"tokens":[" Paris"],"top_logprobs":[{" Paris":-0.2," Lyon":-3.1}]},"finish_reason":null,"stop_reason":null}]}

data: {"id":"cmpl-c","object":"text_completion","created":1700000004,"model":"m","choices":[{"index":0,"text":".","logprobs":{"text_offset":[6],"token_logprobs":[-0.4],"tokens":["."],"top_logprobs":[{".":-0.4}]},"finish_reason":null,"stop_reason":null}]}

data: {"id":"cmpl-c","object":"text_completion","created":1700000004,"model":"m","choices":[{"index":0,"text":"\\n","logprobs":{"text_offset":[7],"token_logprobs":[-0.9],"tokens":["\\n"],"top_logprobs":[{"\\n":-0.9}]},"finish_reason":"stop","stop_reason":"\\n\\n"}]}

data: {"id":"cmpl-c","object":"text_completion","created":1700000004,"model":"m","choices":[],"usage":{"prompt_tokens":6,"total_tokens":9,"completion_tokens":3}}

data: [DONE]
"""  # noqa: E501


def test_accumulate_chat_stream() -> None:
    acc = oa.StreamAccumulator()
    firsts = [acc.feed(oa.parse_chunk(p)) for p in events(CHAT_STREAM)]
    assert firsts == [False, True, False, False, False]  # the role chunk is no token
    assert (acc.id, acc.created, acc.model, acc.role) == ("chatcmpl-abc", 1700000001, "m", "assistant")
    assert (acc.text, acc.finish_reason, acc.stop_reason) == ("Hello, world!", "stop", None)
    assert acc.usage == {"prompt_tokens": 12, "total_tokens": 16, "completion_tokens": 4}
    assert acc.tokens == 4
    assert acc.system_fingerprint == "vllm-0.33.0-abcdef12"
    assert [e["token"] for e in acc.logprobs or []] == ["Hello", ",", " wor", "ld!"]
    assert acc.tool_calls == [] and acc.reasoning == "" and acc.error is None


def test_tokens_are_estimated_from_text_until_usage_arrives() -> None:
    chunks = events(CHAT_STREAM)
    acc = feed_all(chunks[:4])
    assert acc.chunks == 4
    assert acc.tokens == count_text("Hello, world!")  # 3 content chunks, but chunks are not tokens
    acc.feed(oa.parse_chunk(chunks[4]))
    assert acc.tokens == 4


def test_assemble_chat_validates_as_chat_completion() -> None:
    p = parse("chat", chat_body(logprobs=True, top_logprobs=2))
    acc = feed_all(events(CHAT_STREAM))
    body = oa.assemble_response(p, acc, "client-alias")
    c = ChatCompletion.model_validate(body)
    assert (c.id, c.object, c.created, c.model) == ("chatcmpl-abc", "chat.completion", 1700000001, "client-alias")
    msg = c.choices[0].message
    assert (msg.role, msg.content, msg.tool_calls) == ("assistant", "Hello, world!", [])
    assert c.choices[0].finish_reason == "stop"
    assert c.choices[0].logprobs is not None and c.choices[0].logprobs.content is not None
    assert [t.token for t in c.choices[0].logprobs.content] == ["Hello", ",", " wor", "ld!"]
    assert [t.token for t in c.choices[0].logprobs.content[0].top_logprobs] == ["Hello", "Hi"]
    assert c.usage is not None and (c.usage.prompt_tokens, c.usage.completion_tokens) == (12, 4)
    assert c.system_fingerprint == "vllm-0.33.0-abcdef12"
    assert json.loads(json.dumps(body)) == body  # plain JSON


def test_assemble_chat_tool_calls() -> None:
    acc = feed_all(events(TOOL_STREAM))
    c = ChatCompletion.model_validate(oa.assemble_response(parse("chat", chat_body()), acc, "m"))
    msg = c.choices[0].message
    assert msg.content is None  # as OpenAI answers a pure tool call
    assert msg.tool_calls is not None
    assert [(t.id, t.type, t.function.name, t.function.arguments) for t in msg.tool_calls] == [  # type: ignore[union-attr]
        ("chatcmpl-tool-1a", "function", "get_weather", '{"city": "Paris"}'),
        ("chatcmpl-tool-2b", "function", "get_time", "{}"),
    ]
    assert c.choices[0].finish_reason == "tool_calls"
    assert c.choices[0].logprobs is None
    assert acc.tokens == 21


def test_accumulate_tool_calls_first_token() -> None:
    acc = oa.StreamAccumulator()
    assert [acc.feed(oa.parse_chunk(p)) for p in events(TOOL_STREAM)[:3]] == [False, True, False]


def test_assemble_chat_reasoning() -> None:
    acc = feed_all(events(REASONING_STREAM))
    assert acc.reasoning == "Thinking."  # both names carried the same text: counted once
    body = oa.assemble_response(parse("chat", chat_body()), acc, "m")
    c = ChatCompletion.model_validate(body)
    assert c.choices[0].message.content == "42"
    assert body["choices"][0]["message"]["reasoning"] == "Thinking."
    assert body["choices"][0]["message"]["reasoning_content"] == "Thinking."
    assert c.choices[0].finish_reason == "length"
    only_old = events(REASONING_STREAM.replace('"reasoning":"Think",', "").replace('"reasoning":"ing.",', ""))
    msg = oa.assemble_response(parse("chat", chat_body()), feed_all(only_old), "m")["choices"][0]["message"]
    assert msg["reasoning_content"] == "Thinking." and "reasoning" not in msg


def test_assemble_completions_validates_as_completion() -> None:
    p = parse("completions", comp_body(logprobs=2))
    acc = oa.StreamAccumulator()
    assert [acc.feed(oa.parse_chunk(x)) for x in events(COMPLETIONS_STREAM)] == [True, False, False, False]
    c = Completion.model_validate(oa.assemble_response(p, acc, "m"))
    assert (c.id, c.object, c.created) == ("cmpl-c", "text_completion", 1700000004)
    ch = c.choices[0]
    assert (ch.text, ch.finish_reason) == (" Paris.\n", "stop")
    assert ch.logprobs is not None
    assert ch.logprobs.tokens == [" Paris", ".", "\n"]
    assert ch.logprobs.token_logprobs == [-0.2, -0.4, -0.9]
    assert ch.logprobs.text_offset == [0, 6, 7]
    assert ch.logprobs.top_logprobs == [{" Paris": -0.2, " Lyon": -3.1}, {".": -0.4}, {"\n": -0.9}]
    assert c.usage is not None and c.usage.total_tokens == 9
    assert oa.assemble_response(p, acc, "m")["choices"][0]["stop_reason"] == "\n\n"


def test_assemble_without_usage_chunk_estimates_usage() -> None:
    p = parse("completions", comp_body())
    acc = feed_all(events(COMPLETIONS_STREAM)[:3])
    usage = oa.assemble_response(p, acc, "m")["usage"]
    assert usage == {
        "prompt_tokens": p.input_tokens,
        "completion_tokens": count_text(" Paris.\n"),
        "total_tokens": p.input_tokens + count_text(" Paris.\n"),
    }
    assert oa.assemble_response(p, acc, "m")["choices"][0]["logprobs"]["tokens"] == [" Paris", ".", "\n"]


def test_accumulator_records_in_band_error_and_ignores_other_choices() -> None:
    acc = oa.StreamAccumulator()
    acc.feed({"id": "x", "choices": [{"index": 1, "text": "other"}]})
    assert acc.text == "" and not acc.first_content_seen
    acc.feed({"id": "x", "choices": [{"index": 1, "text": "o"}, {"index": 0, "text": "mine"}]})
    assert acc.text == "mine"
    assert acc.feed({"error": {"message": "engine died", "type": "InternalServerError", "code": 500}}) is False
    assert acc.error is not None and acc.error["message"] == "engine died"
    assert oa.ApiError.from_error_object(acc.error).status == 500


def test_empty_final_token_counts_as_first_output() -> None:
    acc = oa.StreamAccumulator()
    assert acc.feed({"id": "x", "choices": [{"index": 0, "text": "", "finish_reason": "length"}]}) is True


def test_openai_client_streams_the_relayed_bytes() -> None:
    body = b"".join(oa.sse_frame(p) for p in events(CHAT_STREAM)) + oa.SSE_DONE
    client = openai_client(sse_response(body))
    chunks = list(client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello, world!"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


def test_is_usage_only() -> None:
    chunks = [oa.parse_chunk(p) for p in events(CHAT_STREAM)]
    assert [oa.is_usage_only(c) for c in chunks] == [False, False, False, False, True]
    assert not oa.is_usage_only({"choices": [{"index": 0}], "usage": {"completion_tokens": 1}})  # continuous usage


def test_sse_event_and_done() -> None:
    assert oa.sse_event({"a": "é"}) == 'data: {"a":"é"}\n\n'.encode()
    assert oa.SSE_DONE == b"data: [DONE]\n\n"
    err = oa.ApiError.upstream("lost")
    assert oa.SseParser().feed(oa.error_event(err)) == [
        json.dumps(err.body(), separators=(",", ":")).encode(),
        b"[DONE]",
    ]


# ---------------------------------------------------------------- resumed streams


def relay(
    payloads: list[bytes], parsed: oa.ParsedRequest, acc: oa.StreamAccumulator, resume: oa.Resume | None
) -> Iterator[bytes]:
    """The relay loop of the module docstring: what a streaming client receives for one attempt."""
    for payload in payloads:
        if payload == oa.DONE:
            continue
        chunk = oa.parse_chunk(payload)
        out = payload if resume is None else oa.rewrite_chunk_for_client(payload, chunk, resume)
        acc.feed(chunk)
        if parsed.stream and out is not None and (parsed.include_usage or not oa.is_usage_only(chunk)):
            yield oa.sse_frame(out)


def continuation_chat_stream(prompt_tokens: int, completion: int) -> list[bytes]:
    """What vLLM streams for the continuation of CHAT_STREAM after "Hello, wor": a new id, its own role chunk,
    and usage counting the continued prefix as prompt."""
    head = '{"id":"chatcmpl-new","object":"chat.completion.chunk","created":1700000099,"model":"m","choices":'
    return [
        (
            head + '[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}'
        ).encode(),
        (head + '[{"index":0,"delta":{"content":"ld"},"logprobs":null,"finish_reason":null}]}').encode(),
        (
            head + '[{"index":0,"delta":{"content":"!"},"logprobs":null,"finish_reason":"stop","stop_reason":null}]}'
        ).encode(),
        (
            head + f'[],"usage":{{"prompt_tokens":{prompt_tokens},"total_tokens":{prompt_tokens + completion},'
            f'"completion_tokens":{completion}}}}}'
        ).encode(),
        b"[DONE]",
    ]


@pytest.mark.parametrize("include_usage", [True, False])
def test_resumed_chat_stream_reads_as_one_stream(include_usage: bool) -> None:
    opts = {"stream_options": {"include_usage": True}} if include_usage else {}
    p = parse("chat", chat_body(stream=True, max_tokens=50, **opts))
    acc = oa.StreamAccumulator()
    first = list(relay(events(CHAT_STREAM)[:3], p, acc, None))  # preempted after "Hello, wor"
    assert acc.text == "Hello, wor"
    before = acc.tokens
    resume = oa.Resume.after(acc, p)
    assert resume is not None
    body = json.loads(oa.resume_body(p, acc, "m", None) or b"")
    assert body["messages"][-1] == {"role": "assistant", "content": "Hello, wor"}
    # The instance counts the continued prefix as prompt: 12 real prompt tokens + 3 already generated.
    second = list(relay(continuation_chat_stream(12 + before, 2), p, acc, resume))
    stream = b"".join(first + second) + oa.SSE_DONE

    chunks = [json.loads(e) for e in oa.SseParser().feed(stream)[:-1]]
    assert {c["id"] for c in chunks} == {"chatcmpl-abc"} and {c["created"] for c in chunks} == {1700000001}
    assert sum("role" in c["choices"][0]["delta"] for c in chunks if c["choices"]) == 1
    client = openai_client(sse_response(stream))
    got = list(client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in got if c.choices) == "Hello, world!"
    assert got[-1].choices[0].finish_reason == "stop" if not include_usage else got[-2].choices[0].finish_reason
    if include_usage:
        assert got[-1].usage is not None
        assert (got[-1].usage.prompt_tokens, got[-1].usage.completion_tokens, got[-1].usage.total_tokens) == (
            12,
            before + 2,
            12 + before + 2,
        )
    else:
        assert all(c.usage is None for c in got)
    # The accumulator holds the client's view: what a non-streaming answer would say.
    assert (acc.id, acc.text, acc.tokens, acc.finish_reason) == ("chatcmpl-abc", "Hello, world!", before + 2, "stop")
    assert acc.usage == {"prompt_tokens": 12, "total_tokens": 12 + before + 2, "completion_tokens": before + 2}


def test_resumed_non_streaming_answer() -> None:
    p = parse("chat", chat_body(max_tokens=50))
    acc = oa.StreamAccumulator()
    assert list(relay(events(CHAT_STREAM)[:3], p, acc, None)) == []  # not streaming: nothing forwarded
    resume = oa.Resume.after(acc, p)
    assert resume is not None
    assert list(relay(continuation_chat_stream(15, 2), p, acc, resume)) == []
    c = ChatCompletion.model_validate(oa.assemble_response(p, acc, "m"))
    assert (c.id, c.choices[0].message.content) == ("chatcmpl-abc", "Hello, world!")
    assert c.usage is not None and c.usage.completion_tokens == resume.tokens_before + 2


def test_resume_prompt_tokens_sources() -> None:
    p = parse("chat", chat_body(stream=True))
    acc = feed_all(events(CHAT_STREAM)[:2])
    r = oa.Resume.after(acc, p)
    assert r is not None and r.prompt_tokens is None and r.prompt_estimate == p.input_tokens
    usage_chunk: dict[str, Any] = {"id": "n", "choices": [], "usage": {"prompt_tokens": 0, "completion_tokens": 1}}
    oa.rewrite_chunk_for_client(b"", usage_chunk, r)
    assert usage_chunk["usage"]["prompt_tokens"] == p.input_tokens  # derived count not positive: the estimate
    # With continuous usage the first attempt reported its own prompt count: that one wins.
    acc.feed(
        {
            "id": "chatcmpl-abc",
            "choices": [{"index": 0, "delta": {"content": "x"}}],
            "usage": {"prompt_tokens": 33, "completion_tokens": 2, "total_tokens": 35},
        }
    )
    r2 = oa.Resume.after(acc, p)
    assert r2 is not None and (r2.prompt_tokens, r2.tokens_before) == (33, 2)
    chunk = {"id": "n", "choices": [], "usage": {"prompt_tokens": 40, "completion_tokens": 5, "total_tokens": 45}}
    oa.rewrite_chunk_for_client(b"", chunk, r2)
    assert chunk["usage"] == {"prompt_tokens": 33, "completion_tokens": 7, "total_tokens": 40}
    assert oa.Resume.after(acc, p, r2) == r2  # a second preemption keeps the first count


def test_resume_after_nothing_seen_is_a_fresh_stream() -> None:
    assert oa.Resume.after(oa.StreamAccumulator(), parse("chat", chat_body())) is None


def test_rewrite_keeps_role_when_the_client_has_none() -> None:
    r = oa.Resume("chatcmpl-a", 5, None, 3, 0, 0, role_sent=False)
    chunk = oa.parse_chunk(continuation_chat_stream(3, 1)[0])
    out = oa.rewrite_chunk_for_client(b"", chunk, r)
    assert out is not None and json.loads(out)["choices"][0]["delta"]["role"] == "assistant"


def test_rewrite_role_chunk_with_content_keeps_the_content() -> None:
    r = oa.Resume("chatcmpl-a", 5, None, 3, 0, 0, role_sent=True)
    chunk = {"id": "b", "created": 9, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "ld"}}]}
    out = json.loads(oa.rewrite_chunk_for_client(b"", chunk, r) or b"")
    assert out == {"id": "chatcmpl-a", "created": 5, "choices": [{"index": 0, "delta": {"content": "ld"}}]}


def test_rewrite_passes_errors_through() -> None:
    r = oa.Resume("a", 1, None, 3, 0, 1, True)
    payload = b'{"error":{"message":"x","code":500}}'
    assert oa.rewrite_chunk_for_client(payload, oa.parse_chunk(payload), r) is payload


def test_resumed_completions_stream_twice() -> None:
    """Two preemptions: text, logprobs offsets and usage still read as one uninterrupted completion."""
    p = parse("completions", comp_body(stream=True, stream_options={"include_usage": True}, logprobs=1, max_tokens=20))
    acc = oa.StreamAccumulator()
    chunks = events(COMPLETIONS_STREAM)
    out = list(relay(chunks[:1], p, acc, None))  # " Paris"
    r1 = oa.Resume.after(acc, p)
    assert r1 is not None and r1.chars_before == 6
    assert json.loads(oa.resume_body(p, acc, "m", None) or b"")["prompt"] == "The capital of France is Paris"

    def cont(text: str, offset: int, extra: str) -> bytes:
        return (
            '{"id":"cmpl-z","object":"text_completion","created":9,"model":"m","choices":[{"index":0,'
            f'"text":{json.dumps(text)},"logprobs":{{"text_offset":[{offset}],"token_logprobs":[-0.5],'
            f'"tokens":[{json.dumps(text)}],"top_logprobs":[{{{json.dumps(text)}:-0.5}}]}}{extra}}}]}}'
        ).encode()

    out += list(relay([cont(".", 0, ',"finish_reason":null')], p, acc, r1))  # continuations start at offset 0
    r2 = oa.Resume.after(acc, p, r1)
    assert r2 is not None and (r2.chars_before, r2.tokens_before, r2.id) == (7, acc.tokens, "cmpl-c")
    assert json.loads(oa.resume_body(p, acc, "m", None) or b"")["max_tokens"] == 20 - acc.tokens
    usage = (
        '{"id":"cmpl-y","object":"text_completion","created":10,"model":"m","choices":[],'
        f'"usage":{{"prompt_tokens":{6 + r2.tokens_before},"total_tokens":{7 + r2.tokens_before},'
        '"completion_tokens":1}}'
    ).encode()
    out += list(relay([cont("\n", 0, ',"finish_reason":"stop"'), usage], p, acc, r2))
    stream = b"".join(out) + oa.SSE_DONE

    client = openai_client(sse_response(stream))
    got = list(client.completions.create(model="m", prompt="x", stream=True))
    assert {c.id for c in got} == {"cmpl-c"}
    assert "".join(c.choices[0].text for c in got if c.choices) == " Paris.\n"
    offsets = [o for c in got if c.choices and c.choices[0].logprobs for o in c.choices[0].logprobs.text_offset or []]
    assert offsets == [0, 6, 7]
    assert got[-1].usage is not None and (got[-1].usage.prompt_tokens, got[-1].usage.completion_tokens) == (
        6,
        r2.tokens_before + 1,
    )
    c = Completion.model_validate(oa.assemble_response(p, acc, "m"))
    assert c.choices[0].text == " Paris.\n" and c.choices[0].logprobs is not None
    assert c.choices[0].logprobs.text_offset == [0, 6, 7]


@pytest.mark.parametrize("field", ["max_tokens", "n"])
def test_an_integer_of_400_digits_is_read_exactly(field: str) -> None:
    # float() would overflow (OverflowError: a 500) or round it; read exactly, it is taken as
    # pydantic takes it, or refused with a 400.
    assert lax_int("9" * 400) == int("9" * 400)
    try:
        assert parse("chat", chat_body(**{field: "9" * 400})).body[field] == int("9" * 400)
    except oa.ApiError as e:
        assert e.status == 400
