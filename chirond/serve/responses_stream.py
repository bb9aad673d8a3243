"""The Responses API's event stream through the relay: `EventAccumulator` (what a stream has carried:
its first output, its end, the final response object, errors), the SSE frames a client gets
(`event: TYPE` and `data: JSON`, as vLLM sends them; no `[DONE]`), and the error event chirond
sends when a stream it opened fails. Pure."""

from __future__ import annotations

from chirond.serve.openai_errors import ApiError, Json
from chirond.serve.openai_request import _is_int
from chirond.serve.openai_stream import _dumps
from chirond.tokens import count_text

TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})


def event_frame(event_type: object, payload: bytes) -> bytes:
    """One event as vLLM frames it: its type on the `event:` line, the JSON untouched."""
    name = event_type if isinstance(event_type, str) and "\n" not in event_type else "message"
    return b"event: " + name.encode() + b"\ndata: " + payload + b"\n\n"


def error_event(err: ApiError, sequence_number: int) -> bytes:
    """OpenAI's `error` event, carrying chirond's error object too: the openai client raises APIError
    on it (as on chat streams), and a client that reads events sees a ResponseErrorEvent."""
    obj: Json = {"type": "error", "code": err.code, "message": err.message, "param": err.param,
                 "sequence_number": sequence_number, **err.body()}
    return b"event: error\ndata: " + _dumps(obj) + b"\n\n"


class EventAccumulator:
    """What one attempt's events carried. Responses streams are never resumed (docs/serving.md), so an
    attempt's accumulator is the whole answer's."""

    __slots__ = ("_text_chars", "error", "final", "first_content_seen", "sequence")

    def __init__(self) -> None:
        self.final: Json | None = None  # the response object of the terminal event
        self.error: Json | None = None
        self.first_content_seen = False
        self.sequence = 0  # the next sequence_number, for an error event of chirond's
        self._text_chars = 0

    @property
    def finished(self) -> bool:
        return self.final is not None

    @property
    def tokens(self) -> int:
        """Output tokens: the engine's count from the final usage, else chirond's estimate of the deltas."""
        usage = (self.final or {}).get("usage")
        if isinstance(usage, dict) and _is_int(usage.get("output_tokens")):
            return int(usage["output_tokens"])
        return count_text("x" * self._text_chars)

    def feed(self, event: Json) -> bool:
        """Take one event; True when it carries the request's first output (its TTFT): the first delta
        of any item, or the end of a response that had none."""
        kind = event.get("type")
        seq = event.get("sequence_number")
        if _is_int(seq):
            self.sequence = max(self.sequence, seq + 1)
        if kind == "error" or ("error" in event and kind is None):
            err = event.get("error")
            self.error = err if isinstance(err, dict) else {"message": str(event.get("message") or err)}
            return False
        content = False
        if isinstance(kind, str) and kind.endswith(".delta"):
            delta = event.get("delta")
            self._text_chars += len(delta) if isinstance(delta, str) else 0
            content = True
        elif kind in TERMINAL:
            response = event.get("response")
            self.final = response if isinstance(response, dict) else {}
            content = True
        if content and not self.first_content_seen:
            self.first_content_seen = True
            return True
        return False
