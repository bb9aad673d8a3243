"""Polling until a condition holds, with a deadline and a message that says what was awaited."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def wait_for(cond: Callable[[], bool], timeout_s: float = 30.0, what: str = "condition",
                   step_s: float = 0.05) -> None:
    """Await until cond() is true; AssertionError after timeout_s (event-loop time)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not cond():
        if loop.time() > end:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(step_s)


def wait_until_sync(cond: Callable[[], bool], timeout_s: float = 30.0, what: str | Callable[[], str] = "condition",
                    step_s: float = 0.02) -> None:
    """The same without an event loop (blocks the thread). `what` may be a callable, read only on timeout."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what() if callable(what) else what}")
        time.sleep(step_s)
