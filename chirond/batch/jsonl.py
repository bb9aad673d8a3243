"""One line of a batch input file: {"custom_id", "method", "url", "body"}, checked the way
OpenAI's Batch API checks it, with a clear message naming the line and the field. Pure."""

from __future__ import annotations

from collections.abc import Collection

from chirond import jsonbounds
from chirond.tokens import count_messages, count_prompt

MAX_CUSTOM_ID = 512


class LineError(Exception):
    def __init__(self, code: str, message: str, custom_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.custom_id = custom_id


def check_line(raw: bytes, lineno: int, endpoint: str, models: Collection[str]) -> tuple[str, str, int]:
    """(custom_id, model, input token estimate) of a good line; LineError otherwise."""
    where = f"line {lineno}"
    try:
        obj = jsonbounds.loads(raw)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, too deep, lone surrogates
        raise LineError("invalid_json_line", f"{where}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise LineError("invalid_json_line", f"{where}: must be a JSON object")
    cid = obj.get("custom_id")
    if not isinstance(cid, str) or not cid:
        raise LineError("missing_required_parameter", f"{where}: 'custom_id' must be a non-empty string")
    if len(cid) > MAX_CUSTOM_ID:
        raise LineError("invalid_custom_id", f"{where}: 'custom_id' is longer than {MAX_CUSTOM_ID} characters", cid)
    method = obj.get("method")
    if method != "POST":
        what = "is missing" if method is None else f"is {method!r}"
        raise LineError("invalid_method", f"{where}: 'method' {what}; it must be 'POST'", cid)
    url = obj.get("url")
    if url != endpoint:
        what = "is missing" if url is None else f"is {url!r}"
        raise LineError("invalid_url", f"{where}: 'url' {what}; this batch's endpoint is {endpoint!r}", cid)
    body = obj.get("body")
    if not isinstance(body, dict):
        raise LineError("missing_required_parameter", f"{where}: 'body' must be a JSON object", cid)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise LineError("missing_required_parameter", f"{where}: 'body.model' must be a non-empty string", cid)
    if model not in models:
        raise LineError("model_not_found", f"{where}: model {model!r} is not served here", cid)
    # 'stream' is accepted and ignored (docs/batch.md): each answer is one whole body.
    if endpoint == "/v1/chat/completions":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise LineError(
                "missing_required_parameter",
                f"{where}: 'body.messages' must be a non-empty list of message objects",
                cid,
            )
        tokens = count_messages(messages)
    else:
        prompt = body.get("prompt")
        if not isinstance(prompt, str | list):
            raise LineError("missing_required_parameter", f"{where}: 'body.prompt' must be a string or a list", cid)
        tokens = count_prompt(prompt)
    return cid, model, tokens
