"""`chirond fake-vllm` against real clients: the `openai` package for the API, raw HTTP for the
wire format, /metrics parsed with prometheus_client, and subprocesses for start-up and SIGTERM.

No assertion depends on how fast anything runs: waits are bounded loops on observable state (a log
line, a metric, a chunk), and timing only decides which of two allowed outcomes happens."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from chirond.fakevllm import FakeVllm
from chirond.fakevllm.metrics import ITL_BUCKETS, REQUEST_LATENCY_BUCKETS, TTFT_BUCKETS
from chirond.profiles import load_profile
from chirond.tokens import count_messages, count_prompt, count_text, make_text
from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]
PROFILE_PATH = ROOT / "profiles" / "llama-3.1-8b_a100-80gb_tp1.toml"
PROFILE = load_profile(PROFILE_PATH)
MODEL = "llama-8b"
MESSAGES: list[Any] = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": make_text(30)}]


@contextlib.asynccontextmanager
async def serving(speedup: float = 50.0, **kw: Any) -> AsyncIterator[FakeVllm]:
    s = FakeVllm(PROFILE, MODEL, speedup=speedup, **kw)
    await s.start("127.0.0.1", 0)
    try:
        yield s
    finally:
        await s.stop()


@pytest.fixture
async def server() -> AsyncIterator[FakeVllm]:
    async with serving() as s:
        yield s


def client(s: FakeVllm, key: str = "none") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{s.url}/v1", api_key=key, max_retries=0)


async def scrape(url: str) -> dict[str, float]:
    """Samples keyed by name and labels as 'name{k=v,...}' (labels sorted)."""
    async with aiohttp.ClientSession() as h, h.get(f"{url}/metrics") as r:
        assert r.status == 200
        text = await r.text()
    out = {}
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(smp.labels.items()))
            out[f"{smp.name}{{{labels}}}"] = smp.value
    return out


def lab(**extra: str) -> str:
    return "{" + ",".join(f"{k}={v}" for k, v in sorted({"engine": "0", "model_name": MODEL, **extra}.items())) + "}"


async def wait_for_metric(url: str, name: str, want: float) -> None:
    for _ in range(200):
        if (await scrape(url)).get(name + lab()) == want:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{name} never became {want}")


# ---------------------------------------------------------------- API through the openai client


async def test_chat_and_completions_usage_and_exact_lengths(server: FakeVllm) -> None:
    c = client(server)
    chat = await c.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=37,
                                          extra_body={"ignore_eos": True})
    assert chat.object == "chat.completion" and chat.model == MODEL
    assert chat.choices[0].finish_reason == "length"
    assert chat.usage is not None
    assert chat.usage.prompt_tokens == count_messages(MESSAGES)
    assert chat.usage.completion_tokens == 37 == count_text(chat.choices[0].message.content or "")

    prompt = make_text(55)
    comp = await c.completions.create(model=MODEL, prompt=prompt, max_tokens=40, extra_body={"ignore_eos": True})
    assert comp.usage is not None
    assert comp.usage.prompt_tokens == count_prompt(prompt) == 55
    assert comp.usage.completion_tokens == 40 == count_text(comp.choices[0].text)

    ids = await c.completions.create(model=MODEL, prompt=[1, 2, 3, 4, 5, 6, 7], max_tokens=3)
    assert ids.usage is not None and ids.usage.prompt_tokens == 7

    # Without ignore_eos: the "natural" length, capped, and the same for the same prompt.
    a = await c.completions.create(model=MODEL, prompt=prompt)
    b = await c.completions.create(model=MODEL, prompt=prompt)
    assert a.usage is not None and b.usage is not None
    assert a.usage.completion_tokens == b.usage.completion_tokens <= 16  # vLLM's completions default
    assert a.choices[0].finish_reason == ("length" if a.usage.completion_tokens == 16 else "stop")
    await c.close()


async def test_chat_stream_chunk_order() -> None:
    async with serving(speedup=2) as server:  # 60 tokens take ~0.35 s: many 5 ms emitter windows
        c = client(server)
        stream = await c.chat.completions.create(model=MODEL, messages=MESSAGES,
                                                max_tokens=60, stream=True, stream_options={"include_usage": True},
                                                extra_body={"ignore_eos": True})
        chunks = [ch async for ch in stream]
        await c.close()
    first, *content, usage = chunks
    assert first.choices[0].delta.role == "assistant" and first.choices[0].delta.content == ""
    assert len(content) >= 2, "tokens must arrive progressively, not all at the end"
    assert all(ch.choices[0].finish_reason is None for ch in content[:-1])
    assert content[-1].choices[0].finish_reason == "length"
    text = "".join(ch.choices[0].delta.content or "" for ch in content)
    assert count_text(text) == 60
    assert usage.choices == [] and usage.usage is not None
    assert (usage.usage.prompt_tokens, usage.usage.completion_tokens) == (count_messages(MESSAGES), 60)
    assert len({ch.id for ch in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")


async def test_completions_stream_wire_format(server: FakeVllm) -> None:
    body = {"model": MODEL, "prompt": "hello world", "max_tokens": 25, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    async with aiohttp.ClientSession() as h, h.post(f"{server.url}/v1/completions", json=body,
                                                    headers={"X-Request-Id": "abc"}) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        raw = await r.text()
    assert raw.endswith("data: [DONE]\n\n")
    events = raw.split("\n\n")[:-1]
    assert all(e.startswith("data: ") for e in events)
    payloads = [json.loads(e[6:]) for e in events[:-1]]
    *content, usage = payloads
    assert all(p["object"] == "text_completion" and p["id"] == "cmpl-abc" for p in payloads)
    assert [p["choices"][0]["finish_reason"] for p in content][-1] == "length"
    assert all(p["choices"][0]["finish_reason"] is None for p in content[:-1])
    assert count_text("".join(p["choices"][0]["text"] for p in content)) == 25
    assert usage["choices"] == [] and usage["usage"] == {"prompt_tokens": 3, "total_tokens": 28,
                                                          "completion_tokens": 25}


async def test_models_version_health_load(server: FakeVllm) -> None:
    async with aiohttp.ClientSession() as h:
        async with h.get(f"{server.url}/health") as r:
            assert r.status == 200 and await r.read() == b""
        async with h.get(f"{server.url}/version") as r:
            assert (await r.json())["version"].startswith("0.")
        async with h.get(f"{server.url}/load") as r:
            assert await r.json() == {"server_load": 0}
    models = await client(server).models.list()
    card = models.data[0].model_dump()
    assert (card["id"], card["object"], card["owned_by"], card["max_model_len"]) == (MODEL, "model", "vllm", 131072)


# ---------------------------------------------------------------- metrics


async def test_metrics_names_labels_buckets_and_counters(server: FakeVllm) -> None:
    c = client(server)
    await c.completions.create(model=MODEL, prompt=[5] * 100, max_tokens=20, extra_body={"ignore_eos": True})
    await c.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10,
                                    extra_body={"ignore_eos": True})
    await c.close()
    m = await scrape(server.url)
    prompt = 100 + count_messages(MESSAGES)
    assert m["vllm:prompt_tokens_total" + lab()] == prompt
    assert m["vllm:generation_tokens_total" + lab()] == 30
    assert m["vllm:request_success_total" + lab(finished_reason="length")] == 2
    assert m["vllm:request_success_total" + lab(finished_reason="stop")] == 0
    assert m["vllm:num_requests_running" + lab()] == 0
    assert m["vllm:num_requests_waiting" + lab()] == 0
    assert 0 <= m["vllm:kv_cache_usage_perc" + lab()] <= 1
    assert m["vllm:num_preemptions_total" + lab()] == 0
    assert m["vllm:request_prompt_tokens_sum" + lab()] == prompt
    assert m["vllm:request_generation_tokens_sum" + lab()] == 30
    assert m["vllm:inter_token_latency_seconds_count" + lab()] == 30 - 2  # tokens after each first
    for name, buckets in (("vllm:time_to_first_token_seconds", TTFT_BUCKETS),
                          ("vllm:inter_token_latency_seconds", ITL_BUCKETS),
                          ("vllm:request_time_per_output_token_seconds", ITL_BUCKETS),
                          ("vllm:e2e_request_latency_seconds", REQUEST_LATENCY_BUCKETS),
                          ("vllm:request_queue_time_seconds", REQUEST_LATENCY_BUCKETS),
                          ("vllm:request_prefill_time_seconds", REQUEST_LATENCY_BUCKETS),
                          ("vllm:request_decode_time_seconds", REQUEST_LATENCY_BUCKETS)):
        les = [k.split("le=")[1].split(",")[0].rstrip("}") for k in m if k.startswith(name + "_bucket")]
        assert les == [*(str(float(b)) for b in buckets), "+Inf"], name
        assert m[name + "_count" + lab()] == (28 if name == "vllm:inter_token_latency_seconds" else 2)
    assert m["vllm:iteration_tokens_total_count" + lab()] > 0
    assert m["vllm:num_requests_waiting_by_reason" + lab(reason="capacity")] == 0
    assert m["vllm:engine_sleep_state" + lab(sleep_state="awake")] == 1
    assert m["vllm:prefix_cache_queries_total" + lab()] == prompt
    assert m["vllm:request_max_num_generation_tokens_sum" + lab()] == 30
    assert "vllm:e2e_request_latency_seconds_created" + lab() in m
    info = [k for k in m if k.startswith("vllm:cache_config_info")]
    assert len(info) == 1 and "block_size=16" in info[0] and f"num_gpu_blocks={PROFILE.kv_blocks}" in info[0]
    # The raw exposition, as a scraper matches it.
    async with aiohttp.ClientSession() as h, h.get(f"{server.url}/metrics") as r:
        raw = await r.text()
    assert f'vllm:generation_tokens_total{{engine="0",model_name="{MODEL}"}} 30.0' in raw


# ---------------------------------------------------------------- errors and auth


async def test_error_shapes(server: FakeVllm) -> None:
    c = client(server)
    with pytest.raises(openai.NotFoundError) as nf:
        await c.completions.create(model="nope", prompt="x")
    assert nf.value.status_code == 404
    assert nf.value.body == {"message": "The model `nope` does not exist.", "type": "NotFoundError",
                             "param": "model", "code": 404}
    with pytest.raises(openai.BadRequestError) as bad:
        await c.completions.create(model=MODEL, prompt=[1] * 131072, max_tokens=1)
    assert bad.value.status_code == 400 and "maximum context length is 131072 tokens" in str(bad.value.body)
    assert bad.value.body["param"] == "input_tokens"  # type: ignore[index]
    await c.close()
    url = f"{server.url}/v1/chat/completions"
    cases: list[tuple[bytes, str]] = [
        (b"{not json", "application/json"),
        (json.dumps({"model": MODEL, "messages": MESSAGES}).encode(), "text/plain"),
        (json.dumps({"model": MODEL, "messages": MESSAGES, "max_tokens": "ten"}).encode(), "application/json"),
        (json.dumps({"model": MODEL, "messages": MESSAGES, "stream_options": {"include_usage": True}}).encode(),
         "application/json"),
        (json.dumps({"model": MODEL}).encode(), "application/json"),
    ]
    async with aiohttp.ClientSession() as h:
        for body, ctype in cases:
            async with h.post(url, data=body, headers={"Content-Type": ctype}) as r:
                err = (await r.json())["error"]
                assert r.status == 400 == err["code"], body
                assert set(err) == {"message", "type", "param", "code"} and err["type"] == "BadRequestError"


async def test_api_key() -> None:
    async with serving(api_keys=("k1", "k2")) as s, aiohttp.ClientSession() as h:
        for path in ("/v1/models", "/v1/completions"):
            async with h.get(f"{s.url}{path}", headers={"Authorization": "Bearer wrong"}) as r:
                assert r.status == 401 and await r.json() == {"error": "Unauthorized"}
        for path in ("/health", "/metrics"):
            async with h.get(f"{s.url}{path}") as r:
                assert r.status == 200, path
        # As chirond's engine guard makes vLLM do: every other path needs the key, known or not.
        for method, path in (("GET", "/load"), ("GET", "/version"), ("GET", "/ping"), ("POST", "/invocations"),
                             ("POST", "/tokenize"), ("GET", "/no/such/route"), ("GET", "/health/../v1/models")):
            async with h.request(method, f"{s.url}{path}", json={"prompt": "hi"}) as r:
                assert r.status == 401 and await r.json() == {"error": "Unauthorized"}, path
            async with h.request(method, f"{s.url}{path}", headers={"Authorization": "Bearer k1"}) as r:
                assert r.status != 401, path
        with pytest.raises(openai.AuthenticationError):
            await client(s, "wrong").models.list()
        ok = await client(s, "k2").completions.create(model=MODEL, prompt="hi", max_tokens=2)
        assert ok.usage is not None and ok.usage.completion_tokens <= 2


# ---------------------------------------------------------------- scheduling and aborts


async def test_priority_policy_serves_interactive_first() -> None:
    """One running slot: a batch request (priority 1) holds it; a second batch request queued
    before an interactive one (priority 0) is still served after it."""
    order: list[str] = []
    async with serving(speedup=20, max_num_seqs=1, scheduling_policy="priority") as s:
        c = client(s)

        async def go(name: str, priority: int, tokens: int) -> None:
            await c.completions.create(model=MODEL, prompt=name, max_tokens=tokens,
                                       extra_body={"ignore_eos": True, "priority": priority})
            order.append(name)

        hold = asyncio.create_task(go("hold", 1, 3000))  # seconds at speedup 20: the others queue behind it
        await wait_for_metric(s.url, "vllm:num_requests_running", 1)
        later = asyncio.create_task(go("batch", 1, 5))
        await wait_for_metric(s.url, "vllm:num_requests_waiting", 1)
        first = asyncio.create_task(go("interactive", 0, 5))
        await wait_for_metric(s.url, "vllm:num_requests_waiting", 2)
        await asyncio.gather(hold, later, first)
        await c.close()
    assert order == ["hold", "interactive", "batch"]


async def test_client_disconnect_aborts() -> None:
    async with serving(speedup=1) as server:  # 1000 tokens take ~12 s: they cannot finish by themselves
        await _disconnects(server)


async def _disconnects(server: FakeVllm) -> None:
    body = {"model": MODEL, "prompt": "tell me", "max_tokens": 1000, "ignore_eos": True, "stream": True}
    async with aiohttp.ClientSession() as h:
        resp = await h.post(f"{server.url}/v1/completions", json=body)
        line = await resp.content.readline()
        assert line.startswith(b"data: ")
        assert (await scrape(server.url))["vllm:num_requests_running" + lab()] == 1
        resp.close()  # drop the connection mid-stream
    await wait_for_metric(server.url, "vllm:num_requests_running", 0)

    # Non-streaming: cancel the client while the request runs.
    task = asyncio.create_task(client(server).completions.create(model=MODEL, prompt="again", max_tokens=1000,
                                                                  extra_body={"ignore_eos": True}))
    await wait_for_metric(server.url, "vllm:num_requests_running", 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_for_metric(server.url, "vllm:num_requests_running", 0)
    m = await scrape(server.url)
    assert m["vllm:request_success_total" + lab(finished_reason="abort")] == 2
    assert server.in_flight == 0


async def test_many_concurrent_streams(server: FakeVllm) -> None:
    """300 streams at once, more than max_num_seqs (256): some wait in the engine, all complete."""
    body = {"model": MODEL, "prompt": "x" * 400, "max_tokens": 40, "ignore_eos": True, "stream": True}

    async def one(h: aiohttp.ClientSession) -> int:
        async with h.post(f"{server.url}/v1/completions", json=body) as r:
            raw = await r.text()
        assert raw.endswith("data: [DONE]\n\n")
        return sum(count_text(json.loads(e[6:])["choices"][0]["text"]) for e in raw.split("\n\n")[:-2])

    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as h:
        got = await asyncio.gather(*(one(h) for _ in range(300)))
    assert got == [40] * 300
    m = await scrape(server.url)
    assert m["vllm:generation_tokens_total" + lab()] == 300 * 40
    assert m["vllm:request_queue_time_seconds_count" + lab()] == 300


# ---------------------------------------------------------------- the process: start-up and SIGTERM


async def spawn(*args: str) -> tuple[asyncio.subprocess.Process, int]:
    """The command line the local backend runs: `python -m chirond fake-vllm ...`."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chirond", "fake-vllm", "--profile", str(PROFILE_PATH), "--model", MODEL,
        "--port", str(port), *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    return proc, port


async def wait_log(proc: asyncio.subprocess.Process, text: str) -> str:
    """The first log line holding `text`."""
    assert proc.stderr is not None
    for _ in range(200):
        line = await asyncio.wait_for(proc.stderr.readline(), 20)
        if not line:
            raise AssertionError(f"fake-vllm exited before logging {text!r}")
        if text in line.decode():
            return line.decode()
    raise AssertionError(f"no {text!r} in the log")


async def finish(proc: asyncio.subprocess.Process) -> int:
    try:
        return await asyncio.wait_for(proc.wait(), 15)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_port_refused_during_startup_then_healthy() -> None:
    # The start-up counts from the process's start: the interpreter and imports (a second or more
    # on a busy machine) are part of it, as they are of a real engine's cold start.
    proc, port = await spawn("--startup-s", "6")
    try:
        line = await wait_log(proc, "Start-up: ")
        total, spent = (float(x) for x in re.findall(r"([0-9.]+) s", line))
        assert total == 6.0 and 0.0 < spent < total
        left = float(re.findall(r"([0-9.]+) s to go", await wait_log(proc, "Simulated start-up: "))[0])
        assert left == pytest.approx(total - spent, abs=0.011)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        await wait_log(proc, "Application startup complete.")
        async with aiohttp.ClientSession() as h, h.get(f"http://127.0.0.1:{port}/health") as r:
            assert r.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await finish(proc) == 0


async def test_sigterm_drains_running_requests() -> None:
    proc, port = await spawn("--startup-s", "0", "--shutdown-timeout", "30")
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_log(proc, "Application startup complete.")
        body = {"model": MODEL, "prompt": "long one", "max_tokens": 150, "ignore_eos": True, "stream": True}
        async with aiohttp.ClientSession() as h:
            resp = await h.post(f"{url}/v1/completions", json=body)  # ~2 s at speedup 1
            first = await resp.content.readline()
            assert first.startswith(b"data: ")
            proc.send_signal(signal.SIGTERM)
            await wait_log(proc, "shutdown triggered")
            try:
                async with h.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "new"}) as r:
                    assert r.status == 503 and (await r.json())["error"]["code"] == 503
            except aiohttp.ClientConnectionError:
                pass  # the server had already finished draining and gone: also a refusal
            rest = first + await resp.read()
        events = rest.decode().split("\n\n")[:-1]
        assert events[-1] == "data: [DONE]"
        assert sum(count_text(json.loads(e[6:])["choices"][0]["text"]) for e in events[:-1]) == 150
        assert await finish(proc) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_sigterm_without_timeout_drops_requests() -> None:
    proc, port = await spawn("--startup-s", "0")
    try:
        await wait_log(proc, "Application startup complete.")
        body = {"model": MODEL, "prompt": "long one", "max_tokens": 2000, "ignore_eos": True, "stream": True}
        async with aiohttp.ClientSession() as h:
            resp = await h.post(f"http://127.0.0.1:{port}/v1/completions", json=body)
            assert (await resp.content.readline()).startswith(b"data: ")
            proc.send_signal(signal.SIGTERM)
            try:
                rest = await resp.read()
            except aiohttp.ClientPayloadError:
                rest = b""
            assert b"[DONE]" not in rest
        assert await finish(proc) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_max_tokens_beyond_the_context_is_shortened() -> None:
    """vLLM 0.33 shortens max_tokens to the room the prompt leaves instead of refusing it."""
    async with serving(max_model_len=64) as s:
        c = client(s)
        r = await c.completions.create(model=MODEL, prompt=[1] * 60, max_tokens=100, extra_body={"ignore_eos": True})
        assert r.usage is not None and r.usage.completion_tokens == 4 and r.choices[0].finish_reason == "length"
        await c.close()
