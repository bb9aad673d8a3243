"""Client requests to POST /v1/responses (OpenAI's Responses API, as vLLM 0.33 serves it): checked as
vLLM's ResponsesRequest checks them, plus chirond's one rule, that a request carries its whole
conversation: chirond stores no response, so `previous_response_id`, `conversation` and
`background` (which needs the store) get a 400 naming the parameter. `store` is accepted and
ignored, as vLLM ignores it unless its store is switched on. The body sent upstream always
streams and never stores. Pure."""

from __future__ import annotations

from chirond.serve.openai_errors import ApiError, Json
from chirond.serve.openai_request import (
    SERVICE_TIERS,
    ParsedRequest,
    _opt_bool,
    _opt_int,
    _opt_number,
    _show,
    load_body,
)
from chirond.serve.openai_stream import _dumps
from chirond.tokens import count_response_input

RESPONSES = "responses"
# Parameters that refer to state kept between requests; chirond keeps none.
STATEFUL = {
    "previous_response_id": "chirond keeps no responses: send the conversation so far in `input` "
                            "(earlier output items included) instead of `previous_response_id`.",
    "conversation": "chirond keeps no conversations: send the conversation so far in `input` instead.",
    "background": "chirond keeps no responses, so it cannot run one in the background: leave `background` "
                  "unset and wait for the answer (or stream it).",
}


def parse_responses(raw: bytes, content_type: str | None, max_body_bytes: int) -> ParsedRequest:
    """Validate a /v1/responses request; raise ApiError (400/413/415)."""
    body, model = load_body(raw, content_type, max_body_bytes)
    for name, why in STATEFUL.items():
        if body.get(name) not in (None, False):
            raise ApiError.invalid(name, why)
    if body.get("prompt") is not None:  # vLLM's wording
        raise ApiError.invalid("prompt", "prompt template is not supported")
    inp = body.get("input")
    if inp is None:
        raise ApiError.missing("input", "a string, or an array of input items")
    if not isinstance(inp, str | list) or (isinstance(inp, list) and not all(isinstance(i, dict) for i in inp)):
        raise ApiError.invalid("input", f"'input' must be a string or an array of input items (objects), got "
                                        f"{_show(inp)}.")
    stream = bool(_opt_bool(body, "stream"))
    _opt_bool(body, "store")
    cap = _opt_int(body, "max_output_tokens", 1)
    _opt_number(body, "temperature", 0.0, 2.0)
    _opt_number(body, "top_p", 0.0, 1.0, low_open=True)
    for name in ("presence_penalty", "frequency_penalty"):
        _opt_number(body, name, -2.0, 2.0)  # fields of vLLM's model with bounds: the 400 names them
    tier = body.get("service_tier")
    if tier is not None and tier not in SERVICE_TIERS:
        raise ApiError.invalid(
            "service_tier", f"'service_tier' must be one of {', '.join(SERVICE_TIERS)}; got {_show(tier)}."
        )
    tokens = count_response_input(inp, body.get("instructions"))
    return ParsedRequest(RESPONSES, body, model, stream, False, tokens, cap, tier if isinstance(tier, str) else None)


def upstream_body(parsed: ParsedRequest, served_name: str, priority: int | None) -> bytes:
    """The client's body, streaming (chirond sees each token), `store: false` (no engine keeps state that
    only it would know), `model` = served name, `priority` when given."""
    body: Json = dict(parsed.body)
    body["model"] = served_name
    body["stream"] = True
    body["store"] = False
    if priority is not None:
        body["priority"] = priority
    return _dumps(body)
