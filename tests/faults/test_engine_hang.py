"""Fault injection (issue 13): an engine SIGSTOPped (hung, not dead) while a batch runs and chat
requests arrive, then SIGCONTed: nothing is lost, every line is answered exactly once, and the
daemon serves again without a restart."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import aiohttp

from tests.support import faults as f
from tests.support.procs import children


async def test_a_stopped_engine_loses_nothing_and_serving_resumes(tmp_path: Path) -> None:
    cfg, port = f.write_config(tmp_path, tmp_path / "state")
    d = f.ServeProcess(cfg, port, tmp_path / "daemon.log")
    await d.start()
    assert d.proc is not None
    c = d.client()
    try:
        n = 800
        bid = await f.submit(c, tmp_path, n, max_tokens=8)
        await asyncio.sleep(0.5)
        (engine,) = children(d.proc.pid)
        os.killpg(engine, signal.SIGSTOP)
        try:
            chats = [asyncio.create_task(c.chat.completions.create(
                model=f.MODEL, messages=[{"role": "user", "content": f"hi {i}"}], max_tokens=4)) for i in range(5)]
            await asyncio.sleep(5)  # hung: scrapes time out, requests wait
            async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/health") as r:
                assert r.status == 200  # the daemon itself is not hung
        finally:
            os.killpg(engine, signal.SIGCONT)
        for r in await asyncio.gather(*chats, return_exceptions=True):
            # Each request either got its answer or a shaped error it may retry: none hangs forever.
            assert not isinstance(r, BaseException) or "Error code" in str(r) or "timed out" in str(r), r
        b = await f.wait_batch(c, bid)
        assert b.status == "completed"
        await f.answered_once(c, b, n)
        await f.serves(d)
    finally:
        await c.close()
        assert await d.stop() == 0
    assert f.usage_requests(tmp_path / "state") >= n + 1  # the lines and serves()' chat: no usage lost
