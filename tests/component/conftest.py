"""A chirond daemon in the test's event loop, in front of simulated vLLM instances that run as
real child processes (the local backend), all on 127.0.0.1. The helpers are in tests/support."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from chirond.daemon import Daemon
from tests.support import wait_for
from tests.support.config import make_config
from tests.support.daemon import ready_count


@pytest.fixture
async def daemon_factory(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    started: list[Daemon] = []

    async def start(wait_ready: int = 1, **over: Any) -> Daemon:
        d = Daemon(make_config(tmp_path, **over))
        started.append(d)
        await d.start()
        await wait_for(lambda: ready_count(d) >= wait_ready, 60, f"{wait_ready} ready instance(s)")
        return d

    yield start
    for d in started:
        await d.stop()
