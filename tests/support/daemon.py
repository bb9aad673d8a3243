"""Looking into an in-process Daemon."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import openai

from chirond.config import Config
from chirond.daemon import Daemon
from tests.support.wait import wait_for


def ready_count(d: Daemon, model: str = "llama-8b") -> int:
    """How many of `model`'s instances have passed their health check."""
    return sum(1 for i in d.instances.values() if i.model == model and i.ready_at is not None)


def ready(d: Daemon) -> list[str]:
    """Job ids of ready instances."""
    return [i.job_id or "" for i in d.instances.values() if i.ready_at is not None]


def client(d: Daemon, key: str = "none") -> openai.AsyncOpenAI:
    """The `openai` client on the daemon's port: no retries, 60 s timeout."""
    return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{d.port}/v1", api_key=key, max_retries=0, timeout=60)


@contextlib.asynccontextmanager
async def running(cfg: Config, timeout_s: float = 60.0) -> AsyncIterator[Daemon]:
    """An in-process Daemon on `cfg`, once every model has a ready instance; stopped after."""
    d = Daemon(cfg)
    await d.start()
    try:
        await wait_for(lambda: all(ready_count(d, m) for m in cfg.models), timeout_s, "every model ready")
        yield d
    finally:
        await d.stop()


async def wait_batch(c: openai.AsyncOpenAI, batch_id: str, timeout_s: float = 60.0) -> Any:
    """The batch once it has ended (completed, failed, expired, cancelled), polled every 0.1 s."""
    for _ in range(int(timeout_s * 10)):  # bounded
        b = await c.batches.retrieve(batch_id)
        if b.status in ("completed", "failed", "expired", "cancelled"):
            return b
        await asyncio.sleep(0.1)
    raise AssertionError(f"batch {batch_id} still {b.status} after {timeout_s} s")
