"""The openai-client test bodies that run against both backends: tests/component/test_daemon.py
(local processes) and tests/integration/test_slurm_openai.py (sbatch jobs on the loopback
cluster). Each takes the module's `daemon_factory` fixture (and `tmp_path` where named)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from chirond.daemon import Daemon
from chirond.model import Decision, ReqClass
from chirond.policy.chirond import ChirondPolicy
from chirond.tokens import count_messages, count_text, make_text
from tests.support.daemon import ready_count
from tests.support.wait import wait_for

MODEL = "llama-8b"


def client(d: Daemon, key: str = "none") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{d.port}/v1", api_key=key, max_retries=0, timeout=60)


async def chat_and_completions_streaming_and_not(daemon_factory: Any) -> None:
    d: Daemon = await daemon_factory()
    c = client(d)
    msgs = [{"role": "user", "content": make_text(40)}]
    r = await c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=12, extra_body={"ignore_eos": True})
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.usage is not None and r.usage.completion_tokens == 12
    assert count_text(r.choices[0].message.content or "") == 12
    assert r.usage.prompt_tokens == count_messages(msgs)

    chunks = []
    stream = await c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=9, stream=True,
                                             stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    async for ch in stream:
        chunks.append(ch)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 9
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert count_text(text) == 9
    assert chunks[-2].choices[0].finish_reason == "length"

    r2 = await c.completions.create(model=MODEL, prompt=make_text(30), max_tokens=7, extra_body={"ignore_eos": True})
    assert r2.object == "text_completion" and r2.usage is not None and r2.usage.completion_tokens == 7
    parts = []
    s2 = await c.completions.create(model=MODEL, prompt=make_text(30), max_tokens=5, stream=True,
                                    extra_body={"ignore_eos": True})
    async for ch in s2:
        assert ch.usage is None  # not asked for: chirond drops the usage chunk it requested upstream
        parts.append(ch.choices[0].text)
    assert count_text("".join(parts)) == 5

    models = await c.models.list()
    assert [m.id for m in models.data] == [MODEL]
    status = models.data[0].model_extra or {}
    assert status["state"] == "live" and status["instances"]["ready"] >= 1

    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{d.port}/metrics") as resp:
        text = await resp.text()
    assert 'chirond_requests_total{class="interactive",model="llama-8b",outcome="ok"} 4.0' in text
    assert "chirond_time_to_first_token_seconds_bucket" in text


async def bad_inputs_get_openai_errors_and_the_daemon_keeps_serving(daemon_factory: Any, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# test keys\nsk-test-0123456789abcdef alice\n")
    d: Daemon = await daemon_factory(api__auth="keys", api__keys_file=keys, api__max_body_bytes=4096)
    good = client(d, "sk-test-0123456789abcdef")
    msgs = [{"role": "user", "content": "hi"}]

    with pytest.raises(openai.AuthenticationError):
        await client(d, "wrong-key-wrong-key").chat.completions.create(model=MODEL, messages=msgs)
    with pytest.raises(openai.NotFoundError) as nf:
        await good.chat.completions.create(model="no-such-model", messages=msgs)
    assert "llama-8b" in nf.value.message
    with pytest.raises(openai.BadRequestError) as br:
        await good.chat.completions.create(model=MODEL, messages=[])
    assert br.value.body is not None
    with pytest.raises(openai.BadRequestError):
        await good.chat.completions.create(model=MODEL, messages=msgs, temperature=7)
    with pytest.raises(openai.BadRequestError):
        await good.completions.create(model=MODEL, prompt="x", max_tokens=-3)

    url = f"http://127.0.0.1:{d.port}/v1/chat/completions"
    hdr = {"Authorization": "Bearer sk-test-0123456789abcdef"}
    async with aiohttp.ClientSession() as s:
        async with s.post(url, data=b"{not json", headers={**hdr, "Content-Type": "application/json"}) as r:
            body = await r.json()
            assert r.status == 400 and set(body["error"]) >= {"message", "type", "param", "code"}
        big = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x" * 10000}]})
        async with s.post(url, data=big, headers={**hdr, "Content-Type": "application/json"}) as r:
            assert r.status == 413 and "error" in await r.json()
        async with s.post(url, data=b"{}", headers={**hdr, "Content-Type": "text/plain"}) as r:
            assert r.status in (400, 415) and "error" in await r.json()
        async with s.get(f"http://127.0.0.1:{d.port}/v1/nothing-here", headers=hdr) as r:
            assert r.status == 404 and "error" in await r.json()

    r = await good.chat.completions.create(model=MODEL, messages=msgs, max_tokens=3)
    assert r.choices[0].message.content


async def queue_full_gets_429_with_retry_after(daemon_factory: Any) -> None:
    # One slot per instance and a queue of one: the third concurrent request is refused.
    d: Daemon = await daemon_factory(api__max_queue_interactive=1, daemon__policy="static",
                                     model__sim_speedup=1.0)
    for i in d.dispatcher.slots:
        d.dispatcher.set_cap(i, 1)
    c = client(d)
    msgs = [{"role": "user", "content": make_text(20)}]
    long = [asyncio.create_task(c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=200,
                                                          extra_body={"ignore_eos": True})) for _ in range(2)]
    await wait_for(lambda: d.dispatcher.queued(MODEL)[0] == 1, 10, "one queued request")
    raw = c.chat.completions.with_raw_response
    with pytest.raises(openai.RateLimitError) as e:
        await raw.create(model=MODEL, messages=msgs, max_tokens=2)
    assert e.value.response.headers.get("Retry-After") == "1"
    for t in long:
        t.cancel()
    await asyncio.gather(*long, return_exceptions=True)


async def batch_work_is_preempted_for_interactive_and_resumes(
    daemon_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # chirond's dispatch rules (interactive first, batch evicted from mixed instances), with the
    # caps pinned by the test instead of the policy.
    monkeypatch.setattr(ChirondPolicy, "plan", lambda self, snap, state: Decision((), "pinned by the test", state))
    # max_wait_s shorter than the batch requests' life: an evicted batch request waits again until
    # its deadline, not max_wait_s from its arrival.
    d: Daemon = await daemon_factory(model__sim_speedup=2.0, api__max_wait_s=0.5)
    (iid,) = list(d.dispatcher.slots)
    d.dispatcher.set_cap(iid, 2, 2)  # two slots, both may hold batch work
    c = client(d)
    msgs = [{"role": "user", "content": make_text(50)}]

    async def batch_stream() -> tuple[str, int]:
        s = await c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=400, stream=True,
                                            stream_options={"include_usage": True}, service_tier="flex",
                                            extra_body={"ignore_eos": True})
        text, usage, ids = "", 0, set()
        async for ch in s:
            ids.add(ch.id)
            if ch.choices:
                text += ch.choices[0].delta.content or ""
            if ch.usage:
                usage = ch.usage.completion_tokens
        assert len(ids) == 1  # one stream, even across the preemption
        return text, usage

    # Long enough (seconds) that they are still running when the interactive request comes.
    batch = [asyncio.create_task(batch_stream()) for _ in range(2)]
    await wait_for(lambda: len(d.dispatcher.slots[iid].batch) == 2, 10, "two batch requests running")
    await asyncio.sleep(0.6)  # let them generate some tokens, and outlive max_wait_s
    r = await c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=5, extra_body={"ignore_eos": True})
    assert r.usage is not None and r.usage.completion_tokens == 5
    assert d.dispatcher.evictions >= 1
    for text, usage in await asyncio.gather(*batch):
        assert usage == 400
        assert count_text(text) == 400  # resumed from what it had: nothing lost, nothing doubled
    jobs_cls = {j.req.cls for j in d.gateway.jobs.values()}
    assert ReqClass.BATCH not in jobs_cls


async def scale_from_zero_holds_requests_and_counts_ttft_from_arrival(daemon_factory: Any) -> None:
    d: Daemon = await daemon_factory(wait_ready=0, model__min_instances=0, model__initial_instances=0,
                                     model__sim_startup_s=1.5)
    assert ready_count(d) == 0
    c = client(d)
    status = (await c.models.list()).data[0].model_extra or {}
    assert status["state"] == "scaled_to_zero"
    t0 = asyncio.get_running_loop().time()
    msgs = [{"role": "user", "content": make_text(10)}]
    rs = await asyncio.gather(*(c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=4) for _ in range(3)))
    waited = asyncio.get_running_loop().time() - t0
    assert all(r.choices[0].message.content for r in rs)
    assert waited >= 1.5  # they were held while an instance started
    assert ready_count(d) >= 1
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{d.port}/metrics") as resp:
        text = await resp.text()
    # TTFT counts from arrival at chirond: all three are above the start-up time.
    line = next(x for x in text.splitlines()
                if x.startswith('chirond_time_to_first_token_seconds_bucket{class="interactive",le="1.0"'))
    assert line.endswith(" 0.0")


async def client_disconnect_aborts_the_upstream_request(daemon_factory: Any) -> None:
    d: Daemon = await daemon_factory(model__sim_speedup=1.0)
    (inst,) = d.instances.values()
    url = f"http://127.0.0.1:{d.port}/v1/chat/completions"
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2000, "stream": True,
            "ignore_eos": True}

    async def running() -> float:
        async with aiohttp.ClientSession() as s, s.get(f"{inst.url}/metrics") as r:
            for line in (await r.text()).splitlines():
                if line.startswith("vllm:num_requests_running{"):
                    return float(line.rsplit(" ", 1)[1])
        return -1.0

    async with aiohttp.ClientSession() as s, s.post(url, json=body) as r:
        await r.content.readline()
        await r.content.readline()
        assert await running() == 1.0
    # The client is gone: chirond aborts upstream and forgets the job, without blaming the instance.
    await wait_for(lambda: not d.gateway.jobs, 10, "the job to be dropped")
    assert inst.routable and not d.fleet.control.obs.failures["llama-8b"]
    for _ in range(50):
        if await running() == 0.0:
            break
        await asyncio.sleep(0.1)
    assert await running() == 0.0
