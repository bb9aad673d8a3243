"""Looking into an in-process Daemon."""

from __future__ import annotations

import openai

from chirond.daemon import Daemon


def ready_count(d: Daemon, model: str = "llama-8b") -> int:
    """How many of `model`'s instances have passed their health check."""
    return sum(1 for i in d.instances.values() if i.model == model and i.ready_at is not None)


def ready(d: Daemon) -> list[str]:
    """Job ids of ready instances."""
    return [i.job_id or "" for i in d.instances.values() if i.ready_at is not None]


def client(d: Daemon, key: str = "none") -> openai.AsyncOpenAI:
    """The `openai` client on the daemon's port: no retries, 60 s timeout."""
    return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{d.port}/v1", api_key=key, max_retries=0, timeout=60)
