"""The bodies sent to vLLM: the first attempt's (the client's body, always streaming with usage) and the
continuation that resumes a preempted request on another instance from the text already streamed;
then `Resume` and `rewrite_chunk_for_client`, which make a continuation's chunks read as the same
stream the client started. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from chirond.serve.openai_errors import Json
from chirond.serve.openai_request import ParsedRequest, _is_int
from chirond.serve.openai_stream import StreamAccumulator, _dumps

# Fields that constrain decoding from the start of the output: a continuation would restart the grammar
# in the middle of the answer, so such requests cannot be resumed.
_GUIDED_FIELDS = ("guided_json", "guided_regex", "guided_choice", "guided_grammar", "structured_outputs")


def _upstream_dict(parsed: ParsedRequest, served_name: str, priority: int | None) -> Json:
    body = dict(parsed.body)
    body.pop("service_tier", None)  # vLLM ignores it; the proxy has acted on it
    body["model"] = served_name
    if parsed.passthrough:  # unstreamed, as the client sent it: vLLM cannot stream it
        if priority is not None:
            body["priority"] = priority
        return body
    body["stream"] = True
    opts = body.get("stream_options")
    opts = dict(opts) if isinstance(opts, dict) else {}
    opts["include_usage"] = True  # the proxy needs the true token counts
    if not parsed.include_usage:
        # vLLM sends continuous usage only together with include_usage; the client did not get it before.
        opts.pop("continuous_usage_stats", None)
    body["stream_options"] = opts
    if priority is not None:
        body["priority"] = priority  # honoured by `--scheduling-policy priority`; lower runs first
    return body


def upstream_body(parsed: ParsedRequest, served_name: str, priority: int | None) -> bytes:
    """The body sent to vLLM: the client's, streaming with usage, `model` = served name, `priority` when given
    (a client's own `priority` stays when None is given), `service_tier` removed."""
    return _dumps(_upstream_dict(parsed, served_name, priority))


def continuation_body(
    parsed: ParsedRequest, served_name: str, generated_text: str, generated_tokens: int, priority: int | None
) -> bytes | None:
    """The body that resumes a preempted request on another instance from the text already streamed
    (preemption by recompute: the prefix is prefilled again, the client loses nothing): completions get
    prompt + text, chat an assistant message to continue (vLLM's `continue_final_message`); the token caps
    shrink by `generated_tokens`. None when it cannot be done faithfully: token-id prompts (no token ids of
    the output), echo/prompt_logprobs (the client would see the prefix again), guided decoding (the grammar
    would restart mid-answer), a client's non-text final assistant message, or no tokens left.
    Token boundaries at the seam may differ from an uninterrupted run."""
    if not generated_text and generated_tokens <= 0:
        return upstream_body(parsed, served_name, priority)
    body = parsed.body
    if body.get("n") not in (None, 1) or body.get("echo") or body.get("prompt_logprobs") is not None:
        return None
    if any(body.get(f) is not None for f in _GUIDED_FIELDS):
        return None
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") not in (None, "text"):
        return None
    remaining = None
    if parsed.max_tokens is not None:
        remaining = parsed.max_tokens - generated_tokens
        if remaining < 1:
            return None
    up = _upstream_dict(parsed, served_name, priority)
    if parsed.endpoint == "chat":
        messages = list(body["messages"])
        last = messages[-1]
        if body.get("continue_final_message") and last.get("role") == "assistant":
            # The client already asked to continue its own assistant message: extend that message.
            if not isinstance(last.get("content"), str):
                return None
            messages[-1] = {**last, "content": last["content"] + generated_text}
        else:
            messages.append({"role": "assistant", "content": generated_text})
        up["messages"] = messages
        up["continue_final_message"] = True
        up["add_generation_prompt"] = False  # vLLM rejects it together with continue_final_message
        for key in ("max_completion_tokens", "max_tokens"):
            if body.get(key) is not None:
                up[key] = remaining
    else:
        prompt = body["prompt"]
        if isinstance(prompt, list):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            return None
        up["prompt"] = prompt + generated_text
        up["max_tokens"] = remaining  # also when the client relied on the default of 16
    min_tokens = body.get("min_tokens")
    if _is_int(min_tokens):
        up["min_tokens"] = max(0, min_tokens - generated_tokens)
    return _dumps(up)


def resume_body(parsed: ParsedRequest, acc: StreamAccumulator, served_name: str, priority: int | None) -> bytes | None:
    """`continuation_body` from what an accumulator has seen; None also while a tool call or reasoning was
    being generated (neither can be handed back to the model as plain assistant text) or after an error."""
    if acc.error is not None or acc.tool_calls or acc.reasoning:
        return None
    return continuation_body(parsed, served_name, acc.text, acc.tokens, priority)



@dataclass(slots=True)
class Resume:
    """What the client has seen of a stream before it was preempted, so that the continuation reads as the
    same stream."""

    id: str | None  # the first attempt's id and created
    created: int | None
    prompt_tokens: int | None  # the first attempt's count if it reported one; None: derive it (see below)
    prompt_estimate: int  # chirond's estimate, the last resort
    tokens_before: int  # completion tokens the client already has
    chars_before: int  # characters of text the client already has (completions logprobs text_offset)
    role_sent: bool  # the client already has the role chunk

    @classmethod
    def after(cls, acc: StreamAccumulator, parsed: ParsedRequest, previous: Resume | None = None) -> Resume | None:
        """After an attempt was cut; None when the client saw nothing (the retry is then a fresh stream).
        `acc` must have been fed the client's view of every attempt so far (see chirond.serve.openai_api)."""
        if acc.chunks == 0 and previous is None:
            return None
        prompt = previous.prompt_tokens if previous is not None else None
        if prompt is None and acc.usage is not None and _is_int(acc.usage.get("prompt_tokens")):
            prompt = acc.usage["prompt_tokens"]  # continuous usage stats
        return cls(acc.id, acc.created, prompt, parsed.input_tokens, acc.tokens, len(acc.text), acc.role is not None)


def rewrite_chunk_for_client(payload: bytes, chunk: Json, resume: Resume) -> bytes | None:
    """A continuation's chunk as the client must see it, or None to drop it; call it only on resumed
    attempts (the first attempt's chunks pass through as they came, unparsed twice and unserialized).
    Edits `chunk` in place, so the accumulator fed afterwards sees the client's view (one id, the usage
    of the whole answer). Rewrites: the first attempt's id/created; the continuation's role chunk dropped;
    completions logprobs text_offset shifted past the earlier text; usage counts all attempts:
    completion = tokens before + tokens now, prompt = the first attempt's count or else the continuation's
    prompt less the tokens before (the real tokenizer's count; chirond's estimate only if that is not
    positive), so that total_tokens stays what the server processed."""
    if "error" in chunk:
        return payload
    if resume.id is not None:
        chunk["id"] = resume.id
    if resume.created is not None:
        chunk["created"] = resume.created
    choices = chunk.get("choices")
    if choices:
        choice = choices[0]
        delta = choice.get("delta")
        if resume.role_sent and isinstance(delta, dict) and "role" in delta:
            del delta["role"]
            if not any(delta.values()) and choice.get("finish_reason") is None and not choice.get("logprobs"):
                return None
        lp = choice.get("logprobs")
        if resume.chars_before and isinstance(lp, dict) and lp.get("text_offset"):
            lp["text_offset"] = [o + resume.chars_before for o in lp["text_offset"]]
    usage = chunk.get("usage")
    if isinstance(usage, dict):
        completion = int(usage.get("completion_tokens") or 0) + resume.tokens_before
        prompt = resume.prompt_tokens
        if prompt is None:
            prompt = int(usage.get("prompt_tokens") or 0) - resume.tokens_before
        usage["prompt_tokens"] = prompt = prompt if prompt > 0 else resume.prompt_estimate
        usage["completion_tokens"] = completion
        usage["total_tokens"] = prompt + completion
    return _dumps(chunk)
