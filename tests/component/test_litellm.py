"""LiteLLM's SDK against chirond with fake-vllm engines: `acompletion` (streamed and not) and
`aembedding` through its vLLM provider (`hosted_vllm/`) and its OpenAI one (`openai/`), with a
user's key. LiteLLM reads its bundled model cost map (LITELLM_LOCAL_MODEL_COST_MAP), so it
reaches for nothing beyond 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from chirond.daemon import Daemon
from chirond.tokens import count_text
from tests.support.config import EMBED_MODEL, make_config, with_embedding_model
from tests.support.daemon import running

LOOPBACK = ("127.0.0.1", "::1", "localhost")
# Every address LiteLLM (or anything else in this module) tried to reach beyond this machine.
OUTSIDE: list[str] = []
_connect, _getaddrinfo = socket.socket.connect, socket.getaddrinfo


def _guarded_connect(sock: socket.socket, address: Any) -> Any:
    if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOOPBACK:
        OUTSIDE.append(f"connect {address}")
        raise OSError(f"test: no network beyond loopback ({address})")
    return _connect(sock, address)


def _guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    if host not in (None, *LOOPBACK) and not str(host).startswith("127."):
        OUTSIDE.append(f"resolve {host}")
        raise socket.gaierror(f"test: no network beyond loopback ({host})")
    return _getaddrinfo(host, *args, **kwargs)


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """Only here: every other test of the run keeps the real socket functions."""
    socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
    socket.getaddrinfo = _guarded_getaddrinfo
    try:
        yield
    finally:
        socket.socket.connect = _connect  # type: ignore[method-assign]
        socket.getaddrinfo = _getaddrinfo


os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # before litellm is imported: no download at import
os.environ["LITELLM_TELEMETRY"] = "False"
with _loopback_only():
    litellm: Any = pytest.importorskip("litellm")


@pytest.fixture(autouse=True)
def _no_network_beyond_loopback() -> Iterator[None]:
    with _loopback_only():
        yield

CHAT_MODEL = "llama-8b"
MSGS = [{"role": "user", "content": "Say hello"}]


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    async with running(with_embedding_model(make_config(tmp_path, api__auth="keys"))) as d:
        yield d


def _kw(d: Daemon) -> dict[str, Any]:
    return {"api_base": f"http://127.0.0.1:{d.port}/v1", "api_key": d.users.mint("alice"), "num_retries": 0,
            "timeout": 60}


@pytest.mark.parametrize("provider", ["hosted_vllm", "openai"])
async def test_completion_and_embedding(daemon: Daemon, provider: str) -> None:
    kw = _kw(daemon)
    r = await litellm.acompletion(model=f"{provider}/{CHAT_MODEL}", messages=MSGS, max_tokens=6, **kw)
    assert r.choices[0].message.content and r.choices[0].finish_reason in ("stop", "length")
    assert 0 < r.usage.completion_tokens <= 6
    stream = await litellm.acompletion(model=f"{provider}/{CHAT_MODEL}", messages=MSGS, max_tokens=6, stream=True,
                                       **kw)
    text, finish = "", None
    async for chunk in stream:
        text += chunk.choices[0].delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
    assert text and finish in ("stop", "length")

    e = await litellm.aembedding(model=f"{provider}/{EMBED_MODEL}", input=["hello world", "bye"], **kw)
    assert [len(x["embedding"]) for x in e.data] == [4096, 4096]
    assert e.data[0]["embedding"] != e.data[1]["embedding"]
    assert e.usage.prompt_tokens == count_text("hello world") + count_text("bye")
    # The wrong kind of model: LiteLLM's own exception for a 400.
    with pytest.raises(litellm.BadRequestError, match="generative model"):
        await litellm.aembedding(model=f"{provider}/{CHAT_MODEL}", input="x", **kw)
    with pytest.raises(litellm.BadRequestError, match="embedding model"):
        await litellm.acompletion(model=f"{provider}/{EMBED_MODEL}", messages=MSGS, **kw)
    assert OUTSIDE == []  # importing and calling LiteLLM reached for nothing beyond 127.0.0.1
