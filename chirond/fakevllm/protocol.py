"""vLLM's OpenAI-compatible wire format: request validation, errors, and the JSON of responses and
SSE chunks (shapes of vLLM 0.33, see shared notes on vLLM §2)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from chirond.fakevllm import synthetic
from chirond.lax_values import lax_bool, lax_int
from chirond.tokens import count_messages, count_prompt, make_text

VLLM_VERSION = "0.33.0"  # the version the simulated server reports at /version and in its logs
COMPLETIONS_DEFAULT_MAX_TOKENS = 16

_ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError", 501: "NotImplementedError",
                503: "ServiceUnavailableError", 500: "InternalServerError"}


class ApiError(Exception):
    """An error answered in vLLM's shape; the HTTP status equals `code`."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param

    def response(self) -> web.Response:
        err = {"message": self.message, "type": _ERROR_TYPES.get(self.status, "BadRequestError"),
               "param": self.param, "code": self.status}
        return web.json_response({"error": err}, status=self.status)


def dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))


@dataclass(slots=True)
class GenParams:
    """A validated generation request (one choice)."""

    chat: bool
    request_id: str
    prompt_tokens: int
    prompt_key: bytes  # what the natural output length is hashed from
    max_tokens: int | None  # as asked (None: up to the context limit)
    min_tokens: int
    ignore_eos: bool
    stream: bool
    include_usage: bool
    continuous_usage: bool
    priority: int
    tool: dict[str, Any] | None = None  # the function a tool call answers (chat with `tools`)
    forced: str | None = None  # the whole answer text when the request fixes it (tool arguments, JSON)
    logprobs: int | None = None  # top alternatives per token when log-probabilities are asked for
    n: int = 1  # choices, each its own sequence

    @property
    def plain(self) -> bool:
        """Filler text without logprobs: the pre-cut chunk templates apply."""
        return self.tool is None and self.forced is None and self.logprobs is None


def _bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param)


def _opt_int(body: dict[str, object], key: str, minimum: int | None = None) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    n = lax_int(v)  # as pydantic reads it: "10" is 10
    if n is None or (key in ("logprobs", "top_logprobs") and not isinstance(v, int | float)):
        raise _bad(f"{key}: Input should be a valid integer, got {v!r}", key)
    if minimum is not None and n < minimum:
        raise _bad(f"{key} must be at least {minimum}, got {n}.", key)
    return n


def _opt_bool(body: dict[str, object], key: str) -> bool:
    v = body.get(key)
    if v is None:
        return False
    b = lax_bool(v)  # as pydantic reads it: "yes" is true
    if b is None:
        raise _bad(f"{key}: Input should be a valid boolean, got {v!r}", key)
    return b


def parse_generate(body: object, *, chat: bool, served_model: str, header_request_id: str | None,
                   default_request_id: str) -> GenParams:
    """Validate a /v1/chat/completions or /v1/completions body the way vLLM does (400 for a bad
    field, 404 for another model); unknown fields are ignored."""
    if not isinstance(body, dict):
        raise _bad("Input should be a valid dictionary or object to extract fields from")
    model = body.get("model")
    if model is not None and model != served_model:
        if not isinstance(model, str):
            raise _bad(f"model: Input should be a valid string, got {model!r}", "model")
        raise ApiError(404, f"The model `{model}` does not exist.", "model")
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _bad("messages: Field required (a non-empty list of messages)", "messages")
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise _bad("messages: every message must be an object with a string 'role'", "messages")
        prompt_tokens = count_messages(messages)
        prompt_key = dumps(messages).encode()
        max_tokens = _opt_int(body, "max_completion_tokens", 1)
        if max_tokens is None:
            max_tokens = _opt_int(body, "max_tokens", 1)
    else:
        if "prompt" not in body:
            raise _bad("prompt: Field required", "prompt")
        prompt = body["prompt"]
        if isinstance(prompt, list) and len(prompt) > 1 and not all(isinstance(t, int) for t in prompt):
            raise _bad("this simulated server takes one prompt per request, not a batch of prompts", "prompt")
        prompt_tokens = count_prompt(prompt)
        if prompt_tokens == 0:
            raise _bad("The decoder prompt cannot be empty", "prompt")
        prompt_key = dumps(prompt).encode()
        max_tokens = COMPLETIONS_DEFAULT_MAX_TOKENS if "max_tokens" not in body else _opt_int(body, "max_tokens", 1)
    n = _opt_int(body, "n")
    if n is not None and n < 1:
        raise _bad(f"n must be at least 1, got {n}.")  # SamplingParams' check: no parameter named
    min_tokens = _opt_int(body, "min_tokens", 0) or 0
    if max_tokens is not None and min_tokens > max_tokens:
        raise _bad(f"min_tokens must be less than or equal to max_tokens={max_tokens}, got {min_tokens}.",
                   "min_tokens")
    stream = _opt_bool(body, "stream")
    prompt_logprobs = body.get("prompt_logprobs")
    if stream and isinstance(prompt_logprobs, int) and (prompt_logprobs > 0 or prompt_logprobs == -1):
        raise _bad("`prompt_logprobs` are not available when `stream=True`.", "prompt_logprobs")
    if stream and not chat and body.get("use_beam_search"):
        raise _bad("Streaming is not currently supported with beam search", None)
    opts = body.get("stream_options")
    if opts is not None:
        if not isinstance(opts, dict):
            raise _bad("stream_options: Input should be a valid dictionary", "stream_options")
        if not stream:
            raise _bad("Stream options can only be defined when `stream=True`.", "stream_options")
    include_usage = _opt_bool(opts, "include_usage") if opts else False
    continuous = _opt_bool(opts, "continuous_usage_stats") if opts else False
    priority = _opt_int(body, "priority") or 0
    rid = body.get("request_id")
    if rid is not None and not isinstance(rid, str):
        raise _bad("request_id: Input should be a valid string", "request_id")
    tool = synthetic.pick_tool(body.get("tools"), body.get("tool_choice")) if chat else None
    forced = json.dumps(synthetic.example((tool or {}).get("parameters", {"type": "object"}))) if tool else None
    if forced is None:
        forced = synthetic.structured_text(body.get("response_format"))
    return GenParams(chat=chat, request_id=header_request_id or rid or default_request_id,
                     prompt_tokens=prompt_tokens, prompt_key=prompt_key, max_tokens=max_tokens,
                     min_tokens=min_tokens, ignore_eos=_opt_bool(body, "ignore_eos"), stream=stream,
                     include_usage=include_usage, continuous_usage=continuous, priority=priority,
                     tool=tool, forced=forced, logprobs=_logprobs(body, chat), n=n or 1)


def _logprobs(body: dict[str, object], chat: bool) -> int | None:
    """How many alternatives per token the request wants (vLLM's checks); None: no logprobs."""
    if chat:
        top = MAX_LOGPROBS if body.get("top_logprobs") == -1 else _opt_int(body, "top_logprobs", 0)
        want = _opt_bool(body, "logprobs")
        if top is not None and top > 0 and not want:
            raise _bad("when using `top_logprobs`, `logprobs` must be set to true.", "top_logprobs")
    else:
        top = _opt_int(body, "logprobs", 0)
        want = top is not None
    if top is not None and top > MAX_LOGPROBS:
        raise _bad(f"Requested sample logprobs of {top}, which is greater than max allowed: {MAX_LOGPROBS}",
                   "logprobs")
    return (top or 0) if want else None


MAX_LOGPROBS = 20  # vLLM's default --max-logprobs


def context_error(max_model_len: int, prompt_tokens: int) -> ApiError:
    """vLLM 0.33's answer to a prompt that leaves no room for output (renderers/params.py); a prompt
    that fits gets its max_tokens shortened to the room left instead (get_max_tokens)."""
    return ApiError(
        400,
        f"This model's maximum context length is {max_model_len} tokens. However, your prompt contains "
        f"{prompt_tokens} input tokens, which exceeds this limit even without any output tokens. Please reduce "
        f"the length of the input prompt. (parameter=input_tokens, value={prompt_tokens})",
        "input_tokens",
    )


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "total_tokens": prompt + completion, "completion_tokens": completion}


def text(start: int, end: int) -> str:
    """Output tokens start..end-1: 4-character words, so `count_text` of the whole is its token count."""
    return make_text(end - start, seed=start)


class Render:
    """One request's response JSON. SSE chunks are pre-cut templates: 512 streams write thousands
    of chunks a second, and only the text and the finish reason change between them."""

    def __init__(self, p: GenParams, model: str, created: int) -> None:
        self.p = p
        self.model = model
        self.created = created
        self.id = ("chatcmpl-" if p.chat else "cmpl-") + p.request_id
        obj = "chat.completion.chunk" if p.chat else "text_completion"
        self._head = f'data: {{"id":{dumps(self.id)},"object":"{obj}","created":{created},"model":{dumps(model)},'
        self._open = self._head + ('"choices":[{"index":0,"delta":{"content":' if p.chat
                                   else '"choices":[{"index":0,"text":')

    def text(self, start: int, end: int) -> str:
        """Output tokens start..end-1 (4 characters each): the fixed answer's, else filler."""
        if self.p.forced is not None:
            return self.p.forced[start * 4:end * 4]
        return text(start, end)

    def _logprobs(self, start: int, end: int) -> object:
        if self.p.logprobs is None or self.p.tool is not None:
            return None
        piece = self.text(start, end)
        if self.p.chat:
            return synthetic.chat_logprobs(piece, self.p.logprobs)
        return synthetic.completion_logprobs(piece, self.p.logprobs, offset=start * 4)

    def _tool_call(self, start: int, end: int, head: bool) -> dict[str, object]:
        assert self.p.tool is not None
        fn: dict[str, object] = {"arguments": self.text(start, end)}
        call: dict[str, object] = {"index": 0, "function": fn}
        if head:
            fn["name"] = self.p.tool.get("name")
            call.update(id=synthetic.tool_call_id(self.p.request_id), type="function")
        return call

    def _finish(self, finish: str | None) -> str | None:
        """The API's finish reason: a tool call that ended by itself is "tool_calls" (the engine says stop)."""
        return "tool_calls" if finish == "stop" and self.p.tool is not None else finish

    def _rich_chunk(self, start: int, end: int, finish: str | None) -> str:
        """A chunk built as a dict: tool calls and logprobs (rarer, so the fast path stays)."""
        finish = self._finish(finish)
        choice: dict[str, object]
        if self.p.chat:
            delta: dict[str, object] = ({"tool_calls": [self._tool_call(start, end, start == 0)]}
                                        if self.p.tool is not None else {"content": self.text(start, end)})
            choice = {"index": 0, "delta": delta, "logprobs": self._logprobs(start, end), "finish_reason": finish}
        else:
            choice = {"index": 0, "text": self.text(start, end), "logprobs": self._logprobs(start, end),
                      "finish_reason": finish}
        if finish is not None or not self.p.chat:
            choice["stop_reason"] = None
        kind = "chat.completion.chunk" if self.p.chat else "text_completion"
        obj: dict[str, object] = {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                                  "choices": [choice]}
        if self.p.continuous_usage:
            obj["usage"] = usage(self.p.prompt_tokens, end)
        return f"data: {dumps(obj)}\n\n"

    def role_chunk(self, index: int = 0) -> str:
        extra = f',"usage":{dumps(usage(self.p.prompt_tokens, 0))}' if self.p.continuous_usage else ""
        return (f'{self._head}"choices":[{{"index":{index},"delta":{{"role":"assistant","content":""}},'
                f'"logprobs":null,"finish_reason":null}}]{extra}}}\n\n')

    def chunk(self, start: int, end: int, finish: str | None, index: int = 0) -> str:
        """Tokens start..end-1 of choice `index`; the last chunk of a choice carries its finish reason."""
        if index:  # the templates are cut for choice 0
            return self.chunk(start, end, finish).replace('"choices":[{"index":0,', f'"choices":[{{"index":{index},', 1)
        if not self.p.plain:
            return self._rich_chunk(start, end, finish)
        if finish is not None:
            tail = f'"logprobs":null,"finish_reason":"{finish}","stop_reason":null'
        elif self.p.chat:
            tail = '"logprobs":null,"finish_reason":null'
        else:
            tail = '"logprobs":null,"finish_reason":null,"stop_reason":null'
        close = "}" if self.p.chat else ""  # chat text sits in a "delta" object
        extra = f',"usage":{dumps(usage(self.p.prompt_tokens, end))}' if self.p.continuous_usage else ""
        return f'{self._open}"{text(start, end)}"{close},{tail}}}]{extra}}}\n\n'

    def usage_chunk(self, completion: int) -> str:
        return f'{self._head}"choices":[],"usage":{dumps(usage(self.p.prompt_tokens, completion))}}}\n\n'

    def full(self, choices: list[tuple[int, str]]) -> dict[str, object]:
        """The non-streaming answer: one choice per (output tokens, finish reason)."""
        out, first = self._full_one(*choices[0])
        out["choices"] = [first, *({**self._full_one(n, reason)[1], "index": i}
                                   for i, (n, reason) in enumerate(choices[1:], 1))]
        out["usage"] = {**usage(self.p.prompt_tokens, sum(n for n, _ in choices)), "prompt_tokens_details": None}
        return out

    def _full_one(self, completion: int, finish: str) -> tuple[dict[str, object], dict[str, object]]:
        """The answer with one choice, and that choice."""
        finish = self._finish(finish) or finish
        choice: dict[str, object]
        tool = self.p.tool
        if self.p.chat:
            calls = [] if tool is None else [{**self._tool_call(0, completion, True), "index": None}]
            for c in calls:
                del c["index"]  # a message's tool calls carry no index
            choice = {"index": 0,
                      "message": {"role": "assistant", "content": None if tool else self.text(0, completion),
                                  "refusal": None, "annotations": None, "audio": None, "function_call": None,
                                  "tool_calls": calls, "reasoning": None},
                      "logprobs": self._logprobs(0, completion), "finish_reason": finish, "stop_reason": None,
                      "token_ids": None}
        else:
            choice = {"index": 0, "text": self.text(0, completion), "logprobs": self._logprobs(0, completion),
                      "finish_reason": finish, "stop_reason": None, "token_ids": None, "prompt_logprobs": None,
                      "prompt_token_ids": None}
        u: dict[str, object] = {**usage(self.p.prompt_tokens, completion), "prompt_tokens_details": None}
        out: dict[str, object] = {
            "id": self.id, "object": "chat.completion" if self.p.chat else "text_completion",
            "created": self.created, "model": self.model, "choices": [choice], "service_tier": None,
            "system_fingerprint": None, "usage": u}
        if self.p.chat:  # vLLM's CompletionResponse has these per choice only
            out.update(prompt_logprobs=None, prompt_token_ids=None)
        out["kv_transfer_params"] = None
        return out, choice
