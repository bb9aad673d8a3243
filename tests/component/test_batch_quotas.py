"""Quotas at admission on every path (issue 13, item 3): tokens_per_day holds for Batch API lines
(each line is admitted like an HTTP request, with what requests in flight may still spend held
against the quota), and at batch creation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest

from chirond.daemon import Daemon
from tests.support.daemon import wait_batch

MODEL = "llama-8b"
QUOTA = 50


def line(i: int) -> str:
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"question {i}"}], "max_tokens": 8,
            "ignore_eos": True}
    return json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body})


async def test_tokens_per_day_holds_for_batch_lines(daemon_factory: Any, tmp_path: Path) -> None:
    d: Daemon = await daemon_factory(api__auth="keys", users__overrides={"alice": {"tokens_per_day": QUOTA}})
    alice = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{d.port}/v1", api_key=d.users.mint("alice"),
                               max_retries=0)
    try:
        path = tmp_path / "in.jsonl"
        path.write_text("\n".join(line(i) for i in range(20)) + "\n")
        f = await alice.files.create(file=path.open("rb"), purpose="batch")
        b = await alice.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        b = await wait_batch(alice, b.id)
        assert b.status == "completed"
        out = [json.loads(x) for x in (await alice.files.content(b.output_file_id)).text.splitlines()]
        errors = [json.loads(x) for x in (await alice.files.content(b.error_file_id)).text.splitlines()]
        assert sorted(x["custom_id"] for x in out + errors) == sorted(f"req-{i}" for i in range(20))
        assert out and errors and {e["error"]["code"] for e in errors} == {"quota_exceeded"}
        per_line = max(x["response"]["body"]["usage"]["total_tokens"] for x in out)
        used = d.users.tokens_today("alice")
        # Admission stops once used + held reaches the quota: at most one line's worth past it.
        assert used <= QUOTA + per_line, (used, per_line)
        # At the quota, a new batch is refused at creation, like an HTTP request.
        f2 = await alice.files.create(file=path.open("rb"), purpose="batch")
        with pytest.raises(openai.RateLimitError, match="tokens_per_day"):
            await alice.batches.create(input_file_id=f2.id, endpoint="/v1/chat/completions", completion_window="24h")
    finally:
        await alice.close()


async def test_storage_quota_per_user_and_deleting_frees_it(daemon_factory: Any) -> None:
    # Issue 13, item 1: with no storage quota any user could fill the state directory.
    d: Daemon = await daemon_factory(api__auth="keys", users__overrides={"alice": {"storage_bytes": 100_000}})
    alice = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{d.port}/v1", api_key=d.users.mint("alice"),
                               max_retries=0)
    bob = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{d.port}/v1", api_key=d.users.mint("bob"), max_retries=0)
    data = ("\n".join(line(i) for i in range(300)) + "\n").encode()[:60_000]
    try:
        first = await alice.files.create(file=("a.jsonl", data), purpose="batch")
        files_before = sorted(p.name for p in d.batch.store.files_dir.iterdir())
        with pytest.raises(openai.RateLimitError, match="storage_bytes"):
            await alice.files.create(file=("b.jsonl", data), purpose="batch")
        assert sorted(p.name for p in d.batch.store.files_dir.iterdir()) == files_before  # nothing kept
        await bob.files.create(file=("b.jsonl", data), purpose="batch")  # bob has no such quota
        await alice.files.delete(first.id)  # deleting frees the quota
        await alice.files.create(file=("b.jsonl", data), purpose="batch")
    finally:
        await alice.close()
        await bob.close()
