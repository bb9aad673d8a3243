"""fake-vllm as an embedding model (`--runner pooling`): /v1/embeddings requests checked as vLLM
0.33's EmbeddingRequest checks them, and answers in its EmbeddingResponse shape, with synthetic
vectors. Pure.

A vector is a fixed function of its input (the same text gives the same vector), unit length as
vLLM's default activation makes it, `embedding_size` long (the model's hidden size in vLLM), or
`dimensions` long: the simulated model takes `dimensions` as a Matryoshka model does (vLLM
refuses it for other models); it keeps the first values and normalises again."""

from __future__ import annotations

import base64
import hashlib
import struct
import time
from dataclasses import dataclass

import numpy as np

from chirond.fakevllm.protocol import ApiError, context_error, dumps, usage
from chirond.tokens import count_messages, count_prompt

# vLLM's EncodingFormat; "bytes"/"bytes_only" answer a binary stream, which the simulated server lacks.
ENCODING_FORMATS = ("float", "base64")
_DTYPES = {"float32": "f", "float16": "e"}  # vLLM's embed_dtype values the simulated server packs
_ENDIAN = {"native": "=", "little": "<", "big": ">"}


@dataclass(slots=True)
class EmbedParams:
    """A validated embeddings request: each input's key (what its vector derives from) and tokens."""

    request_id: str
    keys: list[bytes]
    tokens: list[int]
    encoding_format: str
    dimensions: int | None
    embed_dtype: str
    endianness: str
    priority: int


def _bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param)


def _inputs(body: dict[str, object]) -> list[object]:
    """The items to embed: one per string or token-id array; one per conversation."""
    messages = body.get("messages")
    value = body.get("input")
    if messages is None and isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        messages = value  # a conversation given as `input`, as vLLM takes it
    if messages is not None:
        if not isinstance(messages, list) or not messages:
            raise _bad("messages: Input should be a non-empty list of messages", "messages")
        convs = messages if isinstance(messages[0], list) else [messages]
        for conv in convs:
            if not isinstance(conv, list) or not conv or not all(
                    isinstance(m, dict) and isinstance(m.get("role"), str) for m in conv):
                raise _bad("messages: every message must be an object with a string 'role'", "messages")
        return [{"messages": c} for c in convs]
    if value is None:
        raise _bad("input: Field required", "input")
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) or (isinstance(v, list) and all(
            isinstance(t, int) and not isinstance(t, bool) for t in v)) for v in value):
        return list(value)
    raise _bad("input: Input should be a valid string, a list of strings, or a list of token ids", "input")


def _tokens(item: object) -> int:
    if isinstance(item, dict):
        return count_messages(item["messages"])
    return count_prompt(item if isinstance(item, str) else [item])


def parse_embed(body: object, *, served_model: str, max_model_len: int, embedding_size: int,
                header_request_id: str | None, default_request_id: str) -> EmbedParams:
    if not isinstance(body, dict):
        raise _bad("Input should be a valid dictionary or object to extract fields from")
    model = body.get("model")
    if model is not None and model != served_model:
        raise ApiError(404, f"The model `{model}` does not exist.", "model")
    items = _inputs(body)
    tokens = [_tokens(i) for i in items]
    cut = body.get("truncate_prompt_tokens")
    if cut is not None:  # vLLM keeps that many tokens of each input (-1: the context length)
        if isinstance(cut, bool) or not isinstance(cut, int) or cut < -1:
            raise _bad(f"truncate_prompt_tokens: Input should be an integer >= -1, got {cut!r}",
                       "truncate_prompt_tokens")
        tokens = [min(n, max_model_len if cut == -1 else cut) for n in tokens]
    for n in tokens:
        if n > max_model_len:
            raise context_error(max_model_len, n)
    fmt = body.get("encoding_format", "float")
    if fmt not in ENCODING_FORMATS:
        raise _bad(f"encoding_format: this simulated server answers {' or '.join(ENCODING_FORMATS)}, got {fmt!r}",
                   "encoding_format")
    dtype = body.get("embed_dtype", "float32")
    if dtype not in _DTYPES:
        raise _bad(f"embed_dtype: this simulated server packs {' or '.join(_DTYPES)}, got {dtype!r}", "embed_dtype")
    endian = body.get("endianness", "native")
    if endian not in _ENDIAN:
        raise _bad(f"endianness: Input should be 'native', 'big' or 'little', got {endian!r}", "endianness")
    dims = body.get("dimensions")
    if dims is not None:
        if isinstance(dims, bool) or not isinstance(dims, int):
            raise _bad(f"dimensions: Input should be a valid integer, got {dims!r}", "dimensions")
        if not 1 <= dims <= embedding_size:  # vLLM's words (PoolingParams)
            raise _bad(f"Model {served_model!r} only supports dimensions in range [1, {embedding_size}], got {dims}.")
    priority = body.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise _bad(f"priority: Input should be a valid integer, got {priority!r}", "priority")
    rid = body.get("request_id")
    if rid is not None and not isinstance(rid, str):
        raise _bad("request_id: Input should be a valid string", "request_id")
    return EmbedParams(request_id=header_request_id or rid or default_request_id,
                       keys=[dumps(i).encode() for i in items], tokens=tokens, encoding_format=str(fmt),
                       dimensions=dims, embed_dtype=str(dtype), endianness=str(endian), priority=priority)


def vector(key: bytes, size: int) -> np.ndarray:
    """A unit vector of `size` values, a fixed function of `key`."""
    seed = int.from_bytes(hashlib.sha256(key).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(size)
    return v / np.linalg.norm(v)


def _encode(v: np.ndarray, p: EmbedParams) -> list[float] | str:
    if p.encoding_format == "float":
        return [float(x) for x in v]
    packed = struct.pack(f"{_ENDIAN[p.endianness]}{len(v)}{_DTYPES[p.embed_dtype]}", *v.tolist())
    return base64.b64encode(packed).decode()


def embed_response(p: EmbedParams, model: str, embedding_size: int) -> dict[str, object]:
    """vLLM's EmbeddingResponse for the request."""
    data = []
    for i, key in enumerate(p.keys):
        v = vector(key, embedding_size)
        if p.dimensions is not None:
            v = v[: p.dimensions] / np.linalg.norm(v[: p.dimensions])
        data.append({"index": i, "object": "embedding", "embedding": _encode(v, p)})
    prompt = sum(p.tokens)
    u: dict[str, object] = {**usage(prompt, 0), "prompt_tokens_details": None}
    return {"id": f"embd-{p.request_id}", "object": "list", "created": int(time.time()), "model": model,
            "data": data, "usage": u}
