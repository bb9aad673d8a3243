"""The SSE side of the relay: framing events for the client, `SseParser` (an upstream byte stream into
event payloads), `parse_chunk`, `StreamAccumulator` (what a stream has carried: text, reasoning, tool
calls, logprobs, usage, errors) and `assemble_response`, the non-streaming answer built from a
finished stream. Pure."""

from __future__ import annotations

import json
from typing import Any

from chirond.serve.openai_errors import ApiError, Json
from chirond.serve.openai_request import ParsedRequest, _is_int, _show
from chirond.tokens import count_text

SSE_DONE = b"data: [DONE]\n\n"
DONE = b"[DONE]"

# Compact, UTF-8 as-is: what vLLM itself emits (pydantic's model_dump_json). One encoder and decoder for
# the module: json.dumps/loads with arguments build a new one per call, which the per-chunk path feels.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_DECODER = json.JSONDecoder()


def _dumps(obj: object) -> bytes:
    return _ENCODER.encode(obj).encode()


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
