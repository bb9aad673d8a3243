"""OpenAI request and response bodies as the proxy needs them: errors, request validation, the body sent to
vLLM, and the SSE relay helpers (parser, accumulator, non-streaming assembly, resumed-stream rewrite).
Pure: no I/O, no clock.

The proxy always streams from vLLM, whatever the client asked: first-token time is what it schedules on,
a stream can be resumed on another instance after preemption, and a non-streaming answer is assembled
here from the chunks. Relay loop for one attempt (`resume` is None on the first attempt):

    for payload in parser.feed(data):
        if payload == b"[DONE]": ...                                   # attempt finished
        chunk = parse_chunk(payload)
        out = payload if resume is None else rewrite_chunk_for_client(payload, chunk, resume)
        if acc.feed(chunk): ...                                        # first token of the request
        if acc.error is not None: ...                                  # in-band engine error
        if parsed.stream and out is not None and (parsed.include_usage or not is_usage_only(chunk)):
            write(sse_frame(out))

After a preemption: `resume = Resume.after(acc, parsed, resume)` and `resume_body(parsed, acc, ...)`
for the next attempt; the same accumulator keeps going, so it always holds what the client has seen.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, TypeGuard

from chirond.model import ReqClass
from chirond.tokens import count_messages, count_prompt, count_text

Json = dict[str, Any]

ENDPOINTS = ("chat", "completions")
SERVICE_TIERS = ("auto", "default", "flex", "priority")
ROLES = frozenset({"system", "user", "assistant", "tool", "developer", "function"})
BATCH_HEADER_VALUES = frozenset({"batch", "flex"})
# vLLM's default for /v1/completions when max_tokens is absent (chat has none: up to the context limit).
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
# Fields that constrain decoding from the start of the output: a continuation would restart the grammar
# in the middle of the answer, so such requests cannot be resumed.
_GUIDED_FIELDS = ("guided_json", "guided_regex", "guided_choice", "guided_grammar", "structured_outputs")

SSE_DONE = b"data: [DONE]\n\n"
DONE = b"[DONE]"


# ---------------------------------------------------------------- errors


def _default_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def _retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


class ApiError(Exception):
    """An error answered in OpenAI's shape. The openai client maps the status to its exception class:
    400 BadRequestError, 401 AuthenticationError, 403 PermissionDeniedError, 404 NotFoundError,
    429 RateLimitError, >= 500 InternalServerError, anything else (413, 415) APIStatusError; `.message`
    is "Error code: <status> - <message>" and `.code`/`.param`/`.type` come from the body."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _default_type(status)
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> Json:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def __repr__(self) -> str:
        return f"ApiError({self.status}, {self.message!r}, param={self.param!r}, code={self.code!r})"

    # Common cases. Client errors say what was expected; server errors say whether to retry (Retry-After).

    @classmethod
    def bad_json(cls, detail: str) -> ApiError:
        return cls(400, f"We could not parse the JSON body of your request: {detail}", code="invalid_json")

    @classmethod
    def invalid(cls, param: str, message: str) -> ApiError:
        return cls(400, message, param=param, code="invalid_value")

    @classmethod
    def missing(cls, param: str, what: str) -> ApiError:
        return cls(400, f"You must provide '{param}' ({what}).", param=param, code="missing_required_parameter")

    @classmethod
    def too_large(cls, limit: int, size: int | None = None) -> ApiError:
        got = f" ({size} bytes)" if size is not None else ""
        return cls(
            413, f"The request body{got} exceeds this server's limit of {limit} bytes.", code="request_too_large"
        )

    @classmethod
    def unsupported_media_type(cls, content_type: str | None) -> ApiError:
        # 415 rather than vLLM's 400: it names the actual problem, and only hand-written clients can hit it
        # (the openai client always sends JSON); it raises openai.APIStatusError, still an error.
        return cls(
            415,
            f"Unsupported Content-Type {content_type or '(none)'!r}: send a JSON body with "
            "'Content-Type: application/json'.",
            code="unsupported_media_type",
        )

    @classmethod
    def unknown_model(cls, model: str, served: list[str]) -> ApiError:
        names = ", ".join(served) if served else "(none)"
        return cls(
            404,
            f"The model `{model}` does not exist. Models served here: {names}.",
            param="model",
            code="model_not_found",
        )

    @classmethod
    def unauthorized(cls, message: str = "Invalid or missing API key: send 'Authorization: Bearer <key>'.") -> ApiError:
        return cls(401, message, code="invalid_api_key")

    @classmethod
    def queue_full(cls, model: str, req_class: str, limit: int, retry_after_s: float) -> ApiError:
        return cls(
            429,
            f"Too many {req_class} requests are queued for model {model!r} (limit {limit}); retry later.",
            code="rate_limit_exceeded",
            headers=_retry_after(retry_after_s),
        )

    @classmethod
    def unavailable(cls, message: str, retry_after_s: float, code: str = "overloaded") -> ApiError:
        """503: no capacity, waited too long in the queue, shutting down."""
        return cls(503, message, code=code, headers=_retry_after(retry_after_s))

    @classmethod
    def upstream(cls, message: str, status: int = 502) -> ApiError:
        """The inference server failed (502), or timed out (pass 504)."""
        return cls(status, message, code="upstream_error")

    @classmethod
    def from_error_object(cls, error: object, default_status: int = 502) -> ApiError:
        """An error vLLM sent in-band (`data: {"error": {...}}`), whose `code` is the HTTP status it would
        have answered, for a client that is not streaming yet."""
        if not isinstance(error, dict):
            return cls.upstream(str(error) or "inference server error", default_status)
        code = error.get("code")
        status = code if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599 else default_status
        message = error.get("message")
        param = error.get("param")
        return cls(
            status,
            message if isinstance(message, str) and message else "inference server error",
            param=param if isinstance(param, str) else None,
            code=code if isinstance(code, str) else None,
        )


# ---------------------------------------------------------------- parsing


@dataclass(slots=True)
class ParsedRequest:
    endpoint: str  # "chat" | "completions"
    body: Json  # the client's JSON object, unchanged
    model: str
    stream: bool
    include_usage: bool  # stream_options.include_usage
    input_tokens: int  # chirond.tokens estimate of the prompt
    max_tokens: int | None  # effective output cap: max_completion_tokens or max_tokens; 16 for completions
    # when absent (vLLM's default); None = up to the context limit (chat)
    service_tier: str | None


def _show(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, bytes) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_int(v: object) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


def _load_object(raw: bytes) -> Json:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ApiError.bad_json(f"the body is not valid UTF-8 (byte {e.start}).") from None
    try:
        # NaN/Infinity are Python extensions, not JSON; they would also slip through the range checks.
        body = json.loads(text, parse_constant=_reject_constant)
    except ValueError as e:
        raise ApiError.bad_json(f"{e}.") from None
    except RecursionError:
        raise ApiError.bad_json("nested too deeply.") from None
    if not isinstance(body, dict):
        raise ApiError.bad_json(f"expected a JSON object, got {type(body).__name__}.")
    return body


def _opt_int(body: Json, name: str, minimum: int) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if not _is_int(v) or v < minimum:
        raise ApiError.invalid(name, f"'{name}' must be an integer >= {minimum}, got {_show(v)}.")
    return int(v)


def _opt_number(body: Json, name: str, low: float, high: float, low_open: bool = False) -> None:
    v = body.get(name)
    if v is None:
        return
    if not _is_number(v) or v > high or v < low or (low_open and v == low):
        span = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise ApiError.invalid(name, f"'{name}' must be a number in {span}, got {_show(v)}.")


def _opt_bool(body: Json, name: str) -> bool | None:
    v = body.get(name)
    if v is None:
        return None
    if not isinstance(v, bool):
        raise ApiError.invalid(name, f"'{name}' must be a boolean, got {_show(v)}.")
    return v


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
        if not isinstance(role, str) or role not in ROLES:
            raise ApiError.invalid(
                f"{p}.role", f"'{p}.role' must be one of {', '.join(sorted(ROLES))}; got {_show(role)}."
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
    if isinstance(prompt, str) or _is_token_ids(prompt):
        return prompt
    if isinstance(prompt, list) and len(prompt) == 1 and (isinstance(prompt[0], str) or _is_token_ids(prompt[0])):
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


def parse_request(endpoint: str, raw: bytes, content_type: str | None, max_body_bytes: int) -> ParsedRequest:
    """Validate a /v1/chat/completions ("chat") or /v1/completions ("completions") request; raise ApiError.

    Stricter than vLLM where chirond's scheduling needs it: `model` is required (vLLM 0.33 falls back to
    its only model; chirond serves several and routes on the name), `n` must be 1 (the dispatcher sizes,
    orders and preempts single sequences), one prompt per completions request. Unknown fields pass through,
    as vLLM accepts them; explicit nulls count as absent, as in vLLM's optional fields."""
    if endpoint not in ENDPOINTS:
        raise ValueError(f"unknown endpoint {endpoint!r}")
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

    stream = bool(_opt_bool(body, "stream"))
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
            if v is not None and not isinstance(v, bool):
                raise ApiError.invalid(
                    f"stream_options.{key}", f"'stream_options.{key}' must be a boolean, got {_show(v)}."
                )
        include_usage = opts.get("include_usage") is True

    n = body.get("n")
    if n is not None and not (_is_int(n) and n == 1):
        raise ApiError.invalid(
            "n",
            f"'n' must be 1, got {_show(n)}: chirond schedules and preempts each request "
            "as a single sequence; send separate requests for several choices.",
        )
    max_tokens = _opt_int(body, "max_tokens", 1)
    max_completion_tokens = _opt_int(body, "max_completion_tokens", 1)
    _opt_number(body, "temperature", 0.0, 2.0)
    _opt_number(body, "top_p", 0.0, 1.0, low_open=True)

    tier = body.get("service_tier")
    if tier is not None and (not isinstance(tier, str) or tier not in SERVICE_TIERS):
        raise ApiError.invalid(
            "service_tier", f"'service_tier' must be one of {', '.join(SERVICE_TIERS)}; got {_show(tier)}."
        )

    if endpoint == "chat":
        input_tokens = count_messages(_check_messages(body))
        cap = max_completion_tokens if max_completion_tokens is not None else max_tokens
    else:
        input_tokens = count_prompt(_check_prompt(body))
        cap = max_tokens if max_tokens is not None else COMPLETIONS_DEFAULT_MAX_TOKENS
    return ParsedRequest(endpoint, body, model, stream, include_usage, input_tokens, cap, tier)


def request_class(parsed: ParsedRequest, header_value: str | None) -> ReqClass:
    """BATCH for `service_tier: "flex"` (OpenAI's cheaper, slower tier) or a class header saying batch/flex."""
    if parsed.service_tier == "flex":
        return ReqClass.BATCH
    if header_value is not None and header_value.strip().lower() in BATCH_HEADER_VALUES:
        return ReqClass.BATCH
    return ReqClass.INTERACTIVE


# ---------------------------------------------------------------- upstream bodies


# Compact, UTF-8 as-is: what vLLM itself emits (pydantic's model_dump_json). One encoder and decoder for
# the module: json.dumps/loads with arguments build a new one per call, which the per-chunk path feels.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_DECODER = json.JSONDecoder()


def _dumps(obj: object) -> bytes:
    return _ENCODER.encode(obj).encode()


def _upstream_dict(parsed: ParsedRequest, served_name: str, priority: int | None) -> Json:
    body = dict(parsed.body)
    body.pop("service_tier", None)  # vLLM ignores it; the proxy has acted on it
    body["model"] = served_name
    body["stream"] = True
    opts = body.get("stream_options")
    opts = dict(opts) if isinstance(opts, dict) else {}
    opts["include_usage"] = True  # the proxy needs the true token counts
    if not parsed.include_usage:
        # vLLM sends continuous usage only together with include_usage; the client did not get it before.
        opts.pop("continuous_usage_stats", None)
    body["stream_options"] = opts
    if priority is not None:
        body["priority"] = priority  # honoured by `--scheduling-policy priority`; lower runs first
    return body


def upstream_body(parsed: ParsedRequest, served_name: str, priority: int | None) -> bytes:
    """The body sent to vLLM: the client's, streaming with usage, `model` = served name, `priority` when given
    (a client's own `priority` stays when None is given), `service_tier` removed."""
    return _dumps(_upstream_dict(parsed, served_name, priority))


def continuation_body(
    parsed: ParsedRequest, served_name: str, generated_text: str, generated_tokens: int, priority: int | None
) -> bytes | None:
    """The body that resumes a preempted request on another instance from the text already streamed
    (preemption by recompute: the prefix is prefilled again, the client loses nothing): completions get
    prompt + text, chat an assistant message to continue (vLLM's `continue_final_message`); the token caps
    shrink by `generated_tokens`. None when it cannot be done faithfully: token-id prompts (no token ids of
    the output), echo/prompt_logprobs (the client would see the prefix again), guided decoding (the grammar
    would restart mid-answer), a client's non-text final assistant message, or no tokens left.
    Token boundaries at the seam may differ from an uninterrupted run."""
    if not generated_text and generated_tokens <= 0:
        return upstream_body(parsed, served_name, priority)
    body = parsed.body
    if body.get("n") not in (None, 1) or body.get("echo") or body.get("prompt_logprobs") is not None:
        return None
    if any(body.get(f) is not None for f in _GUIDED_FIELDS):
        return None
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") not in (None, "text"):
        return None
    remaining = None
    if parsed.max_tokens is not None:
        remaining = parsed.max_tokens - generated_tokens
        if remaining < 1:
            return None
    up = _upstream_dict(parsed, served_name, priority)
    if parsed.endpoint == "chat":
        messages = list(body["messages"])
        last = messages[-1]
        if body.get("continue_final_message") and last.get("role") == "assistant":
            # The client already asked to continue its own assistant message: extend that message.
            if not isinstance(last.get("content"), str):
                return None
            messages[-1] = {**last, "content": last["content"] + generated_text}
        else:
            messages.append({"role": "assistant", "content": generated_text})
        up["messages"] = messages
        up["continue_final_message"] = True
        up["add_generation_prompt"] = False  # vLLM rejects it together with continue_final_message
        for key in ("max_completion_tokens", "max_tokens"):
            if body.get(key) is not None:
                up[key] = remaining
    else:
        prompt = body["prompt"]
        if isinstance(prompt, list):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            return None
        up["prompt"] = prompt + generated_text
        up["max_tokens"] = remaining  # also when the client relied on the default of 16
    min_tokens = body.get("min_tokens")
    if _is_int(min_tokens):
        up["min_tokens"] = max(0, min_tokens - generated_tokens)
    return _dumps(up)


def resume_body(parsed: ParsedRequest, acc: StreamAccumulator, served_name: str, priority: int | None) -> bytes | None:
    """`continuation_body` from what an accumulator has seen; None also while a tool call or reasoning was
    being generated (neither can be handed back to the model as plain assistant text) or after an error."""
    if acc.error is not None or acc.tool_calls or acc.reasoning:
        return None
    return continuation_body(parsed, served_name, acc.text, acc.tokens, priority)


# ---------------------------------------------------------------- SSE


def sse_event(obj: Json) -> bytes:
    return b"data: " + _dumps(obj) + b"\n\n"


def sse_frame(payload: bytes) -> bytes:
    """One event around a payload that is already JSON (forwarded untouched)."""
    return b"data: " + payload + b"\n\n"


def error_event(err: ApiError) -> bytes:
    """An error for a stream that already started (the status is 200 by then), as vLLM does it: an error
    event, then [DONE]. The openai client raises openai.APIError with the message."""
    return sse_event(err.body()) + SSE_DONE


class SseParser:
    """Splits an SSE byte stream into event payloads (the `data` of each event; b"[DONE]" for the end).

    Works on whole buffers with bytes methods (find/split/replace run in C), never per byte: the relay
    passes every chunk of every stream through here. CRLF and CR line ends, comments (`: keep-alive`),
    other fields, multi-line data and events split across feeds are handled; an event without data is
    dropped, as in the SSE spec."""

    __slots__ = ("_buf", "_skip_lf", "max_event_bytes")

    def __init__(self, max_event_bytes: int = 16 << 20) -> None:
        self._buf = b""
        self._skip_lf = False
        self.max_event_bytes = max_event_bytes

    @property
    def pending(self) -> int:
        """Bytes of an event not yet complete (non-zero at the end of a stream means it was cut)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        if self._skip_lf:  # the previous feed ended in CR, already taken as a line end: skip its LF
            self._skip_lf = False
            if data[:1] == b"\n":
                data = data[1:]
        buf = self._buf + data if self._buf else bytes(data)
        if b"\r" in buf:
            self._skip_lf = buf.endswith(b"\r")
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        end = buf.rfind(b"\n\n")
        if end < 0:
            if len(buf) > self.max_event_bytes:
                raise ApiError.upstream(f"the inference server sent an event over {self.max_event_bytes} bytes")
            self._buf = buf
            return []
        self._buf = buf[end + 2 :]
        out: list[bytes] = []
        for block in buf[:end].split(b"\n\n"):
            if block.startswith(b"data: ") and b"\n" not in block:  # vLLM's only form
                out.append(block[6:])
            elif block:
                data_lines = []
                for line in block.split(b"\n"):
                    if line.startswith(b"data:"):
                        data_lines.append(line[6:] if line.startswith(b"data: ") else line[5:])
                if data_lines:
                    out.append(b"\n".join(data_lines))
        return out


def parse_chunk(payload: bytes) -> Json:
    """One stream event's JSON object; ApiError 502 when the server sent something else."""
    try:
        text = payload.decode("utf-8")
        # raw_decode skips json.loads's encoding sniffing and trailing-whitespace regex; check the end here.
        chunk, end = _DECODER.raw_decode(text)
        if end != len(text) and text[end:].strip():
            raise ValueError("trailing data")
    except (ValueError, RecursionError):
        raise ApiError.upstream(f"the inference server sent an invalid stream event: {_show(payload)}") from None
    if not isinstance(chunk, dict):
        raise ApiError.upstream(f"the inference server sent an invalid stream event: {_show(payload)}")
    return chunk


def is_usage_only(chunk: Json) -> bool:
    """The final usage chunk (`choices: []`), which the proxy asks for and forwards only if the client did."""
    return not chunk.get("choices") and chunk.get("usage") is not None


class StreamAccumulator:
    """What a stream has carried so far (choice 0; chirond serves n=1): enough to assemble the
    non-streaming answer, to resume after preemption, and to account tokens. Works for chat chunks
    (`delta`) and completions chunks (`text`) alike."""

    __slots__ = (
        "_completion_logprobs",
        "_reasoning",
        "_text",
        "_tool_calls",
        "chunks",
        "created",
        "error",
        "finish_reason",
        "first_content_seen",
        "id",
        "logprobs",
        "model",
        "reasoning_keys",
        "role",
        "stop_reason",
        "system_fingerprint",
        "usage",
    )

    def __init__(self) -> None:
        self.id: str | None = None
        self.created: int | None = None
        self.model: str | None = None
        self.system_fingerprint: str | None = None
        self.role: str | None = None
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self.reasoning_keys: list[str] = []  # "reasoning" (vLLM >= 0.11) and/or "reasoning_content"
        self._tool_calls: dict[int, Json] = {}
        self.logprobs: list[Json] | None = None  # chat: logprobs.content entries
        self._completion_logprobs: dict[str, list[Any]] | None = None
        self.finish_reason: str | None = None
        self.stop_reason: str | int | None = None
        self.usage: Json | None = None
        self.error: Json | None = None
        self.first_content_seen = False
        self.chunks = 0

    @property
    def text(self) -> str:
        if len(self._text) > 1:
            self._text = ["".join(self._text)]
        return self._text[0] if self._text else ""

    @property
    def reasoning(self) -> str:
        if len(self._reasoning) > 1:
            self._reasoning = ["".join(self._reasoning)]
        return self._reasoning[0] if self._reasoning else ""

    @property
    def tool_calls(self) -> list[Json]:
        return [self._tool_calls[i] for i in sorted(self._tool_calls)]

    @property
    def completion_logprobs(self) -> Json | None:
        return dict(self._completion_logprobs) if self._completion_logprobs is not None else None

    @property
    def tokens(self) -> int:
        """Completion tokens: the server's count once usage arrived, else chirond's estimate of all the
        generated text (content, reasoning, tool-call arguments); chunks are not tokens."""
        if self.usage is not None:
            n = self.usage.get("completion_tokens")
            if _is_int(n):
                return int(n)
        return (
            count_text(self.text)
            + count_text(self.reasoning)
            + sum(count_text(tc["function"]["arguments"]) for tc in self._tool_calls.values())
        )

    def feed(self, chunk: Json) -> bool:
        """Take one parsed chunk; True when it carries the request's first generated output (its TTFT)."""
        self.chunks += 1
        if self.id is None:
            self.id = chunk.get("id")
            self.created = chunk.get("created")
            self.model = chunk.get("model")
        error = chunk.get("error")
        if error is not None:
            self.error = error if isinstance(error, dict) else {"message": str(error)}
            return False
        usage = chunk.get("usage")
        if usage is not None:
            self.usage = usage
        fp = chunk.get("system_fingerprint")
        if fp:
            self.system_fingerprint = fp
        choices = chunk.get("choices")
        if not choices:
            return False
        choice = choices[0]
        if choice.get("index", 0) != 0:
            choice = next((c for c in choices if c.get("index", 0) == 0), None)
            if choice is None:
                return False
        content = False
        delta = choice.get("delta")
        lp = choice.get("logprobs")
        if delta is not None:  # chat
            role = delta.get("role")
            if role:
                self.role = role
            text = delta.get("content")
            if text:
                self._text.append(text)
                content = True
            content |= self._reasoning_delta(delta)
            calls = delta.get("tool_calls")
            if calls:
                self._merge_tool_calls(calls)
                content = True
            if lp:
                entries = lp.get("content")
                if entries:
                    if self.logprobs is None:
                        self.logprobs = []
                    self.logprobs.extend(entries)
        else:  # completions
            text = choice.get("text")
            if text:
                self._text.append(text)
                content = True
            if lp:
                merged = self._completion_logprobs
                if merged is None:
                    merged = self._completion_logprobs = {
                        "tokens": [],
                        "token_logprobs": [],
                        "top_logprobs": [],
                        "text_offset": [],
                    }
                for key, values in merged.items():
                    part = lp.get(key)
                    if part:
                        values.extend(part)
        finish = choice.get("finish_reason")
        if finish is not None:
            self.finish_reason = finish
            self.stop_reason = choice.get("stop_reason")
            content = True  # e.g. max_tokens=1 whose token decodes to ""
        if content and not self.first_content_seen:
            self.first_content_seen = True
            return True
        return False

    def _reasoning_delta(self, delta: Json) -> bool:
        # Some vLLM versions fill both names with the same text: take one, remember both for the answer.
        r = delta.get("reasoning")
        r2 = delta.get("reasoning_content")
        if not r and not r2:
            return False
        for key, v in (("reasoning", r), ("reasoning_content", r2)):
            if v and key not in self.reasoning_keys:
                self.reasoning_keys.append(key)
        self._reasoning.append(str(r or r2))
        return True

    def _merge_tool_calls(self, calls: list[Json]) -> None:
        for call in calls:
            index = call.get("index", 0)
            cur = self._tool_calls.get(index)
            if cur is None:
                cur = self._tool_calls[index] = {
                    "id": None,
                    "type": "function",
                    "function": {"name": "", "arguments": ""},
                }
            if call.get("id"):
                cur["id"] = call["id"]
            if call.get("type"):
                cur["type"] = call["type"]
            fn = call.get("function")
            if fn:
                # Concatenated like the openai client's own stream accumulator; vLLM sends the name once.
                if fn.get("name"):
                    cur["function"]["name"] += fn["name"]
                if fn.get("arguments"):
                    cur["function"]["arguments"] += fn["arguments"]


def assemble_response(parsed: ParsedRequest, acc: StreamAccumulator, model_name: str) -> Json:
    """The non-streaming answer (ChatCompletion / Completion) from a finished stream, shaped as vLLM's own
    non-streaming response: `tool_calls: []` when none, vLLM's finish_reason values as they came (the
    openai client does not validate them), usage from the usage chunk (an estimate if it never came)."""
    usage = acc.usage
    if usage is None:
        completion = acc.tokens
        usage = {
            "prompt_tokens": parsed.input_tokens,
            "completion_tokens": completion,
            "total_tokens": parsed.input_tokens + completion,
        }
    choice: Json
    if parsed.endpoint == "chat":
        calls = [
            {**tc, "id": tc["id"] or f"call_{i}", "function": dict(tc["function"])}
            for i, tc in enumerate(acc.tool_calls)
        ]
        text = acc.text
        message: Json = {
            "role": "assistant",
            "content": text if text or not calls else None,
            "tool_calls": calls,
        }
        if acc.reasoning_keys:
            for key in acc.reasoning_keys:
                message[key] = acc.reasoning
        logprobs = {"content": list(acc.logprobs), "refusal": None} if acc.logprobs is not None else None
        choice = {
            "index": 0,
            "message": message,
            "logprobs": logprobs,
            "finish_reason": acc.finish_reason,
            "stop_reason": acc.stop_reason,
        }
        obj, prefix = "chat.completion", "chatcmpl-"
    else:
        choice = {
            "index": 0,
            "text": acc.text,
            "logprobs": acc.completion_logprobs,
            "finish_reason": acc.finish_reason,
            "stop_reason": acc.stop_reason,
        }
        obj, prefix = "text_completion", "cmpl-"
    out: Json = {
        "id": acc.id or f"{prefix}chirond",
        "object": obj,
        "created": acc.created or 0,
        "model": model_name,
        "choices": [choice],
        "usage": dict(usage),
    }
    if acc.system_fingerprint:
        out["system_fingerprint"] = acc.system_fingerprint
    return out


# ---------------------------------------------------------------- resumed streams


@dataclass(slots=True)
class Resume:
    """What the client has seen of a stream before it was preempted, so that the continuation reads as the
    same stream."""

    id: str | None  # the first attempt's id and created
    created: int | None
    prompt_tokens: int | None  # the first attempt's count if it reported one; None: derive it (see below)
    prompt_estimate: int  # chirond's estimate, the last resort
    tokens_before: int  # completion tokens the client already has
    chars_before: int  # characters of text the client already has (completions logprobs text_offset)
    role_sent: bool  # the client already has the role chunk

    @classmethod
    def after(cls, acc: StreamAccumulator, parsed: ParsedRequest, previous: Resume | None = None) -> Resume | None:
        """After an attempt was cut; None when the client saw nothing (the retry is then a fresh stream).
        `acc` must have been fed the client's view of every attempt so far (see the module docstring)."""
        if acc.chunks == 0 and previous is None:
            return None
        prompt = previous.prompt_tokens if previous is not None else None
        if prompt is None and acc.usage is not None and _is_int(acc.usage.get("prompt_tokens")):
            prompt = acc.usage["prompt_tokens"]  # continuous usage stats
        return cls(acc.id, acc.created, prompt, parsed.input_tokens, acc.tokens, len(acc.text), acc.role is not None)


def rewrite_chunk_for_client(payload: bytes, chunk: Json, resume: Resume) -> bytes | None:
    """A continuation's chunk as the client must see it, or None to drop it; call it only on resumed
    attempts (the first attempt's chunks pass through as they came, unparsed twice and unserialized).
    Edits `chunk` in place, so the accumulator fed afterwards sees the client's view (one id, the usage
    of the whole answer). Rewrites: the first attempt's id/created; the continuation's role chunk dropped;
    completions logprobs text_offset shifted past the earlier text; usage counts all attempts:
    completion = tokens before + tokens now, prompt = the first attempt's count or else the continuation's
    prompt less the tokens before (the real tokenizer's count; chirond's estimate only if that is not
    positive), so that total_tokens stays what the server processed."""
    if "error" in chunk:
        return payload
    if resume.id is not None:
        chunk["id"] = resume.id
    if resume.created is not None:
        chunk["created"] = resume.created
    choices = chunk.get("choices")
    if choices:
        choice = choices[0]
        delta = choice.get("delta")
        if resume.role_sent and isinstance(delta, dict) and "role" in delta:
            del delta["role"]
            if not any(delta.values()) and choice.get("finish_reason") is None and not choice.get("logprobs"):
                return None
        lp = choice.get("logprobs")
        if resume.chars_before and isinstance(lp, dict) and lp.get("text_offset"):
            lp["text_offset"] = [o + resume.chars_before for o in lp["text_offset"]]
    usage = chunk.get("usage")
    if isinstance(usage, dict):
        completion = int(usage.get("completion_tokens") or 0) + resume.tokens_before
        prompt = resume.prompt_tokens
        if prompt is None:
            prompt = int(usage.get("prompt_tokens") or 0) - resume.tokens_before
        usage["prompt_tokens"] = prompt = prompt if prompt > 0 else resume.prompt_estimate
        usage["completion_tokens"] = completion
        usage["total_tokens"] = prompt + completion
    return _dumps(chunk)
