"""/v1/embeddings, /tokenize and /detokenize through chirond to fake-vllm engines, with the real
`openai` client: an embedding model (`task = "embed"`, fake-vllm `--runner pooling`) next to a
generative one, each refusing the other's endpoint; chirond's keys, quotas and usage on the way."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from chirond.daemon import Daemon
from chirond.tokens import count_text
from tests.support.config import EMBED_MODEL, make_config, with_embedding_model
from tests.support.daemon import running, wait_batch

CHAT_MODEL = "llama-8b"
QUOTA = 40


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    cfg = with_embedding_model(make_config(tmp_path, api__auth="keys",
                                           users__overrides={"bob": {"tokens_per_day": QUOTA}}))
    async with running(cfg) as d:
        yield d


def _client(d: Daemon, user: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{d.port}/v1", api_key=d.users.mint(user), max_retries=0,
                              timeout=60)


def _norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


async def test_embeddings_with_the_openai_client(daemon: Daemon) -> None:
    d = daemon
    c = _client(d, "alice")
    try:
        r = await c.embeddings.create(model=EMBED_MODEL, input="hello world", encoding_format="float")
        (item,) = r.data
        assert len(item.embedding) == 4096 and _norm(item.embedding) == pytest.approx(1.0)
        assert r.model == EMBED_MODEL and r.usage.prompt_tokens == r.usage.total_tokens == count_text("hello world")
        # The client's default is base64 (it decodes it): the same vector, as float32.
        r2 = await c.embeddings.create(model=EMBED_MODEL, input=["hello world", "something else"])
        assert [x.index for x in r2.data] == [0, 1]
        assert r2.data[0].embedding == pytest.approx(item.embedding, rel=1e-5, abs=1e-6)
        assert r2.data[1].embedding != pytest.approx(item.embedding, rel=1e-2)
        assert r2.usage.prompt_tokens == count_text("hello world") + count_text("something else")
        r3 = await c.embeddings.create(model=EMBED_MODEL, input=[[1, 2, 3, 4, 5]], dimensions=256,
                                       extra_body={"truncate_prompt_tokens": 2})
        assert len(r3.data[0].embedding) == 256 and _norm(r3.data[0].embedding) == pytest.approx(1.0, rel=1e-5)
        assert r3.usage.prompt_tokens == 2  # the engine's count (it truncated), not chirond's estimate of 5

        # Each model refuses the other's endpoint, naming the model.
        with pytest.raises(openai.BadRequestError, match="embedding model") as e:
            await c.chat.completions.create(model=EMBED_MODEL, messages=[{"role": "user", "content": "hi"}])
        assert e.value.body["param"] == "model"  # type: ignore[index]
        with pytest.raises(openai.BadRequestError, match="embedding model"):
            await c.completions.create(model=EMBED_MODEL, prompt="hi")
        with pytest.raises(openai.BadRequestError, match="generative model") as e:
            await c.embeddings.create(model=CHAT_MODEL, input="hi")
        assert e.value.body["param"] == "model"  # type: ignore[index]
        with pytest.raises(openai.BadRequestError) as e:
            await c.embeddings.create(model=EMBED_MODEL, input="hi", dimensions=0)
        assert e.value.body["param"] == "dimensions"  # type: ignore[index]
        with pytest.raises(openai.BadRequestError, match="encoding_format"):
            await c.embeddings.create(model=EMBED_MODEL, input="hi", extra_body={"encoding_format": "bytes"})
        with pytest.raises(openai.NotFoundError):
            await c.embeddings.create(model="no-such-model", input="hi")

        models = {m.id: m.model_dump() for m in (await c.models.list()).data}
        assert models[EMBED_MODEL]["task"] == "embed" and models[CHAT_MODEL]["task"] == "generate"
        assert models[EMBED_MODEL]["state"] == "live"
        # Usage: the engine's prompt token counts (r3's truncated one too), no output tokens.
        (row,) = [u for u in d.users.usage("alice") if u["model"] == EMBED_MODEL]
        assert row["requests"] == 3 and row["tokens_out"] == 0
        assert row["tokens_in"] == r.usage.prompt_tokens + r2.usage.prompt_tokens + r3.usage.prompt_tokens
    finally:
        await c.close()


async def test_embeddings_count_against_the_token_quota(daemon: Daemon) -> None:
    bob = _client(daemon, "bob")
    text = "x" * (4 * QUOTA)  # QUOTA tokens: the first request reaches the quota, the next is refused
    try:
        await bob.embeddings.create(model=EMBED_MODEL, input=text, encoding_format="float")
        with pytest.raises(openai.RateLimitError, match="tokens_per_day"):
            await bob.embeddings.create(model=EMBED_MODEL, input="more", encoding_format="float")
    finally:
        await bob.close()


async def test_tokenize_and_detokenize_need_chirond_key(daemon: Daemon) -> None:
    d = daemon
    base = f"http://127.0.0.1:{d.port}"
    auth = {"Authorization": f"Bearer {d.users.mint('alice')}"}
    async with aiohttp.ClientSession() as h:
        async def post(path: str, body: Any, headers: dict[str, str] | None = None, url: str = base) -> Any:
            async with h.post(url + path, json=body, headers=headers or {}) as r:
                return r.status, await r.json(content_type=None)

        status, _ = await post("/tokenize", {"model": CHAT_MODEL, "prompt": "hello world"})
        assert status == 401
        status, tok = await post("/tokenize", {"model": CHAT_MODEL, "prompt": "hello world",
                                               "return_token_strs": True}, auth)
        assert status == 200 and tok["count"] == len(tok["tokens"]) == count_text("hello world")
        assert "".join(tok["token_strs"]) == "hello world"
        status, de = await post("/detokenize", {"model": CHAT_MODEL, "tokens": tok["tokens"]}, auth)
        assert status == 200 and isinstance(de["prompt"], str) and de["prompt"]
        status, tok2 = await post("/tokenize", {"model": EMBED_MODEL, "messages": [{"role": "user", "content": "hi"}]},
                                  auth)
        assert status == 200 and tok2["count"] > 0  # an embedding model tokenizes too
        for body, param in (({"prompt": "x"}, "model"), ({"model": CHAT_MODEL}, "prompt"),
                            ({"model": CHAT_MODEL, "prompt": 5}, "prompt")):
            status, err = await post("/tokenize", body, auth)
            assert (status, err["error"]["param"]) == (400, param), body
        status, err = await post("/detokenize", {"model": CHAT_MODEL, "tokens": ["a"]}, auth)
        assert (status, err["error"]["param"]) == (400, "tokens")
        status, err = await post("/tokenize", {"model": "nope", "prompt": "x"}, auth)
        assert (status, err["error"]["code"]) == (404, "model_not_found")

        # No way around chirond: the engine's own /tokenize wants the engine key.
        inst = next(i for i in d.instances.values() if i.model == CHAT_MODEL and i.ready_at is not None)
        url = d.fleet.instance_url(inst.id)
        assert url is not None
        status, _ = await post("/tokenize", {"prompt": "x"}, url=url)
        assert status == 401
        status, _ = await post("/tokenize", {"prompt": "x"}, auth, url=url)  # a user's key is not the engine's
        assert status == 401


async def test_tokenize_on_a_model_with_no_instance_says_so(tmp_path: Path,
                                                            daemon_factory: Callable[..., Any]) -> None:
    d: Daemon = await daemon_factory(wait_ready=0, model__min_instances=0, model__initial_instances=0)
    async with aiohttp.ClientSession() as h, h.post(f"http://127.0.0.1:{d.port}/tokenize",
                                                    json={"model": CHAT_MODEL, "prompt": "x"}) as r:
        err = await r.json()
        assert r.status == 503 and err["error"]["code"] == "model_not_ready" and "Retry-After" in r.headers
        assert "scaled_to_zero" in err["error"]["message"]


async def test_a_batch_line_for_the_wrong_kind_of_model_says_so(daemon: Daemon, tmp_path: Path) -> None:
    c = _client(daemon, "alice")
    body = {"model": EMBED_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": body}))
    try:
        f = await c.files.create(file=path.open("rb"), purpose="batch")
        b = await c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        b = await wait_batch(c, b.id)
        assert b.status == "completed" and b.error_file_id
        (err,) = [json.loads(x) for x in (await c.files.content(b.error_file_id)).text.splitlines()]
        assert err["response"]["status_code"] == 400
        assert err["response"]["body"]["error"]["code"] == "model_not_supported"
    finally:
        await c.close()
