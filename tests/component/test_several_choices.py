"""`n > 1` through chirond to fake-vllm engines with the real `openai` client: n choices, streamed
with their index or answered whole (vLLM's own answer, unstreamed upstream), usage counting every
choice, in the accounting as in the answer."""

from __future__ import annotations

from typing import Any

from chirond.daemon import Daemon
from tests.support.openai_cases import client

MODEL = "llama-8b"
MSGS: Any = [{"role": "user", "content": "Name a colour"}]


async def test_n_choices_streamed_and_not(daemon_factory: Any) -> None:
    d: Daemon = await daemon_factory(api__auth="keys")
    c = client(d, d.users.mint("alice"))
    r = await c.chat.completions.create(model=MODEL, messages=MSGS, n=3, max_tokens=4,
                                        extra_body={"ignore_eos": True})
    assert [ch.index for ch in r.choices] == [0, 1, 2]
    assert all(ch.message.content and ch.finish_reason == "length" for ch in r.choices)
    assert r.usage is not None and r.usage.completion_tokens == 12
    assert d.users.tokens_today("alice") == r.usage.total_tokens

    texts: dict[int, str] = {}
    finished: dict[int, str] = {}
    s = await c.chat.completions.create(model=MODEL, messages=MSGS, n=2, max_tokens=5, stream=True,
                                        stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    usage = None
    async for chunk in s:
        for ch in chunk.choices:
            texts[ch.index] = texts.get(ch.index, "") + (ch.delta.content or "")
            if ch.finish_reason:
                finished[ch.index] = ch.finish_reason
        usage = chunk.usage or usage
    assert sorted(texts) == [0, 1] and all(len(t) == 20 for t in texts.values())  # 4 characters a token
    assert finished == {0: "length", 1: "length"} and usage is not None and usage.completion_tokens == 10

    rc = await c.completions.create(model=MODEL, prompt="Colours:", n=2, max_tokens=3,
                                    extra_body={"ignore_eos": True})
    assert [ch.index for ch in rc.choices] == [0, 1] and rc.usage is not None and rc.usage.completion_tokens == 6
    await c.close()
