"""Requests chirond does not resume after an eviction keep their slot: a batch-class (`flex`)
/v1/responses stream and a `flex` chat stream with n > 1 run to their end on a one-slot instance
while an interactive request waits for it (docs/serving.md, "Failures, preemption and what is
lost")."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chirond.daemon import Daemon
from chirond.model import Decision
from chirond.policy.chirond import ChirondPolicy
from chirond.tokens import count_text, make_text
from tests.support.openai_cases import client
from tests.support.wait import wait_for

MODEL = "llama-8b"
MSGS: Any = [{"role": "user", "content": make_text(50)}]
LONG = 1000  # tokens: seconds at this speedup, so the batch request still runs when the other comes


async def _responses_stream(c: Any) -> int:
    s = await c.responses.create(model=MODEL, input=make_text(50), max_output_tokens=LONG, stream=True,
                                 service_tier="flex", extra_body={"ignore_eos": True})
    text, final = "", None
    async for ev in s:
        if ev.type == "response.output_text.delta":
            text += ev.delta
        final = ev
    assert final is not None and final.type == "response.incomplete"
    assert final.response.usage.output_tokens == LONG
    return count_text(text)


async def _chat_n_stream(c: Any) -> int:
    s = await c.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=LONG, n=2, stream=True,
                                        service_tier="flex", extra_body={"ignore_eos": True})
    texts = ["", ""]
    async for ch in s:
        for choice in ch.choices:
            texts[choice.index] += choice.delta.content or ""
    assert count_text(texts[0]) == count_text(texts[1])
    return count_text(texts[0])


@pytest.mark.parametrize("batch_request", [_responses_stream, _chat_n_stream])
async def test_batch_work_that_cannot_resume_keeps_its_slot(daemon_factory: Any, monkeypatch: pytest.MonkeyPatch,
                                                            batch_request: Any) -> None:
    monkeypatch.setattr(ChirondPolicy, "plan", lambda self, snap, state: Decision((), "pinned by the test", state))
    d: Daemon = await daemon_factory(model__sim_speedup=2.0)
    (iid,) = list(d.dispatcher.slots)
    d.dispatcher.set_cap(iid, 1, 1)  # one slot, which batch work may hold (n = 2 holds it as one request)
    c = client(d)
    batch = asyncio.create_task(batch_request(c))
    await wait_for(lambda: len(d.dispatcher.slots[iid].batch) == 1, 10, "the batch request running")
    await asyncio.sleep(0.5)  # it has generated some tokens
    assert not batch.done()  # else the check below would hold vacuously
    r = await c.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=5, extra_body={"ignore_eos": True})
    assert r.usage is not None and r.usage.completion_tokens == 5
    assert await batch == LONG  # whole, in one stream
    assert d.dispatcher.evictions == 0
    await c.close()
