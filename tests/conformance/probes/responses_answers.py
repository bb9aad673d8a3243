"""fake-vllm's /v1/responses answers against what vLLM 0.33's own code builds from the same request
and the same generated text. Payload: [{"label", "body" (the request), "max_model_len", "stream",
"answer" (the response object, non-streaming) or "events" (the event objects, in order)}]. Answers
{label: [problems]}.

vLLM's side: ResponsesRequest validates the body; to_sampling_params gives the echoed settings
(the cap is what the context leaves after fake-vllm's prompt count); ResponsesResponse.from_request
builds the object; a stream's item events come from vLLM's SimpleStreamingState emitters fed the
deltas fake-vllm sent, its output items from the non-streaming builders. Ids and times are random
on both sides and compared by shape only; a null field counts as absent. Every event must also
validate against the openai SDK's (vLLM's) event models, and a final object carry no key
ResponsesResponse does not declare."""

from __future__ import annotations

import json
import warnings
from typing import Any

from vllm_cli import answer, extras, read_payload

warnings.simplefilter("ignore")

from openai.types.responses import ResponseStreamEvent  # noqa: E402
from pydantic import BaseModel, TypeAdapter, ValidationError  # noqa: E402
from vllm.entrypoints.generate.base.protocol import FunctionCall  # noqa: E402
from vllm.entrypoints.openai.responses.protocol import (  # noqa: E402
    ResponseCompletedEvent,
    ResponseCreatedEvent,
    ResponseIncompleteEvent,
    ResponseInProgressEvent,
    ResponsesRequest,
    ResponsesResponse,
    ResponseUsage,
)
from vllm.entrypoints.openai.responses.streaming_events import (  # noqa: E402
    SimpleStreamingState,
    emit_simple_content_delta,
    emit_simple_content_done,
    emit_simple_content_open,
    emit_simple_tool_call_delta,
    emit_simple_tool_call_done,
    emit_simple_tool_call_open,
)
from vllm.entrypoints.openai.responses.utils import build_response_output_items  # noqa: E402

VLLM_EVENTS: dict[str, type[BaseModel]] = {
    "response.created": ResponseCreatedEvent, "response.in_progress": ResponseInProgressEvent,
    "response.completed": ResponseCompletedEvent, "response.incomplete": ResponseIncompleteEvent,
}
ANY_EVENT: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
RANDOM = ("id", "item_id", "call_id", "created_at")


def shape(obj: Any) -> Any:
    """Nulls dropped, random ids and times replaced by their kind."""
    if isinstance(obj, dict):
        return {k: (f"<{k}>" if k in RANDOM and v is not None else shape(v)) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [shape(x) for x in obj]
    return obj


def diff(ours: Any, theirs: Any, path: str = "") -> list[str]:
    a, b = shape(ours), shape(theirs)
    if a == b:
        return []
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}.{k}: fake-vllm {a.get(k)!r:.120}, vLLM {b.get(k)!r:.120}" for k in sorted(set(a) | set(b))
               if k not in a or k not in b]
        for k in sorted(set(a) & set(b)):
            out += diff(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [p for i, (x, y) in enumerate(zip(a, b, strict=True)) for p in diff(x, y, f"{path}[{i}]")]
    return [f"{path}: fake-vllm {a!r:.200}, vLLM {b!r:.200}"]


def dump(model: BaseModel) -> Any:
    return json.loads(model.model_dump_json(by_alias=True))


def expected_response(req: ResponsesRequest, got: Any, max_model_len: int, output: list[Any], status: str) -> Any:
    usage = got["usage"]
    sp = req.to_sampling_params(max_model_len - usage["input_tokens"], {})
    return dump(ResponsesResponse.from_request(req, sp, model_name=got["model"], created_time=0, output=output,
                                               status=status, usage=ResponseUsage.model_validate(usage)))


def check_answer(item: dict[str, Any]) -> list[str]:
    got = item["answer"]
    try:
        undeclared = extras(ResponsesResponse.model_validate(got), "answer")
    except ValidationError as e:
        return [f"answer: {err['loc']}: {err['msg']}" for err in e.errors()]
    if undeclared:
        return undeclared
    req = ResponsesRequest.model_validate(item["body"])
    status = got["status"]
    finish = "length" if status == "incomplete" else "stop"
    calls = [o for o in got["output"] if o.get("type") == "function_call"]
    if calls:
        output = build_response_output_items(None, None, [FunctionCall(name=c["name"], arguments=c["arguments"])
                                                          for c in calls], tools=req.tools, finish_reason=finish)
    else:
        texts = [p["text"] for o in got["output"] for p in o.get("content", [])]
        output = build_response_output_items(None, "".join(texts), None, finish_reason=finish)
        if not texts:  # vLLM's fallback without a parser: one empty message
            output = got["output"]
    return diff(got, expected_response(req, got, item["max_model_len"], output, status), "answer")


def check_events(item: dict[str, Any]) -> list[str]:
    events = item["events"]
    problems: list[str] = []
    for i, ev in enumerate(events):
        try:
            model = VLLM_EVENTS.get(ev.get("type"))
            # Undeclared keys are left to the comparison below: vLLM itself sends one (`name` on
            # response.function_call_arguments.done).
            model.model_validate(ev) if model else ANY_EVENT.validate_python(ev)
        except ValidationError as e:
            problems += [f"events[{i}] {ev.get('type')}: {err['loc']}: {err['msg']}" for err in e.errors()[:3]]
    if problems:
        return problems
    req = ResponsesRequest.model_validate(item["body"])
    final = events[-1]["response"]
    status = final["status"]
    st = SimpleStreamingState()
    deltas = [ev for ev in events if ev["type"].endswith(".delta")]
    expected: list[Any] = []
    tool = deltas and deltas[0]["type"] == "response.function_call_arguments.delta"
    if deltas:
        if tool:
            added = next(ev for ev in events if ev["type"] == "response.output_item.added")["item"]
            expected += emit_simple_tool_call_open(st, added["name"], 0, None, False, added["call_id"])
            for d in deltas:
                expected += emit_simple_tool_call_delta(st, d["delta"])
            expected += emit_simple_tool_call_done(st, status)
        else:
            expected += emit_simple_content_open(st)
            for d in deltas:
                expected += emit_simple_content_delta(st, d["delta"])
            expected += emit_simple_content_done(st, status)
    items = [e.item for e in expected if e.type == "response.output_item.done"]
    initial = expected_response(req, final, item["max_model_len"], [], "in_progress")
    initial["usage"] = None
    want = [{"type": "response.created", "response": initial}, {"type": "response.in_progress", "response": initial}]
    want += [dump(e) for e in expected]
    want.append({"type": f"response.{status}",
                 "response": expected_response(req, final, item["max_model_len"], items, status)})
    for n, ev in enumerate(want):
        ev["sequence_number"] = n
    if [e["type"] for e in events] != [e["type"] for e in want]:
        return [f"event types: fake-vllm {[e['type'] for e in events]}, vLLM {[e['type'] for e in want]}"]
    return diff(events, want, "events")


answer({item["label"]: (check_events(item) if item["stream"] else check_answer(item)) for item in read_payload()})
