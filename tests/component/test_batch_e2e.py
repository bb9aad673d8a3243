"""The Files and Batches API end to end: the real openai client against a chirond daemon (local
backend, simulated vLLM instances as child processes), lines executed by the runner."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import openai
import pytest

from chirond.control_cli import ControlError, call
from chirond.daemon import Daemon
from chirond.ops.operations import operations
from tests.support import wait_for

MODEL = "llama-8b"
END = {"completed", "failed", "expired", "cancelled"}


def chat_line(i: int, max_tokens: int = 8, model: str = MODEL, url: str = "/v1/chat/completions") -> str:
    body = {"model": model, "messages": [{"role": "user", "content": f"question {i}"}], "max_tokens": max_tokens,
            "ignore_eos": True}  # vLLM's extension: exactly max_tokens tokens
    return json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": url, "body": body})


Clients = Callable[[Daemon, str], openai.AsyncOpenAI]


@pytest.fixture
async def client_for() -> AsyncIterator[Clients]:
    """openai clients for a daemon and a key, closed after the test."""
    made: list[openai.AsyncOpenAI] = []

    def make(d: Daemon, key: str) -> openai.AsyncOpenAI:
        made.append(openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{d.port}/v1", api_key=key, max_retries=0))
        return made[-1]

    yield make
    for c in made:
        await c.close()


async def finished(client: openai.AsyncOpenAI, batch_id: str, timeout_s: float = 90.0) -> Any:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while True:
        b = await client.batches.retrieve(batch_id)
        if b.status in END:
            return b
        assert loop.time() < end, f"batch still {b.status} after {timeout_s} s: {b.request_counts}"
        await asyncio.sleep(0.2)


async def jsonl(client: openai.AsyncOpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    content = await client.files.content(file_id)
    return [json.loads(x) for x in content.text.splitlines() if x.strip()]


async def submit(client: openai.AsyncOpenAI, tmp: Path, lines: list[str], window: str = "24h") -> Any:
    path = tmp / f"in-{len(lines)}-{window}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    f = await client.files.create(file=path.open("rb"), purpose="batch")
    return await client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window=window,  # type: ignore[arg-type]
        metadata={"job": "test"},
    )


async def test_batch_runs_every_good_line_once_and_reports_bad_ones(
    daemon_factory: Callable[..., Any], tmp_path: Path, client_for: Clients
) -> None:
    d: Daemon = await daemon_factory(api__auth="keys")
    alice, bob = client_for(d, d.users.mint("alice")), client_for(d, d.users.mint("bob"))
    good = [chat_line(i) for i in range(60)]
    bad = [
        "{not json",
        chat_line(1000, model="no-such-model"),
        chat_line(1001, url="/v1/embeddings"),
        json.dumps({"custom_id": "req-5", "method": "POST", "url": "/v1/chat/completions", "body": {"model": MODEL}}),
    ]
    batch = await submit(alice, tmp_path, good[:30] + bad + good[30:])
    assert batch.status in ("validating", "in_progress")
    assert batch.metadata == {"job": "test"}

    done = await finished(alice, batch.id)
    assert done.status == "completed", done
    assert done.request_counts.total == 64
    assert done.request_counts.completed == 60
    assert done.request_counts.failed == 4
    out = await jsonl(alice, done.output_file_id)
    ids = [x["custom_id"] for x in out]
    assert sorted(ids) == sorted(f"req-{i}" for i in range(60))  # each exactly once
    for x in out:
        assert x["response"]["status_code"] == 200
        assert x["response"]["body"]["choices"][0]["message"]["content"]
        assert x["error"] is None
    errors = await jsonl(alice, done.error_file_id)
    assert len(errors) == 4
    text = json.dumps(errors)
    assert "no-such-model" in text and "/v1/embeddings" in text

    # Another user's ids do not exist for them.
    with pytest.raises(openai.NotFoundError):
        await bob.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        await bob.files.content(done.output_file_id)
    assert [b.id for b in (await bob.batches.list()).data] == []
    assert batch.id in [b.id for b in (await alice.batches.list()).data]
    # Usage was accounted to alice, none to bob.
    d.users.flush()
    assert sum(u["tokens_out"] for u in d.users.usage("alice")) > 0
    assert d.users.usage("bob") == []


async def test_the_policy_sees_queued_lines_and_cancel_keeps_what_was_done(
    daemon_factory: Callable[..., Any], tmp_path: Path, client_for: Clients
) -> None:
    d: Daemon = await daemon_factory(api__auth="keys", model__max_instances=1)
    alice = client_for(d, d.users.mint("alice"))
    batch = await submit(alice, tmp_path, [chat_line(i, max_tokens=400) for i in range(2000)])
    await wait_for(lambda: d.batch.runner.recorded >= 5, 60, "some lines done")
    snap = d.fleet.snapshot(d.clock())
    m = snap.model(MODEL)
    assert d.batch.runner.leased <= 2 * 256  # a window of lines is leased, not the file
    assert m.batch_queue > 2 * 256  # more than the lease window holds: the store's lines count
    assert sum(g.requests for g in m.backlog) == m.batch_queue
    assert m.backlog[0].deadline > snap.now + 23 * 3600  # the 24 h window, on the daemon's clock

    await alice.batches.cancel(batch.id)
    done = await finished(alice, batch.id, 30)
    assert done.status == "cancelled"
    out = await jsonl(alice, done.output_file_id)
    assert 5 <= len(out) < 2000
    assert len({x["custom_id"] for x in out}) == len(out) == done.request_counts.completed
    assert d.batch.runner.leased == 0
    assert d.fleet.snapshot(d.clock()).model(MODEL).batch_queue == 0


async def test_quotas_per_user(daemon_factory: Callable[..., Any], tmp_path: Path, client_for: Clients) -> None:
    alice_quota = {"concurrent_interactive": 1, "queued_batch_lines": 10}
    d: Daemon = await daemon_factory(api__auth="keys", users__overrides={"alice": alice_quota})
    alice, bob = client_for(d, d.users.mint("alice")), client_for(d, d.users.mint("bob"))

    async def ask(c: openai.AsyncOpenAI) -> Any:
        return await c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=200
        )

    first = asyncio.create_task(ask(alice))
    await wait_for(lambda: d.accounting.user_inflight["alice"] == 1, 10, "alice's first request in flight")
    with pytest.raises(openai.RateLimitError) as e:
        await ask(alice)
    assert "concurrent_interactive" in str(e.value)
    await ask(bob)  # bob has no such quota
    await first

    with pytest.raises(openai.RateLimitError) as e2:
        await submit(alice, tmp_path, [chat_line(i) for i in range(11)])
    assert "queued_batch_lines" in str(e2.value)


async def test_an_expired_batch_returns_what_was_done(
    daemon_factory: Callable[..., Any], tmp_path: Path, client_for: Clients
) -> None:
    d: Daemon = await daemon_factory(api__auth="keys", model__max_instances=1, batch__windows=("24h", "4s"))
    alice = client_for(d, d.users.mint("alice"))
    batch = await submit(alice, tmp_path, [chat_line(i, max_tokens=4000 if i % 2 else 4) for i in range(200)], "4s")
    assert batch.expires_at - batch.created_at == 4
    done = await finished(alice, batch.id, 30)
    assert done.status == "expired"
    rc = done.request_counts
    assert rc.total == 200 and 0 < rc.completed < 200 and rc.completed + rc.failed == 200
    out, errors = await jsonl(alice, done.output_file_id), await jsonl(alice, done.error_file_id)
    assert len(out) == rc.completed and len(errors) == rc.failed
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}
    ids = [x["custom_id"] for x in out + errors]
    assert sorted(ids) == sorted(f"req-{i}" for i in range(200))  # every line in exactly one file
    await wait_for(lambda: d.batch.runner.leased == 0, 10, "the expired batch's lines to stop")


async def test_status_limits_and_drain_over_the_control_socket(daemon_factory: Callable[..., Any]) -> None:
    d: Daemon = await daemon_factory(model__max_instances=2)
    sock = d.cfg.daemon.socket_path
    assert operations(d)["drain"].admin and operations(d)["limits"].admin and not operations(d)["status"].admin

    status = await asyncio.to_thread(call, sock, "status")
    (m,) = status["models"]
    assert (m["name"], m["ready"], m["max_instances"]) == (MODEL, 1, 2)

    # root is an admin: it may change a model's bounds (until restart) and drain an instance.
    with pytest.raises(ControlError, match="above max_instances"):
        await asyncio.to_thread(call, sock, "limits", model=MODEL, min_instances=3)
    got = await asyncio.to_thread(call, sock, "limits", model=MODEL, min_instances=0, max_instances=3)
    assert got == {"model": MODEL, "min_instances": 0, "max_instances": 3}
    assert d.cfg.models[MODEL].max_instances == 3
    (inst_id,) = list(d.instances)
    with pytest.raises(ControlError, match="no instance 999"):
        await asyncio.to_thread(call, sock, "drain", instance=999)
    await asyncio.to_thread(call, sock, "drain", instance=inst_id)
    await wait_for(lambda: inst_id not in d.instances, 30, "the drained instance to end")
