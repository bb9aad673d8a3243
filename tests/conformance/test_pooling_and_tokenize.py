"""Embeddings and tokenizing, judged by vLLM 0.33's own models: fake-vllm's answers (an embedding
model under `--runner pooling`, /tokenize and /detokenize on both kinds) validate against vLLM's
response models with no key vLLM's model lacks; chirond's checks of /v1/embeddings, /tokenize and
/detokenize bodies give vLLM's verdict (accepted, or 400 naming the same parameter) but for the
differences listed with why."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from chirond.fakevllm import FakeVllm
from chirond.serve.embeddings import parse_embeddings
from chirond.serve.openai_errors import ApiError
from chirond.serve.tokenize_api import check_tokenize
from tests.support.verdicts import differences

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / "profiles" / "llama-3.1-8b_a100-80gb_tp1.toml"
SIZE = 64
MSGS = [{"role": "user", "content": "Say hello"}]


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[FakeVllm, FakeVllm]]:
    gen = FakeVllm(PROFILE, "llama-8b", speedup=50, max_model_len=4096)
    emb = FakeVllm(PROFILE, "e5", speedup=50, max_model_len=4096, runner="pooling", embedding_size=SIZE)
    for s in (gen, emb):
        await s.start("127.0.0.1", 0, startup_s=0.0)
    try:
        yield gen, emb
    finally:
        for s in (gen, emb):
            await s.stop()


async def _answers(gen: FakeVllm, emb: FakeVllm) -> list[dict[str, Any]]:
    ok: list[tuple[str, FakeVllm, str, str, dict[str, Any]]] = [
        ("embed-float", emb, "/v1/embeddings", "embedding", {"model": "e5", "input": "hello"}),
        ("embed-batch", emb, "/v1/embeddings", "embedding", {"input": ["a", "bb", "ccc"], "encoding_format": "float"}),
        ("embed-base64", emb, "/v1/embeddings", "embedding", {"input": "hello", "encoding_format": "base64"}),
        ("embed-dims", emb, "/v1/embeddings", "embedding", {"input": [[1, 2], [3]], "dimensions": 8}),
        ("embed-chat", emb, "/v1/embeddings", "embedding", {"messages": MSGS}),
        ("embed-truncated", emb, "/v1/embeddings", "embedding", {"input": "x" * 100, "truncate_prompt_tokens": 5}),
        ("tokenize", gen, "/tokenize", "tokenize", {"model": "llama-8b", "prompt": "hello world"}),
        ("tokenize-strs", gen, "/tokenize", "tokenize", {"prompt": "hello world", "return_token_strs": True}),
        ("tokenize-chat", emb, "/tokenize", "tokenize", {"messages": MSGS}),
        ("detokenize", gen, "/detokenize", "detokenize", {"tokens": [1, 2, 3]}),
    ]
    bad: list[tuple[str, FakeVllm, str, Any]] = [
        ("embed-no-input", emb, "/v1/embeddings", {"model": "e5"}),
        ("embed-bad-input", emb, "/v1/embeddings", {"input": 5}),
        ("embed-dims-range", emb, "/v1/embeddings", {"input": "x", "dimensions": SIZE + 1}),
        ("embed-other-model", emb, "/v1/embeddings", {"model": "nope", "input": "x"}),
        ("embed-context", emb, "/v1/embeddings", {"input": "x" * 40000}),
        ("tokenize-no-prompt", gen, "/tokenize", {}),
        ("detokenize-bad", gen, "/detokenize", {"tokens": ["a"]}),
    ]
    out: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as h:
        for label, s, path, kind, body in ok:
            async with h.post(s.url + path, json=body) as r:
                assert r.status == 200, (label, await r.text())
                out.append({"label": label, "kind": kind, "body": await r.json()})
        for label, s, path, body in bad:
            async with h.post(s.url + path, json=body) as r:
                got = await r.json()
                assert r.status >= 400 and got["error"]["code"] == r.status, label
                out.append({"label": f"error-{label}", "kind": "error", "body": got})
    return out


async def test_answers_validate_against_vllms_models(fakes: tuple[FakeVllm, FakeVllm],
                                                     probe: Callable[..., Any]) -> None:
    answers = await _answers(*fakes)
    problems = probe("response_models", answers)
    assert set(problems) == {a["label"] for a in answers}
    assert {label: p for label, p in problems.items() if p} == {}
    by = {a["label"]: a["body"] for a in answers}
    # Shapes vLLM's models cannot see: a vector per input, of the model's size or `dimensions`,
    # base64 as little-endian float32 (vLLM's default embed_dtype and the openai client's reading).
    assert [len(d["embedding"]) for d in by["embed-batch"]["data"]] == [SIZE] * 3
    assert [len(d["embedding"]) for d in by["embed-dims"]["data"]] == [8, 8]
    raw = base64.b64decode(by["embed-base64"]["data"][0]["embedding"])
    assert len(raw) == 4 * SIZE
    assert by["embed-float"]["usage"]["prompt_tokens"] > 0 and by["embed-float"]["usage"]["completion_tokens"] == 0
    assert by["embed-truncated"]["usage"]["prompt_tokens"] == 5
    tok = by["tokenize-strs"]
    assert tok["count"] == len(tok["tokens"]) == len(tok["token_strs"])


async def test_each_kind_serves_only_its_routes(fakes: tuple[FakeVllm, FakeVllm]) -> None:
    """As vLLM registers them (register_api_routers): generation routes need the generate runner,
    /v1/embeddings the pooling runner; elsewhere FastAPI's 404."""
    gen, emb = fakes
    async with aiohttp.ClientSession() as h:
        for s, path, body in ((emb, "/v1/chat/completions", {"messages": MSGS}), (emb, "/v1/completions",
                              {"prompt": "x"}), (gen, "/v1/embeddings", {"input": "x"})):
            async with h.post(s.url + path, json=body) as r:
                assert (r.status, await r.json()) == (404, {"detail": "Not Found"}), path


EMBED: dict[str, Any] = {
    "plain": {"model": "e5", "input": "hi"},
    "list": {"model": "e5", "input": ["a", "b"]},
    "ids": {"model": "e5", "input": [1, 2]},
    "id-lists": {"model": "e5", "input": [[1, 2], [3]]},
    "chat-input": {"model": "e5", "input": MSGS},
    "messages": {"model": "e5", "messages": MSGS},
    "base64": {"model": "e5", "input": "hi", "encoding_format": "base64"},
    "dims": {"model": "e5", "input": "hi", "dimensions": 8},
    "extra-field": {"model": "e5", "input": "hi", "frobnicate": 1},
    "no-input": {"model": "e5"},
    "input-number": {"model": "e5", "input": 5},
    "input-mixed": {"model": "e5", "input": [1, "a"]},
    "format-other": {"model": "e5", "input": "hi", "encoding_format": "hex"},
    "format-bytes": {"model": "e5", "input": "hi", "encoding_format": "bytes"},
    "no-model": {"input": "hi"},
    "dims-zero": {"model": "e5", "input": "hi", "dimensions": 0},
}
TOKENIZE: dict[str, Any] = {
    "plain": {"model": "m", "prompt": "hi"},
    "chat": {"model": "m", "messages": MSGS},
    "no-prompt": {"model": "m"},
    "prompt-number": {"model": "m", "prompt": 5},
    "no-model": {"prompt": "hi"},
}
DETOKENIZE: dict[str, Any] = {
    "plain": {"model": "m", "tokens": [1, 2]},
    "negative": {"model": "m", "tokens": [-1]},
    "strings": {"model": "m", "tokens": ["a"]},
    "no-tokens": {"model": "m"},
    "no-model": {"tokens": [1]},
}
# (kind, label) -> why chirond differs; verdicts as in test_request_verdicts.
DIFFERENCES: dict[tuple[str, str], str] = {
    ("embed", "format-bytes"): "chirond relays JSON answers; vLLM's bytes formats answer a binary stream",
    ("embed", "no-model"): "chirond serves several models and routes on the name; vLLM falls back to its only one",
    ("embed", "dims-zero"): "both 400; vLLM's model takes 0 and its pooling parameters refuse it later (no param)",
    ("tokenize", "no-model"): "chirond routes on the name, as above",
    ("detokenize", "no-model"): "chirond routes on the name, as above",
}


def chirond_verdict(kind: str, body: dict[str, Any]) -> str:
    try:
        if kind == "embed":
            parse_embeddings(json.dumps(body).encode(), "application/json", 1 << 20)
        else:
            check_tokenize(f"/{kind}", body)
    except ApiError as e:
        return f"400:{e.param}"
    return "ok"


def test_same_verdict_as_vllm(probe: Callable[..., Any]) -> None:
    corpus = ([("embed", k, v) for k, v in EMBED.items()] + [("tokenize", k, v) for k, v in TOKENIZE.items()]
              + [("detokenize", k, v) for k, v in DETOKENIZE.items()])
    theirs = probe("pooling_verdicts", [{"label": f"{k}:{label}", "kind": k, "body": b} for k, label, b in corpus])
    found = differences(corpus, theirs, chirond_verdict)
    assert sorted(found) == sorted(DIFFERENCES), "\n".join(f"{k}: {v}" for k, v in sorted(found.items()))
