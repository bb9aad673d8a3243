"""Client requests to /v1/embeddings, checked as vLLM 0.33's EmbeddingRequest would check them
(answered with `ApiError` before anything is queued), and which endpoint a model's task serves. Pure.

An embeddings request is relayed whole (`passthrough`): vLLM answers it in one JSON body, there is
nothing to stream, preempt or resume. Unlike completions, several inputs go in one request, as
vLLM and OpenAI take them: the engine pools them in one pass, so they share one slot."""

from __future__ import annotations

from chirond.serve.openai_errors import ApiError, Json
from chirond.serve.openai_request import (
    SERVICE_TIERS,
    ParsedRequest,
    _is_int,
    _is_token_ids,
    _load_object,
    _media_type_ok,
    _show,
)
from chirond.tokens import count_messages, count_text

EMBEDDINGS = "embeddings"
# What chirond relays: JSON answers. vLLM's "bytes"/"bytes_only" answer a binary stream instead.
ENCODING_FORMATS = ("float", "base64")
# Which endpoints a model of each task serves (config `task`, vLLM's task names).
TASK_ENDPOINTS = {"generate": ("chat", "completions", "responses"), "embed": (EMBEDDINGS,)}
_TASK_WORDS = {"generate": "a generative model (chat and completions)", "embed": "an embedding model"}
_ENDPOINT_PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "responses": "/v1/responses",
                   EMBEDDINGS: "/v1/embeddings"}


def _count_input(value: object) -> int | None:
    """chirond's token estimate of an `input` (a string, token ids, or a list of either), or None
    when it is none of those."""
    if isinstance(value, str):
        return count_text(value)
    if _is_token_ids(value):
        return len(value)  # type: ignore[arg-type]
    if isinstance(value, list) and value and all(isinstance(v, str) or _is_token_ids(v) for v in value):
        return sum(count_text(v) if isinstance(v, str) else len(v) for v in value)
    return None


def _chat_tokens(messages: object, param: str) -> int:
    """A conversation (or a list of them) given as `messages`, or as `input` made of messages."""
    convs = messages if isinstance(messages, list) and messages and isinstance(messages[0], list) else [messages]
    total = 0
    for conv in convs:
        if not isinstance(conv, list) or not conv or not all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                                             for m in conv):
            raise ApiError.invalid(param, f"'{param}' must be a non-empty array of messages with a 'role'.")
        total += count_messages(conv)
    return total


def _is_messages(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(m, dict) or (isinstance(m, list) and m and all(isinstance(x, dict) for x in m)) for m in value)


def parse_embeddings(raw: bytes, content_type: str | None, max_body_bytes: int) -> ParsedRequest:
    """Validate a /v1/embeddings request; raise ApiError. `model` is required (as for chat); `input`
    is a string, an array of strings, token ids or arrays of token ids (or chat messages, as vLLM
    takes them); `encoding_format` "float" or "base64"; `dimensions` an integer >= 1 (the engine
    says whether its model can shorten its vectors). Other fields pass through to vLLM."""
    if len(raw) > max_body_bytes:
        raise ApiError.too_large(max_body_bytes, len(raw))
    if not _media_type_ok(content_type):
        raise ApiError.unsupported_media_type(content_type)
    body: Json = _load_object(raw)
    model = body.get("model")
    if model is None:
        raise ApiError.missing("model", "the name of a served embedding model")
    if not isinstance(model, str) or not model:
        raise ApiError.invalid("model", f"'model' must be a non-empty string, got {_show(model)}.")
    if body.get("messages") is not None:
        tokens = _chat_tokens(body["messages"], "messages")
    elif "input" not in body or body["input"] is None:
        raise ApiError.missing("input", "a string, an array of strings, or an array of token ids")
    elif _is_messages(body["input"]):
        tokens = _chat_tokens(body["input"], "input")
    else:
        counted = _count_input(body["input"])
        if counted is None:
            raise ApiError.invalid(
                "input", "'input' must be a string, an array of strings, an array of token ids (integers >= 0) "
                f"or an array of such arrays; got {_show(body['input'])}.")
        tokens = counted
    fmt = body.get("encoding_format")
    if fmt is not None and fmt not in ENCODING_FORMATS:
        raise ApiError.invalid(
            "encoding_format", f"'encoding_format' must be one of {', '.join(ENCODING_FORMATS)} through chirond "
            f"(it relays JSON answers); got {_show(fmt)}.")
    dims = body.get("dimensions")
    if dims is not None and not (_is_int(dims) and dims >= 1):
        raise ApiError.invalid("dimensions", f"'dimensions' must be an integer >= 1, got {_show(dims)}.")
    tier = body.get("service_tier")
    if tier is not None and (not isinstance(tier, str) or tier not in SERVICE_TIERS):
        raise ApiError.invalid(
            "service_tier", f"'service_tier' must be one of {', '.join(SERVICE_TIERS)}; got {_show(tier)}.")
    return ParsedRequest(EMBEDDINGS, body, model, stream=False, include_usage=False, input_tokens=tokens,
                         max_tokens=0, service_tier=tier, passthrough=True)


def check_task(endpoint: str, model: str, task: str) -> None:
    """400 when `model`'s task does not serve `endpoint` (vLLM itself answers 404 "Not Found": the
    route is missing on an engine of the other kind)."""
    if endpoint in TASK_ENDPOINTS.get(task, ()):
        return
    serves = " and ".join(_ENDPOINT_PATHS[e] for e in TASK_ENDPOINTS.get(task, ()))
    raise ApiError(400, f"The model `{model}` is {_TASK_WORDS.get(task, task)}: it serves {serves}, "
                   f"not {_ENDPOINT_PATHS.get(endpoint, endpoint)}.",
                   param="model", code="model_not_supported")
