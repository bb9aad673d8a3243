"""Deterministic synthetic output of the right shape for what a real model would decide: a tool
call (`tools`), JSON that matches a `response_format` schema, and log-probabilities
(`logprobs`/`top_logprobs`). Nothing here is a language model: the values are fixed functions of
the request, so dry runs and tests exercise clients' parsing paths and see the same answer twice.
Pure."""

from __future__ import annotations

import hashlib
import json
from typing import Any

Json = dict[str, Any]
TOP_LOGPROB_WORDS = ("the", "a", "an", "of", "to", "in", "and", "is", "it", "on", "for", "as", "at", "by", "or",
                     "be", "we", "he", "so", "if")


def pick_tool(tools: object, tool_choice: object) -> Json | None:
    """The function a tool-calling model would call: the named one, else the first; None when the
    request has no tools or says `tool_choice: "none"`."""
    if not isinstance(tools, list) or not tools or tool_choice == "none":
        return None
    funcs = [t["function"] for t in tools if isinstance(t, dict) and isinstance(t.get("function"), dict)]
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name")
        funcs = [f for f in funcs if f.get("name") == name] or funcs
    return funcs[0] if funcs else None


def example(schema: object, depth: int = 0) -> Any:
    """A value that validates against a JSON schema's common parts (type, enum, const, properties,
    items, anyOf/oneOf): required properties filled, optional ones left out."""
    if not isinstance(schema, dict) or depth > 8:
        return None
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return example(schema[key][0], depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        props: dict[str, Any] = schema["properties"] if isinstance(schema.get("properties"), dict) else {}
        required: list[Any] = schema["required"] if isinstance(schema.get("required"), list) else list(props)
        return {k: example(props.get(k, {}), depth + 1) for k in required if isinstance(k, str)}
    if kind == "array":
        n = max(0, int(schema.get("minItems", 1) or 0))
        return [example(schema.get("items", {}), depth + 1) for _ in range(min(n, 3))]
    if kind == "string":
        return "x" * max(int(schema.get("minLength", 0) or 0), 4)
    if kind == "integer":
        return int(schema.get("minimum", 1))
    if kind == "number":
        return float(schema.get("minimum", 1.0))
    if kind == "boolean":
        return True
    return None


def structured_text(response_format: object) -> str | None:
    """The answer text a `response_format` forces: JSON matching its schema ("json_schema"), an
    object ("json_object"); None for "text" or none."""
    if not isinstance(response_format, dict):
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return json.dumps({"answer": "data"})
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return json.dumps(example(schema if schema is not None else {"type": "object"}))
    return None


def tool_call_id(request_id: str) -> str:
    return "chatcmpl-tool-" + hashlib.sha256(request_id.encode()).hexdigest()[:32]


def tokens_of(text: str) -> list[str]:
    """The synthetic tokens of a text: fake-vllm's 4-character words (the last may be shorter)."""
    return [text[i:i + 4] for i in range(0, len(text), 4)]


def _lp(rank: int) -> float:
    return round(-0.05 - 0.75 * rank, 4)


def chat_logprobs(text: str, top: int) -> Json:
    """vLLM's ChatCompletionLogProbs for `text`: each token with logprob and bytes, and `top` alternatives."""
    content = []
    for tok in tokens_of(text):
        alts = [{"token": tok, "logprob": _lp(0), "bytes": list(tok.encode())}]
        alts += [{"token": w, "logprob": _lp(i + 1), "bytes": list(w.encode())} for i, w in
                 enumerate(x for x in TOP_LOGPROB_WORDS if x != tok)][: max(0, top - 1)]
        content.append({"token": tok, "logprob": _lp(0), "bytes": list(tok.encode()), "top_logprobs": alts[:top]})
    return {"content": content}


def completion_logprobs(text: str, top: int, offset: int = 0) -> Json:
    """vLLM's CompletionLogProbs for `text` starting at character `offset` of the answer."""
    toks = tokens_of(text)
    offsets, pos = [], offset
    for t in toks:
        offsets.append(pos)
        pos += len(t)
    tops = []
    for t in toks:
        alts = {t: _lp(0)}
        for i, w in enumerate(x for x in TOP_LOGPROB_WORDS if x != t):
            if len(alts) >= top:
                break
            alts[w] = _lp(i + 1)
        tops.append(alts if top > 0 else None)
    return {"text_offset": offsets, "token_logprobs": [_lp(0)] * len(toks), "tokens": toks, "top_logprobs": tops}
