"""fake-vllm's `POST /v1/responses`: vLLM 0.33's OpenAI Responses API on its chat-template path
(`SimpleContext`, no harmony, no built-in tools, no store), checked and shaped as vLLM does it.

A request becomes the same `GenParams` as a chat request (prompt tokens from `input` and
`instructions`, `max_output_tokens` as the cap, a function tool or a `text.format` schema fixing
the answer), so the engine model times it like chat. The answer is one output item: a message
with the filler text, or a `function_call` with synthetic arguments. Streams carry vLLM's event
sequence (`response.created`, `response.in_progress`, the item's added/delta/done events, then
`response.completed`, or `response.incomplete` when the cap cut it), each as `event: TYPE` and
`data: JSON` with a running `sequence_number`, and no `[DONE]`.
tests/conformance/test_fakevllm_responses_api.py holds the events and the final object to what vLLM's
own code builds from the same text."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from chirond.fakevllm import synthetic
from chirond.fakevllm.protocol import ApiError, GenParams, dumps, text
from chirond.lax_values import lax_int, lax_number
from chirond.tokens import count_response_input

Json = dict[str, Any]
SERVICE_TIERS = ("auto", "default", "flex", "scale", "priority")


def _bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param)


def function_tool(tools: object, tool_choice: object) -> Json | None:
    """The function a tool-calling model would call (Responses tools are flat: `{"type": "function",
    "name", "parameters"}`): the named one, else the first; None without tools or with "none"."""
    if not isinstance(tools, list):
        return None
    as_chat = [{"type": "function", "function": t} for t in tools
               if isinstance(t, dict) and t.get("type") == "function"]
    choice = tool_choice
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        choice = {"type": "function", "function": {"name": tool_choice.get("name")}}
    return synthetic.pick_tool(as_chat, choice)


def parse_responses(body: object, *, served_model: str, header_request_id: str | None,
                    default_request_id: str) -> GenParams:
    """Check a /v1/responses body as vLLM 0.33 does (its request model, the checks of its serving
    class with the response store off, its sampling checks); 400 or 404 in vLLM's shape."""
    if not isinstance(body, dict):
        raise _bad("Input should be a valid dictionary or object to extract fields from")
    if body.get("prompt") is not None:
        raise _bad("prompt template is not supported", "prompt")
    if body.get("background") and not body.get("store", True):
        raise _bad("background can only be used when `store` is true", "background")
    model = body.get("model")
    if model is not None and model != served_model:
        if not isinstance(model, str):
            raise _bad(f"model: Input should be a valid string, got {model!r}", "model")
        raise ApiError(404, f"The model `{model}` does not exist.", "model")
    if "input" not in body:
        raise _bad("input: Field required", "input")
    inp = body["input"]
    if not isinstance(inp, str | list):
        raise _bad("input: Input should be a valid string or list", "input")
    tier = body.get("service_tier", "auto")
    if tier not in SERVICE_TIERS:
        raise _bad("service_tier: Input should be 'auto', 'default', 'flex', 'scale' or 'priority'", "service_tier")
    cap = None
    if body.get("max_output_tokens") is not None:
        cap = lax_int(body["max_output_tokens"])
        if cap is None:
            raise _bad("max_output_tokens: Input should be a valid integer", "max_output_tokens")
        if cap < 1:
            raise _bad(f"max_tokens must be at least 1, got {cap}.", "max_tokens")
    for key in ("temperature", "top_p"):
        if body.get(key) is not None and lax_number(body[key]) is None:
            raise _bad(f"{key}: Input should be a valid number", key)
    stream = body.get("stream") is True
    if body.get("background"):  # store is on by default, and off in this server
        raise _bad("This vLLM engine does not support `store=True` and therefore does not support the background "
                   "mode. To enable these features, set the environment variable "
                   "`VLLM_ENABLE_RESPONSES_API_STORE=1` when launching the vLLM server.", "background")
    prev = body.get("previous_response_id")
    if prev is not None:  # nothing is ever stored here
        raise ApiError(404, f"Response with id '{prev}' not found.", "response_id")
    tool = function_tool(body.get("tools"), body.get("tool_choice", "auto"))
    forced = json.dumps(synthetic.example(tool.get("parameters") or {"type": "object"})) if tool else None
    if forced is None:
        fmt = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            forced = synthetic.structured_text({"type": "json_schema", "json_schema": {"schema": fmt.get("schema")}})
        else:
            forced = synthetic.structured_text(fmt)
    rid = body.get("request_id")
    request_id = header_request_id or (rid if isinstance(rid, str) else None) or default_request_id
    prompt_tokens = count_response_input(inp, body.get("instructions"))
    return GenParams(chat=True, request_id=request_id, prompt_tokens=prompt_tokens,
                     prompt_key=dumps([inp, body.get("instructions")]).encode(), max_tokens=cap, min_tokens=0,
                     ignore_eos=body.get("ignore_eos") is True, stream=stream, include_usage=False,
                     continuous_usage=False, priority=lax_int(body.get("priority")) or 0, tool=tool, forced=forced)


def _item_id(prefix: str, request_id: str) -> str:
    return f"{prefix}_{hashlib.sha256(request_id.encode()).hexdigest()[:16]}"


class ResponsesRender:
    """One request's events and final object. `max_tokens` is the cap the engine ran with (vLLM
    echoes it as `max_output_tokens`)."""

    def __init__(self, p: GenParams, body: Json, model: str, created: int, max_tokens: int) -> None:
        self.p = p
        self.body = body
        self.model = model
        self.created = created
        self.max_tokens = max_tokens
        self.id = p.request_id if p.request_id.startswith("resp_") else f"resp_{p.request_id}"
        self.item_id = _item_id("fc" if p.tool is not None else "msg", p.request_id)
        self.call_id = synthetic.tool_call_id(p.request_id)
        self.seq = 0

    def text(self, start: int, end: int) -> str:
        if self.p.forced is not None:
            return self.p.forced[start * 4:end * 4]
        return text(start, end)

    # ---------------------------------------------------------------- objects

    def _usage(self, completion: int) -> Json:
        return {"input_tokens": self.p.prompt_tokens,
                "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0, "input_tokens_per_turn": [],
                                         "cached_tokens_per_turn": []},
                "output_tokens": completion,
                "output_tokens_details": {"reasoning_tokens": 0, "tool_output_tokens": 0,
                                          "output_tokens_per_turn": [], "tool_output_tokens_per_turn": []},
                "total_tokens": self.p.prompt_tokens + completion}

    def _item(self, body_text: str, status: str) -> Json:
        if self.p.tool is not None:
            return {"arguments": body_text, "call_id": self.call_id, "name": self.p.tool.get("name"),
                    "type": "function_call", "id": self.item_id, "namespace": None, "status": status}
        content = [self._part(body_text, None)] if body_text else []
        return {"id": self.item_id, "content": content, "role": "assistant", "status": status, "type": "message",
                "phase": None}

    @staticmethod
    def _part(body_text: str, logprobs: list[Any] | None) -> Json:
        return {"annotations": [], "text": body_text, "type": "output_text", "logprobs": logprobs}

    def response(self, output: list[Json], status: str, usage: Json | None) -> Json:
        """vLLM's ResponsesResponse.from_request: the request's settings echoed, defaults filled."""
        b = self.body
        tools = b.get("tools") or []
        choice = b.get("tool_choice", "auto")
        if not tools and choice in ("auto", "none"):
            choice = "none"  # vLLM's check_tool_usage
        temperature, top_p = lax_number(b.get("temperature")), lax_number(b.get("top_p"))
        return {
            "id": self.id, "created_at": self.created,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": b.get("instructions"), "metadata": b.get("metadata"), "model": self.model,
            "object": "response", "output": output,
            "parallel_tool_calls": b.get("parallel_tool_calls") if b.get("parallel_tool_calls") is not None else True,
            "temperature": 1.0 if temperature is None else temperature, "tool_choice": choice, "tools": tools,
            "top_p": 1.0 if top_p is None else top_p, "background": bool(b.get("background")),
            "max_output_tokens": self.max_tokens, "max_tool_calls": b.get("max_tool_calls"),
            "previous_response_id": None, "prompt": None, "prompt_cache_options": b.get("prompt_cache_options"),
            "prompt_cache_key": b.get("prompt_cache_key"), "prompt_cache_retention": b.get("prompt_cache_retention"),
            "reasoning": b.get("reasoning"), "safety_identifier": b.get("safety_identifier"),
            "service_tier": b.get("service_tier", "auto"), "status": status, "text": b.get("text"),
            "top_logprobs": None, "truncation": b.get("truncation") or "disabled", "usage": usage,
            "user": b.get("user"), "presence_penalty": lax_number(b.get("presence_penalty")) or 0.0,
            "frequency_penalty": lax_number(b.get("frequency_penalty")) or 0.0, "kv_transfer_params": None,
            "ec_transfer_params": None, "input_messages": None, "output_messages": None,
        }

    def full(self, completion: int, finish: str) -> Json:
        """The non-streaming answer."""
        status = "incomplete" if finish == "length" else "completed"
        body_text = self.text(0, completion)
        output = [self._item(body_text, status)] if body_text or self.p.tool is None else []
        return self.response(output, status, self._usage(completion))

    # ---------------------------------------------------------------- events

    def _event(self, obj: Json) -> str:
        obj["sequence_number"] = self.seq
        self.seq += 1
        return f"event: {obj['type']}\ndata: {dumps(obj)}\n\n"

    def opening(self) -> str:
        """response.created and response.in_progress, sent before any token."""
        initial = self.response([], "in_progress", None)
        return (self._event({"response": initial, "type": "response.created"})
                + self._event({"response": initial, "type": "response.in_progress"}))

    def item_open(self) -> str:
        """The output item's added events, before its first delta."""
        if self.p.tool is not None:
            added = {"item": self._item("", "in_progress"), "output_index": 0, "type": "response.output_item.added"}
            return self._event(added)
        msg = self._item("", "in_progress")
        return (self._event({"item": msg, "output_index": 0, "type": "response.output_item.added"})
                + self._event({"content_index": 0, "item_id": self.item_id, "output_index": 0,
                               "part": self._part("", []), "type": "response.content_part.added"}))

    def delta(self, start: int, end: int) -> str:
        piece = self.text(start, end)
        if self.p.tool is not None:
            return self._event({"delta": piece, "item_id": self.item_id, "output_index": 0,
                                "type": "response.function_call_arguments.delta"})
        return self._event({"content_index": 0, "delta": piece, "item_id": self.item_id, "logprobs": [],
                            "output_index": 0, "type": "response.output_text.delta"})

    def closing(self, completion: int, finish: str) -> str:
        """The item's done events (when it had output) and the terminal event with the final object."""
        status = "incomplete" if finish == "length" else "completed"
        body_text = self.text(0, completion)
        out = ""
        output: list[Json] = []
        if body_text:
            item = self._item(body_text, status)
            output.append(item)
            if self.p.tool is not None:
                out += self._event({"arguments": body_text, "item_id": self.item_id, "output_index": 0,
                                    "type": "response.function_call_arguments.done", "name": self.p.tool.get("name")})
            else:
                out += self._event({"content_index": 0, "item_id": self.item_id, "logprobs": [], "output_index": 0,
                                    "text": body_text, "type": "response.output_text.done"})
                out += self._event({"content_index": 0, "item_id": self.item_id, "output_index": 0,
                                    "part": self._part(body_text, None), "type": "response.content_part.done"})
            out += self._event({"item": item, "output_index": 0, "type": "response.output_item.done"})
        final = self.response(output, status, self._usage(completion))
        return out + self._event({"response": final, "type": f"response.{status}"})
