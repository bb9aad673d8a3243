"""Errors answered in OpenAI's shape (`ApiError`): the status, type, param and code the openai client
maps to its exception classes, with constructors for the cases the proxy answers (bad JSON, invalid or
missing values, unknown model, queue full, unavailable with Retry-After, upstream failures). Pure."""

from __future__ import annotations

import math
from typing import Any

Json = dict[str, Any]


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
    def invalid(cls, param: str | None, message: str) -> ApiError:
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
