"""OpenAI request and response bodies as the proxy needs them, one import (`from chirond.serve import
openai_api as oa`) over four pure modules (no I/O, no clock): openai_errors (ApiError), openai_request
(request validation, request class), openai_stream (SSE parser and framing, accumulator, non-streaming
assembly) and openai_upstream (the body sent to vLLM, continuation after preemption, resumed-stream rewrite).

The proxy always streams from vLLM, whatever the client asked: first-token time is what it schedules on,
a stream can be resumed on another instance after preemption, and a non-streaming answer is assembled
from the chunks (openai_stream). Relay loop for one attempt (`resume` is None on the first attempt):

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

from chirond.serve.openai_errors import ApiError, Json
from chirond.serve.openai_request import (
    BATCH_HEADER_VALUES,
    COMPLETIONS_DEFAULT_MAX_TOKENS,
    ENDPOINTS,
    ROLES,
    SERVICE_TIERS,
    ParsedRequest,
    parse_request,
    request_class,
)
from chirond.serve.openai_stream import (
    DONE,
    SSE_DONE,
    SseParser,
    StreamAccumulator,
    assemble_response,
    error_event,
    is_usage_only,
    parse_chunk,
    sse_event,
    sse_frame,
)
from chirond.serve.openai_upstream import (
    Resume,
    continuation_body,
    resume_body,
    rewrite_chunk_for_client,
    upstream_body,
)

__all__ = [
    "BATCH_HEADER_VALUES",
    "COMPLETIONS_DEFAULT_MAX_TOKENS",
    "DONE",
    "ENDPOINTS",
    "ROLES",
    "SERVICE_TIERS",
    "SSE_DONE",
    "ApiError",
    "Json",
    "ParsedRequest",
    "Resume",
    "SseParser",
    "StreamAccumulator",
    "assemble_response",
    "continuation_body",
    "error_event",
    "is_usage_only",
    "parse_chunk",
    "parse_request",
    "request_class",
    "resume_body",
    "rewrite_chunk_for_client",
    "sse_event",
    "sse_frame",
    "upstream_body",
]
