"""Client requests to /v1/chat/completions and /v1/completions: validation of the body as vLLM would
(answered with `ApiError` 400/413/415 before anything is queued) into a `ParsedRequest` with the
token estimate and output cap the scheduler needs, and the request class (interactive or batch). Pure."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TypeGuard

from chirond import jsonbounds
from chirond.lax_values import lax_bool, lax_int, lax_number
from chirond.model import ReqClass
from chirond.serve.openai_errors import ApiError, Json
from chirond.tokens import count_messages, count_prompt

ENDPOINTS = ("chat", "completions")
# OpenAI's tiers (vLLM's responses endpoint takes these only; its chat and completions ignore the field).
SERVICE_TIERS = ("auto", "default", "flex", "scale", "priority")
# The roles OpenAI and vLLM name; vLLM takes any other string too (a custom message), so chirond does.
ROLES = frozenset({"system", "user", "assistant", "tool", "developer", "function"})
BATCH_HEADER_VALUES = frozenset({"batch", "flex"})
# vLLM's default for /v1/completions when max_tokens is absent (chat has none: up to the context limit).
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


def unstreamable(endpoint: str, body: Json) -> bool:
    """Whether vLLM 0.33 refuses to stream this request, though it serves it unstreamed:
    `prompt_logprobs` other than 0 (both endpoints), `use_beam_search` on completions."""
    if body.get("prompt_logprobs") not in (None, 0, False):
        return True
    return endpoint == "completions" and body.get("use_beam_search") not in (None, False)


@dataclass(slots=True)
class ParsedRequest:
    endpoint: str  # "chat" | "completions" | "responses" (chirond.serve.responses_request)
    body: Json  # the client's JSON object, unchanged
    model: str
    stream: bool
    include_usage: bool  # stream_options.include_usage
    input_tokens: int  # chirond.tokens estimate of the prompt
    max_tokens: int | None  # effective output cap: max_completion_tokens or max_tokens; 16 for completions
    # when absent (vLLM's default); None = up to the context limit (chat)
    service_tier: str | None
    # Sent upstream unstreamed and relayed whole: a non-streaming request vLLM refuses to stream
    # (`prompt_logprobs`; `use_beam_search`). Not preemptible, no TTFT of its own (docs/serving.md).
    passthrough: bool = False
    n: int = 1  # choices; each is a sequence the engine generates

    @property
    def preemptible(self) -> bool:
        """Whether the dispatcher may evict it for interactive work (it then resumes from its text): one
        choice, not a pass-through, not a Responses request (docs/serving.md, "Failures, preemption and
        what is lost")."""
        return not self.passthrough and self.endpoint in ENDPOINTS and self.n == 1

    @property
    def output_cap(self) -> int:
        """The output tokens the request may generate, all choices together (0: up to the context)."""
        return (self.max_tokens or 0) * self.n


def _show(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, bytes) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_int(v: object) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


def _load_object(raw: bytes) -> Json:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ApiError.bad_json(f"the body is not valid UTF-8 (byte {e.start}).") from None
    try:
        # NaN/Infinity are Python extensions, not JSON; they would also slip through the range checks.
        body = jsonbounds.loads(text, parse_constant=_reject_constant)
    except ValueError as e:  # jsonbounds.JsonBoundsError too: too deep, lone surrogates
        raise ApiError.bad_json(f"{e}.") from None
    if not isinstance(body, dict):
        raise ApiError.bad_json(f"expected a JSON object, got {type(body).__name__}.")
    return body


def _opt_int(body: Json, name: str, minimum: int) -> int | None:
    """An optional integer field read as vLLM reads it ("10" is 10); the body gets the integer, so
    chirond and the engine see the same value."""
    v = body.get(name)
    if v is None:
        return None
    n = lax_int(v)
    if n is None or n < minimum:
        raise ApiError.invalid(name, f"'{name}' must be an integer >= {minimum}, got {_show(v)}.")
    body[name] = n
    return n


def _opt_number(body: Json, name: str, low: float, high: float, low_open: bool = False,
                param: str | None = "") -> None:
    """An optional number in a range; `param` names the field in the 400 (default: `name`; None as vLLM's
    sampling checks, which name no parameter)."""
    v = body.get(name)
    if v is None:
        return
    x = lax_number(v)
    if x is None or x > high or x < low or (low_open and x == low):
        span = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise ApiError.invalid(name if param == "" else param, f"'{name}' must be a number in {span}, got {_show(v)}.")
    body[name] = x


def _opt_bool(body: Json, name: str) -> bool | None:
    """An optional boolean read as vLLM reads it ("yes" and 1 are true); the body gets the bool."""
    v = body.get(name)
    if v is None:
        return None
    b = lax_bool(v)
    if b is None:
        raise ApiError.invalid(name, f"'{name}' must be a boolean, got {_show(v)}.")
    body[name] = b
    return b


def _check_messages(body: Json) -> list[Json]:
    messages = body.get("messages")
    if messages is None:
        raise ApiError.missing("messages", "a non-empty array of message objects")
    if not isinstance(messages, list) or not messages:
        raise ApiError.invalid(
            "messages", f"'messages' must be a non-empty array of message objects, got {_show(messages)}."
        )
    for i, m in enumerate(messages):
        p = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ApiError.invalid(p, f"'{p}' must be an object with 'role' and 'content', got {_show(m)}.")
        role = m.get("role")
        if not isinstance(role, str):
            raise ApiError.invalid(
                f"{p}.role", f"'{p}.role' must be a string such as {', '.join(sorted(ROLES))}; got {_show(role)}."
            )
        content = m.get("content")
        if content is not None and not isinstance(content, str | list):
            raise ApiError.invalid(
                f"{p}.content",
                f"'{p}.content' must be a string, an array of content parts, or null; got {_show(content)}.",
            )
        if isinstance(content, list) and not all(isinstance(part, dict) for part in content):
            raise ApiError.invalid(
                f"{p}.content", f'\'{p}.content\' parts must be objects such as {{"type": "text", "text": "..."}}.'
            )
    return messages


def _is_token_ids(v: object) -> bool:
    return isinstance(v, list) and bool(v) and all(_is_int(t) and t >= 0 for t in v)


def _check_prompt(body: Json) -> object:
    prompt = body.get("prompt")
    if prompt is None:
        raise ApiError.missing("prompt", "a string or an array of token ids")
    if isinstance(prompt, str) or _is_token_ids(prompt) or prompt == []:
        return prompt  # []: vLLM's model takes it and the engine answers its own 400
    if isinstance(prompt, list) and len(prompt) == 1 and (isinstance(prompt[0], str) or _is_token_ids(prompt[0])
                                                          or prompt[0] == []):
        return prompt
    if isinstance(prompt, list) and len(prompt) > 1 and all(isinstance(p, str | list) for p in prompt):
        raise ApiError.invalid(
            "prompt",
            "chirond serves one prompt per request: send each prompt of the batch "
            "as its own request (they are scheduled and billed separately).",
        )
    raise ApiError.invalid(
        "prompt",
        "'prompt' must be a string, an array of token ids (integers >= 0), or an "
        f"array holding one of those; got {_show(prompt)}.",
    )


def _media_type_ok(content_type: str | None) -> bool:
    if not content_type:
        return False
    return content_type.split(";", 1)[0].strip().lower() == "application/json"


def load_body(raw: bytes, content_type: str | None, max_body_bytes: int) -> tuple[Json, str]:
    """A generation request's JSON object and its `model`, which chirond requires (413, 415, 400)."""
    if len(raw) > max_body_bytes:
        raise ApiError.too_large(max_body_bytes, len(raw))
    if not _media_type_ok(content_type):
        raise ApiError.unsupported_media_type(content_type)
    body = _load_object(raw)
    model = body.get("model")
    if model is None:
        raise ApiError.missing("model", "the name of a served model")
    if not isinstance(model, str) or not model:
        raise ApiError.invalid("model", f"'model' must be a non-empty string, got {_show(model)}.")
    return body, model


def parse_request(endpoint: str, raw: bytes, content_type: str | None, max_body_bytes: int) -> ParsedRequest:
    """Validate a /v1/chat/completions ("chat") or /v1/completions ("completions") request; raise ApiError.

    Stricter than vLLM where chirond's scheduling needs it: `model` is required (vLLM 0.33 falls back to
    its only model; chirond serves several and routes on the name), one prompt per completions request.
    Unknown fields pass through, as vLLM accepts them; explicit nulls count as absent, as in vLLM's optional fields."""
    if endpoint not in ENDPOINTS:
        raise ValueError(f"unknown endpoint {endpoint!r}")
    body, model = load_body(raw, content_type, max_body_bytes)

    stream = bool(_opt_bool(body, "stream"))
    # Booleans chirond itself reads later (a resumed request's body, pass-through) as vLLM reads
    # them: "false" must not be truthy there.
    for flag in ("echo", "continue_final_message", "add_generation_prompt", "use_beam_search"):
        _opt_bool(body, flag)
    opts = body.get("stream_options")
    include_usage = False
    if opts is not None:
        if not stream:
            # vLLM's wording (ChatCompletionRequest.check_stream_options).
            raise ApiError.invalid("stream_options", "Stream options can only be defined when `stream=True`.")
        if not isinstance(opts, dict):
            raise ApiError.invalid("stream_options", f"'stream_options' must be an object, got {_show(opts)}.")
        for key in ("include_usage", "continuous_usage_stats"):
            v = opts.get(key)
            if v is not None and lax_bool(v) is None:
                raise ApiError.invalid(
                    f"stream_options.{key}", f"'stream_options.{key}' must be a boolean, got {_show(v)}."
                )
        include_usage = lax_bool(opts.get("include_usage")) is True

    n = 1
    if body.get("n") is not None:
        got = lax_int(body["n"])
        if got is None:
            raise ApiError.invalid("n", f"'n' must be an integer >= 1, got {_show(body['n'])}.")
        if got < 1:  # vLLM's SamplingParams check, which names no parameter
            raise ApiError.invalid(None, f"n must be at least 1, got {got}.")
        body["n"] = n = got
    max_tokens = _opt_int(body, "max_tokens", 1)
    max_completion_tokens = _opt_int(body, "max_completion_tokens", 1)
    _opt_number(body, "temperature", 0.0, 2.0)
    _opt_number(body, "top_p", 0.0, 1.0, low_open=True)
    for name in ("presence_penalty", "frequency_penalty"):
        _opt_number(body, name, -2.0, 2.0, param=None)  # vLLM's SamplingParams check names no parameter
    _check_logprobs(endpoint, body, stream)

    # vLLM's chat and completions models have no service_tier: any value passes; chirond acts on "flex".
    tier = body.get("service_tier") if isinstance(body.get("service_tier"), str) else None

    if endpoint == "chat":
        input_tokens = count_messages(_check_messages(body))
        cap = max_completion_tokens if max_completion_tokens is not None else max_tokens
    else:
        input_tokens = count_prompt(_check_prompt(body))
        cap = max_tokens if max_tokens is not None else COMPLETIONS_DEFAULT_MAX_TOKENS
    # n > 1 is never resumed (a continuation cannot carry n sequences): unstreamed for a non-streaming
    # client, relayed as it comes for a streaming one (docs/serving.md).
    passthrough = not stream and (unstreamable(endpoint, body) or n > 1)
    return ParsedRequest(endpoint, body, model, stream, include_usage, input_tokens, cap, tier, passthrough, n)


def _check_logprobs(endpoint: str, body: Json, stream: bool) -> None:
    """vLLM's own checks (its wording), so such a request is refused here, not after a trip to an engine."""
    for name in ("prompt_logprobs", "top_logprobs" if endpoint == "chat" else "logprobs"):
        v = body.get(name)
        if v is not None and not isinstance(v, int | float):  # vLLM checks the raw value (no "2")
            raise ApiError.invalid(name, f"`{name}` must be an integer.")
    prompt_logprobs = body.get("prompt_logprobs")
    if stream and _is_int(prompt_logprobs) and (prompt_logprobs > 0 or prompt_logprobs == -1):
        raise ApiError.invalid("prompt_logprobs", "`prompt_logprobs` are not available when `stream=True`.")
    top = body.get("top_logprobs")
    if endpoint == "chat" and _is_int(top) and (top > 0 or top == -1) and not body.get("logprobs"):
        raise ApiError.invalid("top_logprobs", "when using `top_logprobs`, `logprobs` must be set to true.")


def request_class(parsed: ParsedRequest, header_value: str | None) -> ReqClass:
    """BATCH for `service_tier: "flex"` (OpenAI's cheaper, slower tier) or a class header saying batch/flex."""
    if parsed.service_tier == "flex":
        return ReqClass.BATCH
    if header_value is not None and header_value.strip().lower() in BATCH_HEADER_VALUES:
        return ReqClass.BATCH
    return ReqClass.INTERACTIVE
